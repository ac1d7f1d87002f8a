"""eval@<regime> end to end on tiny shards (written per CONTRACT.md) with a stand-in predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline_src.evaluate import evaluate as E
from pipeline_src.evaluate import metrics as M
from pipeline_src.params import Params
from tests.train_fixtures import write_split_shard

H = W = 32
TEXTS = ["lesion in upper left lung", "lesion in lower right lung", "bilateral, left upper and right lower"]
REGIONS = [(1, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1), (1, 0, 0, 0, 0, 1)]


class ThresholdPredictor:
    """Stand-in for inference.predictor.Predictor: bright pixels are the lesion (distractor blobs included),
    so predictions are right on lesions and wrong on distractors; embeddings encode the text."""

    device = "cpu"

    def predict(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        assert images.shape[1:] == (1, H, W) and len(texts) == len(images)
        return images.clone()

    def embed(self, images, texts):
        txt = torch.tensor([[float(t == u) for u in TEXTS] for t in texts])
        return txt + 0.01 * images.mean(dim=(1, 2, 3))[:, None], txt


def _sample(rng, k: int, blank: bool = False):
    img = rng.integers(0, 60, size=(H, W)).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    if not blank:
        y, x = rng.integers(2, H - 12, size=2)
        s = int(rng.integers(4, 10))
        mask[y : y + s, x : x + s] = 1
        img[mask > 0] = 220
        if k % 3 == 0:  # a distractor the text does not mention -> false positives
            img[H - 4 : H - 1, W - 4 : W - 1] = 230
    return img, mask


def write_shards(root: Path, n_val: int = 5, n_test: int = 7, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    shards = root / "shards"
    manifest = {"dataset": "qata", "kind": "qata", "image_size": H, "splits": {}, "schema": {}, "dropped": []}
    label_rows = {"id": [], "split": [], "text": [], "text_regions": []}
    for split, n in (("train", 0), ("val", n_val), ("test", n_test)):
        samples = []
        for k in range(n):
            img, mask = _sample(rng, k, blank=(split == "test" and k == n - 1))
            sid = f"{split}_{k:03d}"
            samples.append((sid, img, mask, TEXTS[k % 3]))
            label_rows["id"].append(sid)
            label_rows["split"].append(split)
            label_rows["text"].append(TEXTS[k % 3])
            label_rows["text_regions"].append(None if k == 1 else list(REGIONS[k % 3]))
        manifest["splits"][split] = write_split_shard(shards, split, samples)
    manifest["digest"] = "d" * 64
    (shards / "manifest.json").write_text(json.dumps(manifest))
    labels = root / "labels.parquet"
    pq.write_table(
        pa.table(
            {
                "id": label_rows["id"],
                "split": label_rows["split"],
                "text": label_rows["text"],
                "text_regions": pa.array(label_rows["text_regions"], pa.list_(pa.int8())),
                # the pseudo-label schema: eval reads labels with the same reader as training
                "position_spans": pa.array([[]] * len(label_rows["id"]), pa.list_(pa.list_(pa.int32(), 2))),
            }
        ),
        labels,
    )
    return shards, labels


class ListDataset:
    """Items shaped as ShardDataset's, built from decoded arrays (no dependency on the data package)."""

    def __init__(self, shards: Path, split: str):
        t = pq.read_table(shards / split / "part-00000.parquet").to_pydict()
        self.items = []
        for i, sid in enumerate(t["id"]):
            img = np.frombuffer(t["image"][i], np.uint8).reshape(H, W)
            mask = np.unpackbits(np.frombuffer(t["mask"][i], np.uint8))[: H * W].reshape(H, W)
            self.items.append(
                {
                    "id": sid,
                    "image": torch.from_numpy(img / 255.0).float()[None],
                    "mask": torch.from_numpy(mask.astype(np.float32))[None],
                    "text": t["text"][i],
                }
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _params(**eval_overrides) -> Params:
    return Params.model_validate(
        {
            "datasets": {"qata": {"kind": "qata", "source": "synthetic"}},
            "regimes": {"qata_10pct": {"dataset": "qata", "fraction": 0.1, "method": "supervised"}},
            "eval": {"batch_size": 3, **eval_overrides},
        }
    )


def test_evaluate_predictor_matches_direct_metrics(tmp_path):
    shards, labels = write_shards(tmp_path)
    ds = ListDataset(shards, "test")
    regions = E.read_regions(labels)
    summary, per = E.evaluate_predictor(
        ThresholdPredictor(), ds, threshold=0.5, batch_size=3, regions=regions, alignment=True, progress=False
    )
    # the same numbers as scoring all masks at once: batching must not change anything
    preds = np.stack([(it["image"][0].numpy() > 0.5).astype(np.uint8) for it in ds.items])
    gts = np.stack([it["mask"][0].numpy().astype(np.uint8) for it in ds.items])
    direct = M.summarize(M.per_sample(preds, gts))
    for k in ("dice", "dice_std", "iou", "dice_global", "iou_global", "hd95", "assd", "nsd", "sensitivity"):
        assert summary[k] == pytest.approx(direct[k]), k
    assert list(per["id"]) == [it["id"] for it in ds.items]
    # distractors make some images imperfect, so per-image and global differ and Dice < 1
    assert summary["dice"] < 1 and summary["n_empty_gt"] == 1
    # texts cycle LU / RL / LU+RL over ids 0..6; id 1's regions are unknown (null in the labels)
    assert summary["per_region"]["left-upper"]["n"] == 5  # ids 0, 2, 3, 5, 6
    assert summary["per_region"]["right-lower"]["n"] == 3  # ids 2, 4, 5
    assert summary["per_region"]["unknown"]["n"] == 1
    al = summary["alignment"]
    assert al["top1"] == 1.0 and 0 < al["top1_chance"] < 1 and al["region_agreement"] == 1.0
    # the fast path training uses for validation: same Dice, no surface distances
    fast, _ = E.evaluate_predictor(ThresholdPredictor(), ds, distances=False, progress=False)
    assert fast["dice"] == pytest.approx(summary["dice"]) and fast["hd95"] is None and "alignment" not in fast
    # min component size removes the 3x3 distractors (9 px) but not lesions (>= 16 px)
    s2, _ = E.evaluate_predictor(ThresholdPredictor(), ds, min_component_size=10, progress=False)
    assert s2["dice_global"] > summary["dice_global"]


def test_select_overlays_skips_empty_gt_and_is_ordered():
    import pandas as pd

    df = pd.DataFrame({"id": list("abcde"), "dice": [0.9, 1.0, 0.1, 0.5, 0.7], "gt_pixels": [5, 0, 5, 5, 5]})
    picks = E.select_overlays(df, 1)
    assert picks == [("best", 0, 0), ("median", 0, 4), ("worst", 0, 2)]


@pytest.mark.slow
def test_run_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("pipeline_src.data.dataset", reason="data package (ShardDataset) not landed yet")
    shards, labels = write_shards(tmp_path)
    model_dir = tmp_path / "models" / "qata_10pct"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(b"stand-in")
    monkeypatch.setattr(E, "_load_predictor", lambda model_dir, device: ThresholdPredictor())
    metrics_file = tmp_path / "metrics" / "qata_10pct.json"
    out_dir = tmp_path / "eval" / "qata_10pct"
    E.run(_params(), "qata_10pct", model_dir, shards, labels, metrics_file, out_dir)

    m = json.loads(metrics_file.read_text())
    contract = ("regime", "dataset", "method", "fraction", "eval_split", "n", "dice", "dice_std", "iou", "iou_std",
                "dice_global", "iou_global", "hd95", "assd", "nsd", "sensitivity", "specificity", "per_region",
                "provenance")  # fmt: skip
    assert all(k in m for k in contract)
    assert m["eval_split"] == "test" and m["n"] == 7 and m["method"] == "supervised"
    assert m["provenance"]["inputs"]["shards"] == "d" * 64
    per = (out_dir / "per_sample.csv").read_text().splitlines()
    assert per[0].startswith("id,text,dice,iou") and len(per) == 8
    assert (out_dir / "dice_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out_dir / "overlays").glob("*.png")) == ["best_0.png", "median_0.png", "worst_0.png"]
    z = np.load(out_dir / "samples.npz")
    assert z["image"].shape == (3, H, W) and z["pred"].shape == (3, H, W)
    assert z["dice"][0] >= z["dice"][1] >= z["dice"][2]
    # same inputs, same bytes (figures and npz included): DVC sees an unchanged output
    out2 = tmp_path / "eval2"
    E.run(_params(), "qata_10pct", model_dir, shards, labels, tmp_path / "m2.json", out2)
    files = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    assert all((out_dir / f).read_bytes() == (out2 / f).read_bytes() for f in files)
