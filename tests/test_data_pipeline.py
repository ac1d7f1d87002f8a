"""Data stages end to end: download -> preprocess -> split -> ShardDataset, on synthetic and real data.

.venv/bin/pytest tests/test_data_pipeline.py -q
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_src.data import dataset, download, preprocess, splits, synthetic
from pipeline_src.data import shards as shardio
from pipeline_src.params import Params

SMALL = {"n_train": 24, "n_val": 6, "n_test": 8, "image_size": 64}


def make_params(datasets: dict, preprocess_: dict | None = None, regimes: dict | None = None) -> Params:
    return Params.model_validate(
        {
            "datasets": datasets,
            "preprocess": {"image_size": 64, "row_group_size": 8, "shard_rows": 16, **(preprocess_ or {})},
            "regimes": regimes or {"r": {"dataset": next(iter(datasets)), "fraction": 0.25}},
        }
    )


def stages(p: Params, ds: str, root: Path) -> tuple[Path, Path]:
    raw, shards = root / "raw" / ds, root / "shards" / ds
    download.run(p, ds, raw)
    preprocess.run(p, ds, raw, shards)
    return raw, shards


@pytest.mark.parametrize("kind", ["qata", "mosmed", "folder"])
def test_synthetic_end_to_end(tmp_path: Path, kind: str) -> None:
    p = make_params({"d": {"kind": kind, "source": "synthetic", "synthetic": SMALL}})
    raw, shards = stages(p, "d", tmp_path)
    m = shardio.load_manifest(shards)
    total = sum(s["rows"] for s in m["splits"].values())
    assert total == sum(SMALL[k] for k in ("n_train", "n_val", "n_test"))
    if kind != "folder":  # folder splits are by name hash; qata/mosmed keep the release's splits
        assert {s: v["rows"] for s, v in m["splits"].items()} == {"train": 24, "val": 6, "test": 8}
    t = shardio.read_table(shards, "train")
    imgs, masks = shardio.decode_images(t), shardio.decode_masks(t)
    assert imgs.shape == masks.shape == (t.num_rows, 64, 64)
    assert set(np.unique(masks)) <= {0, 1} and masks.any()
    assert t["id"].to_pylist() == sorted(t["id"].to_pylist())
    texts = t["text"].to_pylist()
    assert all(texts) if kind != "folder" else not any(texts)
    # the shard pixels are the raw PNG pixels (no resize at the native size)
    rows = {r["id"]: r for r in download.read_pairs(raw)}
    first = t["id"][0].as_py()
    np.testing.assert_array_equal(imgs[0], np.asarray(Image.open(raw / rows[first]["image"])))
    np.testing.assert_array_equal(masks[0], np.asarray(Image.open(raw / rows[first]["mask"])) > 127)

    out = splits.run(p, p.regime("r").split, shards, tmp_path / "splits" / "r.json")
    ds = dataset.ShardDataset(shards, "train", out["labelled"])
    item = ds[0]
    assert item["id"] == out["labelled"][0]
    assert item["image"].shape == item["mask"].shape == (1, 64, 64)
    assert item["image"].dtype == torch.float32 and 0 <= item["image"].min() and item["image"].max() <= 1
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def test_dataloader_two_workers(tmp_path: Path) -> None:
    p = make_params({"d": {"source": "synthetic", "synthetic": SMALL}})
    _, shards = stages(p, "d", tmp_path)
    ds = dataset.ShardDataset(shards, "train")
    seen = []
    for b in torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2):
        seen += b["id"]
    assert seen == shardio.read_table(shards, "train", ["id"])["id"].to_pylist()


def test_synthetic_text_names_mask_regions_and_distractors_exist() -> None:
    rng = np.random.default_rng(3)
    n_off_mask_blobs = 0
    for _ in range(20):
        rep = synthetic.make_report(rng)
        img, mask = synthetic.make_sample(rng, 96, rep.regions, max_distractors=2)
        # every named region has lesion pixels; mask lies on the named side(s) only
        left, right = mask[:, :48].any(), mask[:, 48:].any()
        assert left == any(rep.regions[:3]) and right == any(rep.regions[3:])
        # bright lesion-like pixels outside the mask = distractors the text does not name
        n_off_mask_blobs += int(((img > 150) & (mask == 0)).sum() > 20)
    assert n_off_mask_blobs > 0


def test_synthetic_deterministic(tmp_path: Path) -> None:
    a = synthetic.generate(tmp_path / "a", n_train=5, n_val=2, n_test=2, image_size=48, seed=7, progress=False)
    b = synthetic.generate(tmp_path / "b", n_train=5, n_val=2, n_test=2, image_size=48, seed=7, progress=False)
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert fa == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in fa)


def test_preprocess_is_deterministic_and_download_is_noop(tmp_path: Path) -> None:
    p = make_params({"d": {"source": "synthetic", "synthetic": SMALL}})
    raw, s1 = stages(p, "d", tmp_path)
    mtime = (raw / "checksums.json").stat().st_mtime_ns
    download.run(p, "d", raw)  # same source: nothing rewritten
    assert (raw / "checksums.json").stat().st_mtime_ns == mtime
    s2 = tmp_path / "shards2"
    preprocess.run(p, "d", raw, s2)
    f1 = sorted(q.relative_to(s1) for q in s1.rglob("*") if q.is_file())
    assert f1 == sorted(q.relative_to(s2) for q in s2.rglob("*") if q.is_file())
    for f in f1:
        assert (s1 / f).read_bytes() == (s2 / f).read_bytes(), f
    # a raw file changed behind our back: download notices and rebuilds
    victim = next((raw / "train" / "images").iterdir())
    victim.write_bytes(b"tampered")
    download.run(p, "d", raw)
    assert victim.read_bytes() != b"tampered"


def test_resize_policy(tmp_path: Path) -> None:
    p = make_params({"d": {"source": "synthetic", "synthetic": SMALL}}, {"image_size": 32})
    _, shards = stages(p, "d", tmp_path)
    t = shardio.read_table(shards, "val")
    assert shardio.decode_images(t).shape[1:] == (32, 32)
    assert set(np.unique(shardio.decode_masks(t))) == {0, 1}


def test_nested_splits_and_semi_medref_counts() -> None:
    assert [splits.n_labelled(f, 5716) for f in (0.01, 0.02, 0.05, 0.15)] == [57, 114, 286, 857]
    ids = [f"id{i:04d}" for i in range(1000)]
    prev: set[str] = set()
    for f in (0.01, 0.05, 0.10, 0.25, 1.0):
        lab, unl = splits.select(ids, f, seed=0)
        assert len(lab) == splits.n_labelled(f, 1000) and set(lab) | set(unl) == set(ids) and not set(lab) & set(unl)
        assert prev <= set(lab)
        prev = set(lab)
    assert splits.select(ids, 0.1, 0)[0] != splits.select(ids, 0.1, 1)[0]
    assert splits.select(ids, 0.1, 0)[0] == splits.select(list(reversed(ids)), 0.1, 0)[0]


# ---- real data (../shared/data) -------------------------------------------------------------------------------
def _copy_subset(src: Path, dst: Path, n_train: int, n_val: int) -> None:
    for split, n in (("train", n_train), ("valid", n_val)):
        names = sorted(p.name for p in (src / split / "images").iterdir())
        # both name styles (covid_* and the lower-case sub-s* whose CSV keys are upper-case)
        pick = names[: n // 2] + names[-(n - n // 2) :]
        for sub, fmt in (("images", "{}"), ("masks", "mask_{}")):
            (dst / split / sub).mkdir(parents=True, exist_ok=True)
            for name in pick:
                shutil.copyfile(src / split / sub / fmt.format(name), dst / split / sub / fmt.format(name))
    shutil.copytree(src / "text", dst / "text")


def test_real_sample_subset(tmp_path: Path, shared_data: Path) -> None:
    src = tmp_path / "qata_src"
    _copy_subset(shared_data / "qata_sample", src, 30, 10)
    p = make_params({"qata": {"kind": "qata", "source": str(src)}}, {"image_size": 224, "row_group_size": 16})
    raw, shards = stages(p, "qata", tmp_path)
    m = shardio.load_manifest(shards)
    assert {s: v["rows"] for s, v in m["splits"].items()} == {"train": 30, "val": 10, "test": 0}
    assert shardio.eval_split(shards) == "val"
    with open(src / "text" / "train.csv", newline="") as f:
        csv_text = {r["Image"].lower(): r["Description"] for r in csv.DictReader(f)}
    t = shardio.read_table(shards, "val", ["id", "text", "source_mask"])
    for i, text, smask in zip(*(t[c].to_pylist() for c in ("id", "text", "source_mask")), strict=True):
        assert text == csv_text[f"mask_{i}.png".lower()] and smask.endswith(f"mask_{i}.png")
    assert any(i.startswith("sub-s") for i in t["id"].to_pylist())  # the case-insensitive key path was used
    out = splits.run(p, p.regime("r").split, shards, tmp_path / "s.json")
    assert out["eval_split"] == "val" and len(out["labelled"]) == splits.n_labelled(0.25, 30)


@pytest.mark.slow
def test_real_sample_selected_by_params_alone(tmp_path: Path, shared_data: Path, repo_root: Path, monkeypatch) -> None:
    """datasets.qata.source=../shared/data/qata_sample, relative to the repo root, gives the full real sample."""
    monkeypatch.chdir(repo_root)
    # the value params.yaml documents, as typed: ../shared may be a symbolic link to anywhere
    # (shared_data is resolved), so the path is not derived from the fixture's resolved one
    rel = Path("..") / "shared" / "data" / "qata_sample"
    assert (rel / "train").resolve() == (shared_data / "qata_sample" / "train").resolve()
    p = make_params({"qata": {"kind": "qata", "source": str(rel)}}, {"image_size": 224, "row_group_size": 256})
    raw, shards = stages(p, "qata", tmp_path)
    ck = json.loads((raw / "checksums.json").read_text())
    assert ck["n_pairs"] == 1200
    m = shardio.load_manifest(shards)
    assert {s: v["rows"] for s, v in m["splits"].items()} == {"train": 1000, "val": 200, "test": 0}
    masks = shardio.decode_masks(shardio.read_table(shards, "val", ["mask", "height", "width"]))
    assert masks.shape == (200, 224, 224) and masks.reshape(200, -1).any(axis=1).all()
