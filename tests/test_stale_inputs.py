"""Stages refuse inputs that were made for something else (the bad-input probe's stale-input findings).

The train-side checks (split file for another fraction / seed / shards) are in tests/test_preflight.py."""

from __future__ import annotations

import json

import pytest

from pipeline_src.data import splits
from pipeline_src.errors import MedrefError
from pipeline_src.evaluate import evaluate
from pipeline_src.labels import pseudolabel
from pipeline_src.params import Params, load_raw
from tests.train_fixtures import make_dataset


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "d", n_train=8, n_val=4)


def _params(repo_root, image_size: int) -> Params:
    raw = load_raw(repo_root / "params.yaml")
    raw["preprocess"]["image_size"] = image_size
    raw["regimes"]["tiny"] = {"dataset": "qata", "fraction": 0.25, "method": "supervised"}
    return Params.model_validate(raw)


def _record_params(shards_dir, params) -> None:
    m = json.loads((shards_dir / "manifest.json").read_text())
    m["params"] = params.preprocess.model_dump(mode="json")
    (shards_dir / "manifest.json").write_text(json.dumps(m))


def test_label_and_split_stages_refuse_shards_made_for_other_params(repo_root, data, tmp_path):
    """After a failed preprocess at a new image size the previous shards are still on disk: pseudolabel and split
    used to run on them without a word."""
    old, new = _params(repo_root, 64), _params(repo_root, 96)
    _record_params(data["shards_dir"], old)
    with pytest.raises(MedrefError, match=r"made for other params \(image_size: 64 in the shards, 96 in params\)"):
        pseudolabel.run(new, "qata", data["shards_dir"], tmp_path / "l.parquet", tmp_path / "a.json")
    with pytest.raises(MedrefError, match="re-run `medref preprocess qata`"):
        splits.run(new, "qata_25pct", data["shards_dir"], tmp_path / "s.json")
    assert not (tmp_path / "l.parquet").exists() and not (tmp_path / "s.json").exists()
    pseudolabel.run(old, "qata", data["shards_dir"], tmp_path / "l.parquet", tmp_path / "a.json")  # current: fine
    assert (tmp_path / "l.parquet").is_file()


def test_eval_refuses_a_model_trained_on_other_shards(repo_root, data, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.pt").write_bytes(b"not read: the check comes first")
    (model / "provenance.json").write_text(json.dumps({"inputs": {"shards": "digest-of-the-64px-shards"}}))
    with pytest.raises(MedrefError, match=r"trained on shards digest-of-th.*now holds tiny-0.*re-train"):
        evaluate.run(_params(repo_root, 64), "tiny", model, data["shards_dir"], data["labels_file"],
                     tmp_path / "m.json", tmp_path / "e")
    assert not (tmp_path / "m.json").exists()
