# Report phase (dvc.yaml twin: the `report` stage).


rule report:
    message:
        "report across every regime"
    input:
        expand("metrics/{regime}.json", regime=REGIMES),
        expand("eval/{regime}", regime=REGIMES),
        "pipeline_src/evaluate/report.py",
    output:
        directory("reports"),
    params:
        report=config["report"],
    log:
        "logs/report.log",
    conda:
        "../envs/medref.yaml"
    shell:
        "medref report > {log} 2>&1"
