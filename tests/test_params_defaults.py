"""One source of defaults: every result-changing key's value is written in params.yaml, and the schema's code
defaults equal it, so params built in code (tests, notebooks) and the pipeline's params.yaml never disagree."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from pipeline_src import params as P
from pipeline_src.data.params import DatasetParams

SECTIONS = {
    "base": P.BaseParams,
    "preprocess": P.PreprocessParams,
    "pseudolabel": P.PseudolabelParams,
    "split": P.SplitParams,
    "train": P.TrainParams,
    "pretrain_text": P.PretrainTextParams,
    "eval": P.EvalParams,
    "report": P.ReportParams,
}
# Not knobs: set by the train stage from the shards (the class count of a volumes dataset), saved in model.pt.
DERIVED = {"train.model.n_classes"}


def _walk(model: type[BaseModel], node, prefix: str):
    """(key, code default, yaml value or KeyError) for every leaf field of ``model``."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _walk(ann, (node or {}).get(name), key)
            continue
        default = field.get_default(call_default_factory=True)
        yield key, list(default) if isinstance(default, tuple) else default, (node or {}).get(name, KeyError)


def _archive_source(block: dict) -> bool:
    src = str(block.get("source", ""))
    return src.startswith(("http://", "https://")) or src.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2",
                                                                   ".tar.xz"))


@pytest.fixture(scope="module")
def raw(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


@pytest.mark.parametrize("section", list(SECTIONS))
def test_code_defaults_equal_params_yaml(raw, section):
    missing, differ = [], []
    for key, default, value in _walk(SECTIONS[section], raw.get(section), section):
        if key in DERIVED:
            continue
        if value is KeyError:
            missing.append(key)
        elif value != default:
            differ.append(f"{key}: code {default!r} vs params.yaml {value!r}")
    assert not missing, f"keys with a code default that params.yaml does not write: {missing}"
    assert not differ, "code defaults disagree with params.yaml: " + "; ".join(differ)


def test_each_dataset_block_writes_every_key_of_its_kind(raw):
    """Per-dataset values differ by design (mosmed's sizes, synapse's slice size); what matters is that none of
    them silently falls back to a code default the reader of params.yaml cannot see."""
    for name, block in raw["datasets"].items():
        kind = block.get("kind")
        used = "volumes" if kind == "volumes" else ("synthetic" if block.get("source") == "synthetic" else None)
        for key, _default, value in _walk(DatasetParams, block, f"datasets.{name}"):
            sub = key.split(".")[2]
            if sub in ("volumes", "synthetic") and sub != used:
                continue
            if sub in ("sha256", "archive") and not _archive_source(block):  # pins / limits of an archive source
                continue
            assert value is not KeyError, f"{key} is not written in params.yaml (its code default would apply)"

