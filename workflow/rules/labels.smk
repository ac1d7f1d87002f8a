# Labels phase: pseudolabel@<dataset> (dvc.yaml twin).


rule pseudolabel:
    input:
        "data/shards/{dataset}",
        SHARED_CODE,
        "pipeline_src/provenance.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/data/imageio.py",
        "pipeline_src/labels",
    output:
        "data/labels/{dataset}.parquet",
        "data/labels/{dataset}.agreement.json",
    log:
        "logs/pseudolabel/{dataset}.log",
    conda:
        "../envs/medref.yaml"
    params:
        pseudolabel=config["pseudolabel"],
    shell:
        "medref pseudolabel {wildcards.dataset} > {log} 2>&1"
