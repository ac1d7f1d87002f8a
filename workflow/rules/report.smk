# Report phase (dvc.yaml twin: the `report` stage).


rule report:
    input:
        expand("metrics/{regime}.json", regime=REGIMES),
        expand("eval/{regime}", regime=REGIMES),
        SHARED_CODE,
        "pipeline_src/labels/text_parser.py",
        "pipeline_src/models/metrics.py",
        "pipeline_src/inference/postprocess.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/data/volumes.py",
        "pipeline_src/evaluate/report.py",
        "pipeline_src/evaluate/metrics.py",
        "pipeline_src/evaluate/multiclass.py",
        "pipeline_src/evaluate/plots.py",
        # multiclass.py restacks volumes with data/volumes.py, which imports these
    output:
        directory("reports"),
    log:
        "logs/report.log",
    conda:
        "../envs/medref.yaml"
    params:
        report=config["report"],
    shell:
        "medref report > {log} 2>&1"
