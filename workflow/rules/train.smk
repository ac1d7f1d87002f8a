# Training phase: train@<regime> (dvc.yaml twin). A local rule under every profile:
# `medref train` owns GPU submission itself (submitit, MEDREF_LAUNCHER=slurm), so the
# same command runs under `dvc repro` and `snakemake --profile slurm`.


localrules:
    train,


rule train:
    input:
        shards_of,
        labels_of,
        split_of,
        SHARED_CODE,
        "pipeline_src/labels/table.py",
        "pipeline_src/provenance.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/data/splits.py",
        "pipeline_src/labels/text_parser.py",
        "pipeline_src/models",
        "pipeline_src/train",
    output:
        directory("models/{regime}"),
    log:
        "logs/train/{regime}.log",
    conda:
        "../envs/medref.yaml"
    params:
        base=config["base"],
        train=config["train"],
        run=lambda w: RUNS[w.regime],
    shell:
        "medref train {wildcards.regime} > {log} 2>&1"
