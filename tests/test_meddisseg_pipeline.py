"""The `meddisseg` method on an image-only generic-folder dataset (Kvasir-SEG/ISIC/BUSI-style
image/mask pairs, no text), through every stage with both engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipeline_utils import make_scratch_repo, run, tool

pytestmark = pytest.mark.slow

REGIME = "kvasir_50pct"
OVERRIDES = {
    "datasets": {
        "kvasir": {
            "kind": "folder",
            "source": "synthetic",
            "synthetic": {"n_train": 24, "n_val": 8, "n_test": 8, "image_size": 64, "seed": 3},
        }
    },
    "regimes": {REGIME: {"dataset": "kvasir", "fraction": 0.5, "method": "meddisseg"}},
}


def test_meddisseg_folder_dataset_both_engines(tmp_path: Path):
    dvc = make_scratch_repo(tmp_path / "dvc", overrides=OVERRIDES, regimes=[REGIME])
    run([tool("dvc"), "repro", f"eval@{REGIME}"], dvc)
    metrics = json.loads((dvc / f"metrics/{REGIME}.json").read_text())
    assert metrics["method"] == "meddisseg" and 0.0 <= metrics["dice"] <= 1.0
    config = json.loads((dvc / f"models/{REGIME}/config.json").read_text())
    assert config["train"]["model"]["arch"] == "meddisseg"

    smk = tmp_path / "smk"
    run(["git", "clone", "-q", str(dvc), str(smk)], tmp_path)
    run([tool("snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", f"metrics/{REGIME}.json"], smk)
    for out in (f"models/{REGIME}/model.pt", f"metrics/{REGIME}.json", f"data/splits/{REGIME}.json"):
        assert (dvc / out).read_bytes() == (smk / out).read_bytes(), f"{out} differs between DVC and Snakemake"
