# Shared definitions: the datasets and regimes from params.yaml (the workflow's config),
# wildcard constraints, and input helpers. Validation of params is done by `medref` itself
# (pipeline_src/params.py), the single source of truth for the schema.
import re

DATASETS = list(config["datasets"])
REGIMES = list(config["regimes"])


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    regime="|".join(re.escape(r) for r in REGIMES),


# Code deps shared by several rules (the same files as in dvc.yaml; tests/test_deps.py checks both
# against each stage's imports). Every stage imports the params models that params.py composes,
# the error type, the default paths and the atomic writers.
SHARED_CODE = [
    "pipeline_src/params.py",
    "pipeline_src/data/params.py",
    "pipeline_src/labels/params.py",
    "pipeline_src/train/params.py",
    "pipeline_src/evaluate/params.py",
    "pipeline_src/models/params.py",
    "pipeline_src/models/__init__.py",
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
    return config["regimes"][wildcards.regime]["dataset"]


def shards_of(wildcards):
    return f"data/shards/{regime_dataset(wildcards)}"


def labels_of(wildcards):
    return f"data/labels/{regime_dataset(wildcards)}.parquet"
