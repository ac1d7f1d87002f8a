"""Tiny synthetic shards / labels / split written per docs/CONTRACT.md, for the train and model tests.

Independent of the data and labels stages (their own tests cover them): 64x64 images with one lesion in
the regions the text names and one unnamed distractor, so text matters.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_src.data import shards as shardio
from pipeline_src.labels.text_parser import REGIONS, parse
from pipeline_src.utils.io import sha256_file

PHRASES = {
    0: "upper left lung",
    1: "middle left lung",
    2: "lower left lung",
    3: "upper right lung",
    4: "middle right lung",
    5: "lower right lung",
}


def _sample(rng: np.random.Generator, size: int):
    r = int(rng.integers(6))
    d = int(rng.choice([k for k in range(6) if k != r]))
    img = (rng.random((size, size)) * 40 + 40).astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k, is_lesion in ((r, True), (d, False)):
        side, lv = divmod(k, 3)
        cy = (lv + 0.5) * size / 3 + rng.uniform(-3, 3)
        cx = (side + 0.5) * size / 2 + rng.uniform(-4, 4)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 10) ** 2
        img[blob] += 120
        if is_lesion:
            mask[blob] = 1
    text = f"Unilateral pulmonary infection, one infected area, {PHRASES[r]}."
    return np.clip(img, 0, 255).astype(np.uint8), mask, text


def write_split_shard(shards: Path, split: str, samples: list[tuple[str, np.ndarray, np.ndarray, str]]) -> dict:
    """Write ``(id, image, mask, text)`` samples as ``shards/<split>/part-00000.parquet`` in the real shard schema
    (``shardio.schema``: masks bit-packed, source/sha columns filled with the id); return the split's manifest
    entry. No samples: no file, an empty entry."""
    if not samples:
        return {"rows": 0, "shards": []}
    size = samples[0][1].shape[0]
    ids = [sid for sid, *_ in samples]
    cols = {
        "id": ids,
        "split": [split] * len(samples),
        "image": [img.tobytes() for _, img, _, _ in samples],
        "mask": [np.packbits(mask > 0).tobytes() for _, _, mask, _ in samples],
        "height": [size] * len(samples),
        "width": [size] * len(samples),
        "text": [text for *_, text in samples],
        **{c: ids for c in ("source_image", "source_mask", "image_sha256", "mask_sha256")},
    }
    path = shards / split / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=shardio.schema(size)), path)
    return {"rows": len(samples),
            "shards": [{"path": f"{split}/part-00000.parquet", "rows": len(samples), "sha256": sha256_file(path)}]}


def make_dataset(
    root: Path, n_train: int = 24, n_val: int = 8, size: int = 64, seed: int = 0, fraction: float = 0.25
) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    shards, labels_rows = root / "shards", []
    manifest = {"dataset": "tiny", "kind": "qata", "image_size": size, "splits": {}, "digest": f"tiny-{seed}"}
    for split, n in (("train", n_train), ("val", n_val), ("test", 0)):
        samples = []
        for i in range(n):
            img, mask, text = _sample(rng, size)
            sid = f"{split}_{i:04d}"
            samples.append((sid, img, mask, text))
            p = parse(text)
            labels_rows.append(
                {
                    "id": sid,
                    "split": split,
                    "text": text,
                    "text_regions": list(p.regions),
                    "position_spans": [list(s) for s in p.spans],
                }
            )
        manifest["splits"][split] = write_split_shard(shards, split, samples)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    labels = root / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(labels_rows), labels)
    ids = sorted(f"train_{i:04d}" for i in range(n_train))
    perm = np.random.default_rng(1).permutation(ids).tolist()
    k = max(1, round(fraction * n_train))
    split_file = root / "split.json"
    split_file.write_text(
        json.dumps(
            {
                "regime": "tiny",
                "dataset": "tiny",
                "fraction": fraction,
                "seed": 0,
                "n_train": n_train,
                "labelled": sorted(perm[:k]),
                "unlabelled": sorted(perm[k:]),
                "eval_split": "val",
                "shards_digest": manifest["digest"],
                "digest": "d",
            }
        )
    )
    return {"shards_dir": shards, "labels_file": labels, "split_file": split_file}


def ensure_dataset_module() -> None:
    """Until pipeline_src.data.dataset lands, provide the contract's three readers (test-only stand-in)."""
    try:
        import pipeline_src.data.dataset  # noqa: F401

        return
    except ImportError:
        pass

    def read_table(shards_dir, split, columns=None):
        files = sorted((Path(shards_dir) / split).glob("part-*.parquet"))
        return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])

    def decode_images(t):
        h, w = t.column("height")[0].as_py(), t.column("width")[0].as_py()
        return np.stack([np.frombuffer(b, np.uint8).reshape(h, w) for b in t.column("image").to_pylist()])

    def decode_masks(t):
        h, w = t.column("height")[0].as_py(), t.column("width")[0].as_py()
        return np.stack(
            [np.unpackbits(np.frombuffer(b, np.uint8))[: h * w].reshape(h, w) for b in t.column("mask").to_pylist()]
        )

    mod = types.ModuleType("pipeline_src.data.dataset")
    mod.read_table, mod.decode_images, mod.decode_masks = read_table, decode_images, decode_masks
    sys.modules["pipeline_src.data.dataset"] = mod


assert len(REGIONS) == 6
