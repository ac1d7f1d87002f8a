# Report phase (dvc.yaml twin: the `report` stage).


rule report:
    input:
        expand("metrics/{regime}.json", regime=REGIMES),
        expand("eval/{regime}", regime=REGIMES),
        "pipeline_src/evaluate/report.py",
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
