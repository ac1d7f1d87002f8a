# medref pipeline for Snakemake: `snakemake --profile slurm all` (or --profile local).
# The rules are thin maps over the `medref` CLI, mirroring dvc.yaml stage by stage.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


# `snakemake --report report.html`: this text on its front page; the rules' report() outputs under it
report: "workflow/report/workflow.rst"


# The slurm profile sets `config: [launcher=slurm]`: `medref train` (a local rule) then submits
# itself through submitit. An exported MEDREF_LAUNCHER still wins. Not a param of any rule, so
# where training ran never triggers a re-run.
if config.get("launcher"):
    os.environ.setdefault("MEDREF_LAUNCHER", str(config["launcher"]))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        expand("metrics/{regime}.json", regime=REGIMES),
        expand("studies/{study}.json", study=STUDIES),
        "reports",


# One target per study: `snakemake --profile slurm study_qata` (DVC: `dvc repro study@qata`).
for _study in STUDIES:

    rule:
        name:
            f"study_{_study}"
        input:
            f"studies/{_study}.json",
