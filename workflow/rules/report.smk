# Report phase (dvc.yaml twins: the `study@<study>` and `report` stages).


rule study:
    input:
        study_inputs,
        SHARED_CODE,
        "pipeline_src/grid.py",
        "pipeline_src/models/folder.py",
        "pipeline_src/aggregate/study.py",
        "pipeline_src/evaluate/metric_specs.py",  # labels, units, directions
    output:
        report(
            directory("studies/{study}"),
            patterns=["{name}.png"],
            caption="../report/study.rst",
            category="Studies",
            subcategory="{study}",
        ),
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
        # each run's DVCLive log (models/<run>/live/): the learning curves
        expand("models/{regime}", regime=REGIMES),
        SHARED_CODE,
        "pipeline_src/labels/text_parser.py",
        "pipeline_src/models/metrics.py",
        "pipeline_src/models/folder.py",
        "pipeline_src/inference/postprocess.py",
        "pipeline_src/data/shards.py",
        "pipeline_src/data/volumes.py",
        "pipeline_src/aggregate/report.py",
        "pipeline_src/evaluate/metrics.py",
        "pipeline_src/evaluate/metric_specs.py",
        "pipeline_src/evaluate/multiclass.py",
        "pipeline_src/evaluate/plots.py",
        # multiclass.py restacks volumes with data/volumes.py, which imports these
    output:
        # the studies' tables and verdicts (one self-contained page each), the learning curves, Dice vs fraction
        report(
            directory("reports"),
            patterns=[
                "studies/{study}.html",
                "curves/{run}.png",
                "{figure,[^/]+}.png",
            ],
            caption="../report/report.rst",
            # which pattern matched is which wildcard the file has
            category=lambda w: (
                "Studies"
                if "study" in w.keys()
                else "Learning curves" if "run" in w.keys() else "Summary"
            ),
            subcategory=lambda w: w.get("study") or w.get("run") or "all datasets",
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/medref.yaml"
    params:
        report=config["report"],
    shell:
        "medref report > {log} 2>&1"
