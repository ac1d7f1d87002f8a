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
        # the pretrained weights the run reads (workflow/no-weights.txt when none), as in dvc.yaml
        lambda w: [
            RUNS[w.regime]["image_weights_dep"],
            RUNS[w.regime]["text_weights_dep"],
        ],
        SHARED_CODE,
        "pipeline_src/grid.py",
        "pipeline_src/labels/table.py",
        "pipeline_src/provenance.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/data/splits.py",
        "pipeline_src/labels/text_parser.py",
        "pipeline_src/models",
        "pipeline_src/train",
        "pipeline_src/launcher.py",
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


# pretrain_text@<dataset> (dvc.yaml twin): the MLM text encoder that train can load with
# train.model.text_weights=hf-dir:models/text/<dataset>. Not in `all`: build it with
# `snakemake models/text/qata` (or the pretrain_text_all target).
rule pretrain_text:
    input:
        "data/shards/{dataset}",
        SHARED_CODE,
        "pipeline_src/provenance.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/train/pretrain_text.py",
    output:
        directory("models/text/{dataset}"),
    log:
        "logs/pretrain_text/{dataset}.log",
    conda:
        "../envs/medref.yaml"
    params:
        cpu_threads=config["base"]["cpu_threads"],
        cpu_numerics=config["base"]["cpu_numerics"],
        pretrain_text=config["pretrain_text"],
    shell:
        "medref pretrain_text {wildcards.dataset} > {log} 2>&1"


rule pretrain_text_all:
    input:
        expand("models/text/{dataset}", dataset=config["pretrain_text"]["datasets"]),
