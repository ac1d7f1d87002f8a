"""Run every benchmark and print one table of figures against the pipeline-speed goals.

    .venv/bin/python bench/run_all.py             # small sizes (CI-able, ~1-2 min on 2 idle cores)
    .venv/bin/python bench/run_all.py --smallest  # the CI smoke size (tests/test_bench_smoke.py)
    .venv/bin/python bench/run_all.py --full      # full sizes (`make bench`): QaTa-sized data, whole demo repro

Runs bench/bench_data.py (shard readers vs PNG Dataset, preprocess time / peak RSS), bench/bench_train.py
(CPU train-step samples/s, supervised + semi_medref) and bench/bench_pipeline.py (no-op dvc repro /
snakemake -n, `medref --help`, loader samples/s, demo repro time in --full) and bench/bench_predict.py
(`medref predict` images/s against eval's inner loop, start-up to the first mask), each as a child process.
Writes bench/results/<bench>.json and bench/results/run_all[_full].json (git-ignored), with the machine
load average before and after: figures from a loaded machine are marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def sh(cmd: list[str]) -> str:
    print(f"$ {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    print(f"  ({time.perf_counter() - t:.1f} s)", flush=True)
    return res.stdout


def bench_train(steps: int, warmup: int, size: int) -> dict:
    out = sh([sys.executable, "bench/bench_train.py", "--steps", str(steps), "--warmup", str(warmup),
              "--size", str(size)])
    rates = {m: float(r) for m, r in re.findall(r"^(\w+)\s+\d+ ms/step\s+([\d.]+) samples/s", out, re.M)}
    res = {"size": size, "steps": steps, "samples_per_s": rates, "header": out.splitlines()[0]}
    (RESULTS / "bench_train.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def row(name: str, value, unit: str, goal: str = "", met: bool | None = None) -> dict:
    return {"figure": name, "value": value, "unit": unit, "goal": goal,
            "met": "" if met is None else ("yes" if met else "NO")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true")
    g.add_argument("--smallest", action="store_true", help="tiny sizes for the CI smoke test")
    a = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    mode = "full" if a.full else "smallest" if a.smallest else "small"
    load0 = os.getloadavg()
    t0 = time.perf_counter()

    data_args = ["--full"] if a.full else ["--size", "60" if a.smallest else "300"]
    print(sh([sys.executable, "bench/bench_data.py", *data_args]).splitlines()[-1])
    data = json.loads((RESULTS / ("bench_data_full.json" if a.full else "bench_data.json")).read_text())
    train = bench_train(*((8, 2, 128) if a.full else (1, 1, 64) if a.smallest else (3, 1, 128)))
    pipe_json = RESULTS / ("bench_pipeline_full.json" if a.full else "bench_pipeline.json")
    sh([sys.executable, "bench/bench_pipeline.py", *(["--full"] if a.full else []), "--out", str(pipe_json)])
    pipe = json.loads(pipe_json.read_text())
    pred_json = RESULTS / "bench_predict.json"
    sh([sys.executable, "bench/bench_predict.py", *(["--n", "4", "--size", "64"] if a.smallest else []),
        "--out", str(pred_json)])
    pred = json.loads(pred_json.read_text())

    sps, ratios = data["samples_per_s"], data["ratios"]
    rows = [
        row("shard bulk reader vs PNG", ratios["bulk"], "x", ">= 20x", ratios["bulk"] >= 20),
        row("shard Dataset vs PNG Dataset (per sample)", ratios["dataset"], "x", ">= 10x", ratios["dataset"] >= 10),
        row("shard vs PNG DataLoader, 0 workers", ratios["loader_w0"], "x"),
        row("shard vs PNG DataLoader, 2 workers", ratios["loader_w2"], "x"),
        row("shard Dataset", sps["shard_dataset"], "samples/s"),
        row("PNG Dataset", sps["png_dataset"], "samples/s"),
        row(f"preprocess {data['n_pairs']} pairs 224^2", data["preprocess_s"], "s",
            "<= 60 s (full)", data["preprocess_s"] <= 60 if a.full else None),
        row("preprocess peak RSS", data["preprocess_peak_rss_mib"], "MiB", "<= 1024", data["preprocess_peak_rss_mib"] <= 1024),
    ]
    for m, r in train["samples_per_s"].items():
        rows.append(row(f"train step {m} (CPU, {train['size']}^2)", r, "samples/s"))
    sup = train["samples_per_s"].get("supervised")
    lr = pipe["loader_samples_per_s"]
    rows += [
        row("loader (ShardDataset, 0 workers)", lr, "samples/s"),
        row("loader / train step (supervised)", round(lr / sup, 1) if sup else None, "x", ">= 10x",
            lr / sup >= 10 if sup else None),
        row(f"no-op dvc repro {pipe['dvc_target']}", pipe["dvc_repro_noop_s"], "s", "<= 1.5 s",
            pipe["dvc_repro_noop_s"] <= 1.5),
        row(f"snakemake -n {pipe['snakemake_target']}", pipe["snakemake_dry_run_s"], "s", "<= 1.5 s",
            pipe["snakemake_dry_run_s"] <= 1.5),
        row("medref --help", pipe["medref_help_s"], "s"),
        row("medref --help imports torch", pipe["help_imports_torch"], "", "no", not pipe["help_imports_torch"]),
    ]
    rows += [
        row(f"predict / eval inner loop (CPU, {pred['size']}^2)", pred["predict_over_eval"], "x", ">= 0.9",
            pred["predict_over_eval"] >= 0.9),
        row("predict", pred["predict_images_per_s"], "images/s"),
        row("medref predict start-up to first mask", pred["startup_to_first_mask_s"], "s", "<= 2 s",
            pred["startup_to_first_mask_s"] <= 2),
    ]
    if "dvc_repro_from_scratch_s" in pipe:
        rows.append(row("demo dvc repro from scratch (make run)", pipe["dvc_repro_from_scratch_s"], "s", "<= ~180 s",
                        pipe["dvc_repro_from_scratch_s"] <= 180))
    load1 = os.getloadavg()
    summary = {"mode": mode, "rows": rows, "wall_s": round(time.perf_counter() - t0, 1), "load_before": load0,
               "load_after": load1, "cpus": os.cpu_count(), "machine": platform.platform(),
               "python": platform.python_version()}
    out = RESULTS / ("run_all_full.json" if a.full else "run_all.json")
    out.write_text(json.dumps(summary, indent=2) + "\n")

    w = max(len(r["figure"]) for r in rows)
    print(f"\nmedref benchmarks ({mode}) on {os.cpu_count()} CPUs, load {load0[0]:.1f} -> {load1[0]:.1f}")
    print(f"{'figure':{w}}  {'value':>10}  {'unit':9}  {'goal':14}  met")
    print(f"{'-' * w}  {'-' * 10}  {'-' * 9}  {'-' * 14}  ---")
    for r in rows:
        print(f"{r['figure']:{w}}  {r['value']!s:>10}  {r['unit']:9}  {r['goal']:14}  {r['met']}")
    if load0[0] > (os.cpu_count() or 1) * 0.5:
        print(f"note: load average {load0[0]:.1f} on {os.cpu_count()} CPUs: timings are from a busy machine")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
