# Data phase: download@<dataset>, preprocess@<dataset>, split@<regime> (dvc.yaml twins).


rule download:
    message:
        "download {wildcards.dataset}"
    input:
        "pipeline_src/data/download.py",
        "pipeline_src/data/synthetic.py",
    output:
        directory("data/raw/{dataset}"),
    params:
        dataset=lambda w: config["datasets"][w.dataset],
    log:
        "logs/download/{dataset}.log",
    conda:
        "../envs/medref.yaml"
    shell:
        "medref download {wildcards.dataset} > {log} 2>&1"


rule preprocess:
    message:
        "preprocess {wildcards.dataset} into Parquet shards"
    input:
        "data/raw/{dataset}",
        "pipeline_src/data/preprocess.py",
    output:
        directory("data/shards/{dataset}"),
    params:
        kind=lambda w: config["datasets"][w.dataset]["kind"],
        preprocess=config["preprocess"],
    log:
        "logs/preprocess/{dataset}.log",
    conda:
        "../envs/medref.yaml"
    shell:
        "medref preprocess {wildcards.dataset} > {log} 2>&1"


rule split:
    message:
        "labelled/unlabelled split for {wildcards.regime}"
    input:
        shards_of,
        "pipeline_src/data/splits.py",
    output:
        "data/splits/{regime}.json",
    params:
        split=config["split"],
        fraction=lambda w: config["regimes"][w.regime]["fraction"],
    log:
        "logs/split/{regime}.log",
    conda:
        "../envs/medref.yaml"
    shell:
        "medref split {wildcards.regime} > {log} 2>&1"
