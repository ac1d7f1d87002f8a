# Labels phase: pseudolabel@<dataset> (dvc.yaml twin).


rule pseudolabel:
    message:
        "positional pseudo-labels for {wildcards.dataset}"
    input:
        "data/shards/{dataset}",
        "pipeline_src/labels",
    output:
        "data/labels/{dataset}.parquet",
        "metrics/labels/{dataset}.json",
    params:
        pseudolabel=config["pseudolabel"],
    log:
        "logs/pseudolabel/{dataset}.log",
    conda:
        "../envs/medref.yaml"
    shell:
        "medref pseudolabel {wildcards.dataset} > {log} 2>&1"
