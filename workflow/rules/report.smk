# Report phase (dvc.yaml twins: the `study@<study>` and `report` stages).


rule study:
    input:
        study_inputs,
        SHARED_CODE,
        "pipeline_src/evaluate/study.py",
    output:
        directory("studies/{study}"),
        "studies/{study}.json",
    log:
        "logs/study/{study}.log",
    conda:
        "../envs/medref.yaml"
    params:
        study=lambda w: config["studies"][w.study],
        runs=lambda w: STUDIES[w.study],
    shell:
        "medref study {wildcards.study} > {log} 2>&1"


rule report:
    input:
        expand("metrics/{regime}.json", regime=REGIMES),
        expand("eval/{regime}", regime=REGIMES),
        expand("studies/{study}", study=STUDIES),
        expand("studies/{study}.json", study=STUDIES),
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
