# Report phase (dvc.yaml twin: the `report` stage).


rule report:
    input:
        expand("metrics/{regime}.json", regime=REGIMES),
        expand("eval/{regime}", regime=REGIMES),
        SHARED_CODE,
        # multiclass.py restacks volumes with data/volumes.py, which imports these
        "pipeline_src/data/volumes.py",
        "pipeline_src/data/preprocess.py",
        "pipeline_src/data/download.py",
        "pipeline_src/data/layouts.py",
        "pipeline_src/data/synthetic.py",
        "pipeline_src/data/synthetic_volumes.py",
        "pipeline_src/evaluate/report.py",
        "pipeline_src/evaluate/metrics.py",
        "pipeline_src/evaluate/multiclass.py",
        "pipeline_src/evaluate/plots.py",
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
