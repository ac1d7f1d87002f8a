# Data phase: download@<dataset>, preprocess@<dataset>, split@<regime> (dvc.yaml twins).


rule download:
    input:
        SHARED_CODE,
        DOWNLOAD_CODE,
    output:
        directory("data/raw/{dataset}"),
    log:
        "logs/download/{dataset}.log",
    conda:
        "../envs/medref.yaml"
    params:
        dataset=lambda w: config["datasets"][w.dataset],
    shell:
        "medref download {wildcards.dataset} > {log} 2>&1"


rule preprocess:
    input:
        "data/raw/{dataset}",
        SHARED_CODE,
        DOWNLOAD_CODE,
        "pipeline_src/data/imageio.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/data/preprocess.py",
        "pipeline_src/data/volumes.py",
    output:
        directory("data/shards/{dataset}"),
    log:
        "logs/preprocess/{dataset}.log",
    conda:
        "../envs/medref.yaml"
    params:
        dataset=lambda w: config["datasets"][w.dataset],
        preprocess=config["preprocess"],
    shell:
        "medref preprocess {wildcards.dataset} > {log} 2>&1"


rule split:
    input:
        lambda w: f"data/shards/{SPLITS[w.split]['dataset']}",
        SHARED_CODE,
        "pipeline_src/data/shards.py",
        "pipeline_src/data/splits.py",
    output:
        "data/splits/{split}.json",
    log:
        "logs/split/{split}.log",
    conda:
        "../envs/medref.yaml"
    params:
        split=config["split"],
    shell:
        "medref split {wildcards.split} > {log} 2>&1"
