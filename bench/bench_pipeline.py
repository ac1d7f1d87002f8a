"""Pipeline overhead benchmark: no-op `dvc repro` / `snakemake -n`, `medref --help` start-up, loader speed.

    .venv/bin/python bench/bench_pipeline.py            # small (CI): demo dataset, chain up to split@qata_10pct
    .venv/bin/python bench/bench_pipeline.py --full     # + `dvc repro` of the whole demo from scratch (= make run)

Works in a scratch copy of the repository (tests/pipeline_utils.make_scratch_repo), never in the checkout.
Goals (a pipeline that feels instant to iterate on): no-op `dvc repro` and `snakemake -n all` <= 1.5 s each; `medref --help` imports no torch;
the loader (DataLoader over ShardDataset) >= 10x the train step's samples/s (the ratio is computed by
bench/run_all.py from bench_train.py's figure). Writes bench/results/bench_pipeline[_full].json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pipeline_utils import BIN, env, make_scratch_repo  # noqa: E402

DEMO_DATA = {"datasets": {"qata": {"synthetic": {"n_train": 200, "n_val": 40, "n_test": 60, "image_size": 128}}},
             "preprocess": {"image_size": 128}}


def timed(cmd: list[str], cwd: Path, repeat: int = 3) -> tuple[float, subprocess.CompletedProcess]:
    best, res = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
        best = min(best, time.perf_counter() - t)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return best, res


def cli_startup(cwd: Path) -> dict:
    s, _ = timed([str(BIN / "medref"), "--help"], cwd, repeat=5)
    code = "import sys; sys.argv = ['medref', '--help']\nfrom pipeline_src.cli import main\ntry: main()\nexcept SystemExit: pass"
    imp = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=cwd, env=env(), capture_output=True,
                         text=True)
    mods = [ln.rsplit("|", 1)[-1].strip() for ln in imp.stderr.splitlines() if ln.startswith("import time:")]
    heavy = sorted({m.split(".")[0] for m in mods} & {"torch", "pyarrow", "numpy", "timm", "open_clip", "pandas"})
    return {"medref_help_s": round(s, 3), "help_imports_torch": "torch" in {m.split(".")[0] for m in mods},
            "help_heavy_imports": heavy, "help_modules_imported": len(mods)}


def loader_rate(shards: Path, batch: int = 16, workers: int = 0, repeat: int = 3) -> dict:
    import torch

    from pipeline_src.data.dataset import ShardDataset
    from pipeline_src.train.train import load_split

    ds = ShardDataset(shards, "train")
    ds[0]  # lazy load (and the shard sha256 check) outside the timing: steady-state per-sample cost
    n = len(ds)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _b in torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers):
            pass
        best = min(best, time.perf_counter() - t)
    ids = [ds[i]["id"] for i in range(n)]
    sp = load_split(shards, "train", ids, {k: ([0] * 6, []) for k in ids})  # train.py's in-memory batches
    t = time.perf_counter()
    for i in range(0, n, batch):
        sp.batch(list(range(i, min(n, i + batch))), torch.device("cpu"))
    return {"loader_samples_per_s": round(n / best, 1), "split_batch_samples_per_s": round(n / (time.perf_counter() - t), 1),
            "loader_rows": n, "loader_batch": batch, "loader_workers": workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also time `dvc repro` of the whole demo from scratch")
    ap.add_argument("--keep", type=Path, help="build the scratch repo here and keep it")
    ap.add_argument("--out", type=Path, help="results JSON (default bench/results/bench_pipeline[_full].json)")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="medref-bench-"))
    res: dict = {"mode": "full" if a.full else "small", "load_before": os.getloadavg()}
    try:
        if a.full:  # the real demo params (make_scratch_repo shrinks them; put the originals back)
            repo = make_scratch_repo(work / "repo")
            shutil.copy2(REPO / "params.yaml", repo / "params.yaml")
            subprocess.run(["git", "commit", "-qam", "demo params"], cwd=repo, env=env(), check=True)
            target: list[str] = []
            smk_target = "all"
        else:  # the demo dataset, chain up to one split (no training): seconds, not minutes
            repo = make_scratch_repo(work / "repo", overrides=DEMO_DATA, regimes=["qata_10pct"])
            target = ["split@qata_10pct"]
            smk_target = "data/splits/qata_10pct.json"
        t = time.perf_counter()
        first = subprocess.run([str(BIN / "dvc"), "repro", *target], cwd=repo, env=env(), capture_output=True, text=True)
        if first.returncode != 0:
            raise SystemExit(f"dvc repro failed:\n{first.stdout[-3000:]}\n{first.stderr[-3000:]}")
        res["dvc_repro_from_scratch_s" if a.full else "dvc_repro_build_s"] = round(time.perf_counter() - t, 2)
        res["dvc_target"] = " ".join(target) or "(all)"
        s, noop = timed([str(BIN / "dvc"), "repro", *target], repo)
        assert "Running stage" not in noop.stdout, noop.stdout
        res["dvc_repro_noop_s"] = round(s, 3)
        # Snakemake's dry run on the DVC-built tree: --touch first so it shares DVC's view (tests/test_pipeline_e2e)
        subprocess.run([str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "--touch", smk_target],
                       cwd=repo, env=env(), capture_output=True, text=True)
        s, dry = timed([str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "-n", smk_target], repo)
        res["snakemake_dry_run_s"] = round(s, 3)
        res["snakemake_target"] = smk_target
        res["snakemake_dry_run_jobs"] = sum(1 for ln in dry.stdout.splitlines() if ln.strip().startswith("rule "))
        res.update(cli_startup(repo))
        res.update(loader_rate(repo / "data" / "shards" / "qata"))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = os.getloadavg()
    out = a.out or REPO / "bench" / "results" / ("bench_pipeline_full.json" if a.full else "bench_pipeline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
