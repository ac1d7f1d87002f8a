# Shared definitions: the datasets and regimes from params.yaml (the workflow's config),
# wildcard constraints, and input helpers. Validation of params is done by `medref` itself
# (pipeline_src/params.py), the single source of truth for the schema.
import re

DATASETS = list(config["datasets"])
REGIMES = list(config["regimes"])


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    regime="|".join(re.escape(r) for r in REGIMES),


def regime_dataset(wildcards):
    return config["regimes"][wildcards.regime]["dataset"]


def shards_of(wildcards):
    return f"data/shards/{regime_dataset(wildcards)}"


def labels_of(wildcards):
    return f"data/labels/{regime_dataset(wildcards)}.parquet"
