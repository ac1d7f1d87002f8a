"""Pretrained weights are hashed inputs: train records each file's digest, a predictor rebuilds a model trained
from a transformers folder, and ``medref verify`` names a weights file replaced behind the same path.

    .venv/bin/python -m pytest -q tests/test_weights_inputs.py
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pipeline_src.models.params import ModelParams
from pipeline_src.models.weights import changed, digest, weight_paths
from tests.hf_fixtures import hub_cache_snapshot, tiny_cxr_bert


@pytest.fixture(scope="module")
def cxr(tmp_path_factory):
    return tiny_cxr_bert(tmp_path_factory.mktemp("hf"))[0]


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "convnext.safetensors"
    save_file(timm.create_model("test_convnext", pretrained=False).state_dict(), path)
    return path


def test_weight_paths_and_digests(cxr, convnext_file, tmp_path, monkeypatch):
    from huggingface_hub import constants

    m = ModelParams(image_weights=str(convnext_file), text_weights=f"hf-dir:{cxr}")
    assert weight_paths(m) == {"image_weights": convnext_file, "text_weights": cxr}
    assert weight_paths(m.model_copy(update={"arch": "image_only"})) == {"image_weights": convnext_file}
    # a hub-cache snapshot: files are symlinks into blobs/; the digest hashes the contents, as for the folder
    snap = hub_cache_snapshot(tmp_path, "microsoft/x", {f.name: f for f in cxr.iterdir()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert weight_paths(ModelParams(text_weights="hf:microsoft/x")) == {"text_weights": snap}
    assert digest(snap) == digest(cxr)
    before = digest(cxr)
    vocab = (cxr / "vocab.txt").read_bytes()
    (cxr / "vocab.txt").write_bytes(vocab + b"extra\n")
    try:
        assert digest(cxr) != before
    finally:
        (cxr / "vocab.txt").write_bytes(vocab)


def test_train_records_weights_digests_and_the_model_reloads(cxr, convnext_file, repo_root, tmp_path):
    from pipeline_src.inference.predictor import load_predictor
    from pipeline_src.params import Params, load_raw
    from pipeline_src.train.train import run
    from tests.train_fixtures import make_dataset

    tiny = make_dataset(tmp_path / "data")
    raw = load_raw(repo_root / "params.yaml")
    model = {"image_encoder": "test_convnext", "out_indices": [0, 1, 2, 3], "image_weights": str(convnext_file),
             "text_weights": f"hf-dir:{cxr}", "context_length": 24, "text_pooling": "official", "text_head": "mlp",
             "text_train": "frozen", "embed_dim": 16, "decoder_dim": 16, "decoder_heads": 2}
    raw["regimes"]["tiny"] = {"dataset": next(iter(raw["datasets"])), "fraction": 0.25, "method": "supervised",
                              "train": {"model": model, "epochs": 1, "max_steps": 2, "batch_size": 4, "val_max": 4,
                                        "precise_bn_batches": 1}}
    out = run(Params.model_validate(raw), "tiny", tiny["shards_dir"], tiny["labels_file"], tiny["split_file"],
              tmp_path / "model", tmp_path / "run")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["weights"] == {"image_weights": {"path": str(convnext_file), "sha256": digest(convnext_file)},
                               "text_weights": {"path": str(cxr), "sha256": digest(cxr)}}
    assert changed(prov["weights"]) == []
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["model_config"]["image_norm"] == "centre"  # auto, resolved and saved: a plain file has no cfg
    p = load_predictor(out)  # rebuilt from the transformers folder's config and vocab, weights from model.pt
    assert p.predict(torch.rand(2, 1, 64, 64), ["upper left lung", "lower right lung"]).shape == (2, 1, 64, 64)
    tower = p.net.text.tower.model.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(tower, blob["state_dict"]["text.tower.model.encoder.layer.0.attention.self.query.weight"])


def test_verify_names_a_changed_weights_file(tmp_path, repo_root):
    from pipeline_src import verify

    weights = tmp_path / "enc.safetensors"
    weights.write_bytes(b"old weights")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    regime = "qata_10pct"  # the headline run of the grid
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stages = verify.chain(raw, regime)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {s: {"cmd": "x"} for s in stages}}))
    model = tmp_path / "models" / regime
    model.mkdir(parents=True)
    (model / "provenance.json").write_text(json.dumps(
        {"weights": {"image_weights": {"path": "enc.safetensors", "sha256": digest(weights)}}}))
    weights.write_bytes(b"new weights, same path")
    lines: list[str] = []
    assert verify.verify(regime, repo=tmp_path, log=lines.append) is False
    assert len(lines) == 1 and "FAIL" in lines[0] and str(weights) in lines[0] and "changed" in lines[0]
    weights.unlink()
    lines.clear()
    assert verify.verify(regime, repo=tmp_path, log=lines.append) is False
    assert "no longer exists" in lines[0]
