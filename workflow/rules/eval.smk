# Evaluation phase: eval@<regime> (dvc.yaml twin).


rule eval:
    input:
        "models/{regime}",
        shards_of,
        labels_of,
        split_of,
        SHARED_CODE,
        "pipeline_src/grid.py",
        "pipeline_src/labels/table.py",
        "pipeline_src/labels/text_parser.py",
        "pipeline_src/provenance.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/data/dataset.py",
        "pipeline_src/data/volumes.py",
        "pipeline_src/models",
        "pipeline_src/inference/predictor.py",
        "pipeline_src/inference/postprocess.py",
        "pipeline_src/evaluate/evaluate.py",
        "pipeline_src/evaluate/metrics.py",
        "pipeline_src/evaluate/multiclass.py",
        "pipeline_src/evaluate/plots.py",
    output:
        report(
            directory("eval/{regime}"),
            patterns=["overlays/{sample}.png", "{figure,[^/]+}.png"],
            caption="../report/eval.rst",
            category="Samples",
            subcategory="{regime}",
        ),
        "metrics/{regime}.json",
    log:
        "logs/eval/{regime}.log",
    conda:
        "../envs/medref.yaml"
    params:
        cpu_threads=config["base"]["cpu_threads"],
        cpu_numerics=config["base"]["cpu_numerics"],
        eval=config["eval"],
        run=lambda w: RUNS[w.regime],
    shell:
        "medref eval {wildcards.regime} > {log} 2>&1"
