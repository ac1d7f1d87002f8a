# Shared definitions: the datasets, and the study grid's runs expanded from params.yaml (the
# workflow's config) by the same function `medref grid` uses to write DVC's workflow/grid.yaml;
# wildcard constraints, and input helpers. Validation of params is done by `medref` itself
# (pipeline_src/params.py), the single source of truth for the schema.
import re

from pipeline_src.grid import grid_document

DATASETS = list(config["datasets"])
# `launcher` is the slurm profile's --config entry (where training runs), not a param
GRID = grid_document({k: v for k, v in config.items() if k != "launcher"})
# run name -> {dataset, fraction, method, train, seed, study, variant, split}
RUNS = GRID["runs"]
REGIMES = list(RUNS)
SPLITS = GRID["splits"]  # split name -> {dataset, fraction}
STUDIES = GRID["study_runs"]  # study name -> its run names


def _one_of(names):
    # longest first: `qata_10pct` must not match the start of `qata_10pct-supervised`
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "$^"


wildcard_constraints:
    dataset=_one_of(DATASETS),
    regime=_one_of(REGIMES),
    split=_one_of(SPLITS),
    study=_one_of(STUDIES),


# Code deps shared by several rules (the same files as in dvc.yaml; tests/test_deps.py checks both
# against each stage's imports). Every stage imports the params models that params.py composes,
# the error type, the default paths and the atomic writers.
SHARED_CODE = [
    "pipeline_src/params.py",
    "pipeline_src/data/params.py",
    "pipeline_src/labels/params.py",
    "pipeline_src/train/params.py",
    "pipeline_src/evaluate/params.py",
    "pipeline_src/aggregate/params.py",
    "pipeline_src/inference/params.py",
    "pipeline_src/models/params.py",
    "pipeline_src/models/__init__.py",
    "pipeline_src/__init__.py",  # sets the CPU numerics (pipeline_src/numerics.py) before torch loads
    "pipeline_src/numerics.py",
    "pipeline_src/errors.py",
    "pipeline_src/paths.py",
    "pipeline_src/utils",
]
# What downloading a dataset runs (preprocess reads the raw layout through download.read_pairs).
DOWNLOAD_CODE = [
    "pipeline_src/data/download.py",
    "pipeline_src/data/layouts.py",
    "pipeline_src/data/synthetic.py",
    "pipeline_src/data/synthetic_volumes.py",
]


def regime_dataset(wildcards):
    return RUNS[wildcards.regime]["dataset"]


def split_of(wildcards):
    return f"data/splits/{RUNS[wildcards.regime]['split']}.json"


def study_inputs(wildcards):
    runs = STUDIES[wildcards.study]
    return [f"metrics/{r}.json" for r in runs] + [f"eval/{r}" for r in runs]


def shards_of(wildcards):
    return f"data/shards/{regime_dataset(wildcards)}"


def labels_of(wildcards):
    return f"data/labels/{regime_dataset(wildcards)}.parquet"
