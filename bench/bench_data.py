"""Data benchmark: shard readers vs a plain PNG-folder + CSV Dataset, and preprocess time / peak RSS.

    .venv/bin/python bench/bench_data.py            # small synthetic set (CI): 600 pairs at 224x224
    .venv/bin/python bench/bench_data.py --full     # QaTa-sized synthetic set: 9258 pairs at 224x224
    .venv/bin/python bench/bench_data.py --size 2000

Prints samples/s and the ratios (goals: bulk reader >= 20x, per-sample Dataset >= 10x the PNG Dataset) and
preprocess wall time / peak RSS (goals on the full set: <= 60 s, <= 1 GiB on 2 cores); writes
bench/results/bench_data.json (git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline_src.data import dataset  # noqa: E402
from pipeline_src.data import shards as shardio  # noqa: E402
from pipeline_src.params import Params  # noqa: E402


class PngCsvDataset(torch.utils.data.Dataset):
    """What the anchors do (LViT/GuideDecoder loaders): a CSV of texts, PIL-open image + mask per sample."""

    def __init__(self, raw_dir: Path, split: str):
        with open(raw_dir / "pairs.csv", newline="") as f:
            self.rows = [r for r in csv.DictReader(f) if r["split"] == split]
        self.raw = raw_dir

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        img = np.asarray(Image.open(self.raw / r["image"]).convert("L"), dtype=np.float32) / 255.0
        mask = (np.asarray(Image.open(self.raw / r["mask"]).convert("L")) > 127).astype(np.float32)
        return {"id": r["id"], "image": torch.from_numpy(img)[None], "mask": torch.from_numpy(mask)[None], "text": r["text"]}


def _rate(n: int, fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def _loop(ds) -> None:
    for i in range(len(ds)):
        ds[i]


def _loader(ds, workers: int) -> None:
    for _ in torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="QaTa-sized: 5716/1429/2113 pairs at 224x224")
    ap.add_argument("--size", type=int, default=600, help="total pairs when not --full (default %(default)s)")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the generated data in --work")
    a = ap.parse_args()

    n = 9258 if a.full else a.size
    syn = {"size": "qata"} if a.full else {"n_train": int(n * 0.62), "n_val": int(n * 0.15),
                                            "n_test": n - int(n * 0.62) - int(n * 0.15), "image_size": 224}
    params = {"datasets": {"bench": {"kind": "qata", "source": "synthetic", "synthetic": syn}},
              "preprocess": {"image_size": 224, "row_group_size": 256, "shard_rows": 4096, "compression": "lz4"},
              "regimes": {"r": {"dataset": "bench", "fraction": 0.1}}}
    a.work.mkdir(parents=True, exist_ok=True)
    pfile = a.work / "params.yaml"
    import yaml

    pfile.write_text(yaml.safe_dump(params))
    Params.model_validate(params)
    raw, shards = a.work / "raw", a.work / "shards"
    res: dict = {"n_pairs": n, "image_size": 224, "python": platform.python_version(), "cpus": __import__("os").cpu_count()}

    t = time.perf_counter()
    from pipeline_src import params as P
    from pipeline_src.data import download

    download.run(P.load(pfile), "bench", raw)
    res["download_s"] = round(time.perf_counter() - t, 2)

    # preprocess in a child process so its peak RSS is its own
    if shards.exists():
        shutil.rmtree(shards)
    code = ("from pathlib import Path; from pipeline_src import params as P; from pipeline_src.data import preprocess;"
            f"preprocess.run(P.load({str(pfile)!r}), 'bench', Path({str(raw)!r}), Path({str(shards)!r}));"
            # VmHWM, not RUSAGE_CHILDREN: the latter counts the forked copy of THIS process (torch loaded)
            "print('VmHWM', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    res["preprocess_s"] = round(time.perf_counter() - t, 2)
    print(out.stdout + out.stderr[-2000:], end="")
    hwm_kib = int(next(ln for ln in out.stdout.splitlines() if ln.startswith("VmHWM")).split()[1])
    res["preprocess_peak_rss_mib"] = round(hwm_kib / 1024, 1)
    res["shards_mib"] = round(sum(f.stat().st_size for f in shards.rglob("*.parquet")) / 2**20, 1)
    res["raw_png_mib"] = round(sum(f.stat().st_size for f in raw.rglob("*.png")) / 2**20, 1)

    split = "train"
    png = PngCsvDataset(raw, split)
    m = len(png)
    res["split_rows"] = m

    def bulk() -> None:
        t = shardio.read_table(shards, split, ["image", "mask", "height", "width"])
        shardio.decode_images(t)
        shardio.decode_masks(t)

    def png_bulk() -> None:
        for r in png.rows:
            np.asarray(Image.open(raw / r["image"]).convert("L"))
            _ = np.asarray(Image.open(raw / r["mask"]).convert("L")) > 127

    r = {}
    r["png_bulk"] = _rate(m, png_bulk, 1)
    r["shard_bulk"] = _rate(m, bulk)
    r["png_dataset"] = _rate(m, lambda: _loop(png), 1)
    r["shard_dataset"] = _rate(m, lambda: _loop(dataset.ShardDataset(shards, split)))  # includes the lazy load
    for w in (0, 2):
        r[f"png_loader_w{w}"] = _rate(m, lambda w=w: _loader(png, w), 1)
        r[f"shard_loader_w{w}"] = _rate(m, lambda w=w: _loader(dataset.ShardDataset(shards, split), w), 1)
    res["samples_per_s"] = {k: round(v, 1) for k, v in r.items()}
    res["ratios"] = {
        "bulk": round(r["shard_bulk"] / r["png_bulk"], 1),
        "dataset": round(r["shard_dataset"] / r["png_dataset"], 1),
        "loader_w0": round(r["shard_loader_w0"] / r["png_loader_w0"], 1),
        "loader_w2": round(r["shard_loader_w2"] / r["png_loader_w2"], 1),
    }
    out = REPO / "bench" / "results" / ("bench_data_full.json" if a.full else "bench_data.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"bulk {res['ratios']['bulk']}x (goal >= 20x), dataset {res['ratios']['dataset']}x (goal >= 10x), "
          f"loader w0 {res['ratios']['loader_w0']}x, w2 {res['ratios']['loader_w2']}x; preprocess {res['preprocess_s']} s "
          f"(goal <= 60), peak RSS {res['preprocess_peak_rss_mib']} MiB (goal <= 1024) -> {out}")
    if not a.keep:
        shutil.rmtree(a.work)


if __name__ == "__main__":
    main()
