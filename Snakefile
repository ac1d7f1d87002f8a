# medref pipeline for Snakemake: `snakemake --profile slurm all` (or --profile local).
# The rules are thin maps over the `medref` CLI, mirroring dvc.yaml stage by stage.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


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
        "reports",
