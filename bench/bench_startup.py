"""Start-up of each ``medref`` command: wall time from the command to its first output, and its import share.

    .venv/bin/python bench/bench_startup.py --keep /tmp/medref-startup   # build the fixture (once), then time
    /work/paused_study.sh .venv/bin/python bench/bench_startup.py --keep /tmp/medref-startup --no-build

The fixture is a scratch copy of the repository (tests/pipeline_utils.make_scratch_repo: tiny synthetic data, the
demo study ``qata`` restricted to its two runs), built by running the stages' own commands once: download,
preprocess, pseudolabel, split, train, eval, study, report. Then each command below runs as a fresh process,
``--repeat`` times (best kept):

- ``wall_s``: from the command's start to its first output (the first byte it writes to stdout or stderr, or its
  exit, whichever comes first); ``exit_s``: to its exit. For ``predict`` the first output *is* the mask line, so
  ``exit_s`` is the command-to-first-mask time (one image);
- ``import_s``: the same command under ``python -X importtime``, the sum of its top-level imports' cumulative
  times (imports inside functions included), and ``import_share`` = import_s / that run's exit time;
- ``torch``: whether the command imported torch (its ``-X importtime`` log names it).

Commands: ``--help``, ``grid``, ``split``, ``study``, ``report``, ``eval`` (the test split fits one batch),
``predict`` on one image with ``--engine torch`` and, when ``medref predict`` has it, on the model's ONNX export
(``medref predict exports/qata_10pct.onnx``: onnxruntime, no torch). Goals (issue 25): ``--help`` <= 0.3 s, each torch-free stage's imports
<= 0.5 s, predict's first mask <= 1.5 s. Writes bench/results/bench_startup.json (git-ignored) with the load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pipeline_utils import BIN, env, make_scratch_repo  # noqa: E402

REGIMES = ["qata_10pct-supervised", "qata_10pct"]
# tiny data; eval's batch holds the whole test split (12 images), so ``eval`` is one batch
OVERRIDES = {"eval": {"batch_size": 16}}
TEXT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
MEDREF = str(BIN / "medref")


def build(repo: Path) -> None:
    make_scratch_repo(repo, overrides=OVERRIDES, regimes=REGIMES)
    steps = [["download", "qata"], ["preprocess", "qata"], ["pseudolabel", "qata"], ["split", "qata_10pct"]]
    steps += [[s, r] for s in ("train", "eval") for r in REGIMES] + [["study", "qata"], ["report"]]
    for s in steps:
        t = time.perf_counter()
        res = subprocess.run([MEDREF, *s], cwd=repo, env=env(), capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"medref {' '.join(s)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        print(f"[build] medref {' '.join(s)} ({time.perf_counter() - t:.1f} s)", flush=True)


def first_output(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds to the first byte on stdout/stderr or the exit, seconds to the exit)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env={**env(), "MEDREF_PROGRESS": "0"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = None
    streams = [p.stdout, p.stderr]
    out = {p.stdout: b"", p.stderr: b""}
    while streams:
        ready, _, _ = select.select(streams, [], [])
        for s in ready:
            chunk = os.read(s.fileno(), 65536)
            if not chunk:
                streams.remove(s)
                continue
            out[s] += chunk
            if first is None:
                first = time.perf_counter() - t
    rc = p.wait()
    end = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n{out[p.stdout][-2000:]}\n{out[p.stderr][-3000:]}")
    return (first if first is not None else end), end


def import_profile(args: list[str], cwd: Path) -> dict:
    """``-X importtime`` of ``medref <args>``: top-level import seconds, exit seconds, whether torch came in."""
    code = ("import sys; sys.argv = ['medref', *sys.argv[1:]]\nfrom pipeline_src.cli import main\n"
            "try: rc = main()\nexcept SystemExit as e: rc = e.code\nsys.exit(rc or 0)")
    t = time.perf_counter()
    # -P: the installed package, as the medref script imports it, not a copy of pipeline_src in cwd
    res = subprocess.run([sys.executable, "-P", "-X", "importtime", "-c", code, *args], cwd=cwd,
                         env={**env(), "MEDREF_PROGRESS": "0"}, capture_output=True, text=True)
    end = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"importtime medref {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    total, mods = 0, set()
    heavy: dict[str, float] = {}
    for ln in res.stderr.splitlines():
        if not ln.startswith("import time:") or "imported package" in ln:
            continue
        _self, cum, raw = ln.removeprefix("import time:").split("|")
        name = raw.strip()
        root = name.split(".")[0]
        mods.add(root)
        if len(raw) - len(raw.lstrip()) <= 1:  # level 0 (one space after the bar): not inside another import
            total += int(cum)
            heavy[root] = heavy.get(root, 0) + int(cum) / 1e6
    top3 = sorted(heavy.items(), key=lambda kv: -kv[1])[:3]
    return {"import_s": round(total / 1e6, 3), "importtime_exit_s": round(end, 3),
            "import_share": round(total / 1e6 / end, 2), "torch": "torch" in mods,
            "largest_imports": {k: round(v, 3) for k, v in top3}}


EXPORTED = "exports/qata_10pct.onnx"


def commands(repo: Path, onnx: bool) -> dict[str, list[str]]:
    raw_img = sorted((repo / "data" / "raw" / "qata").rglob("*.png"))
    img = next(p for p in raw_img if not p.name.startswith("mask_"))
    out = {"--help": ["--help"], "grid": ["grid"], "split": ["split", "qata_10pct"], "study": ["study", "qata"],
           "report": ["report"], "eval (1 batch)": ["eval", "qata_10pct"]}
    pred = ["predict", "models/qata_10pct", "--images", str(img), "--text", TEXT, "--device", "cpu"]
    if onnx:
        out["predict (torch)"] = [*pred, "--engine", "torch"]
        out["predict (onnx)"] = ["predict", EXPORTED, *pred[2:]]
    else:
        out["predict (torch)"] = pred
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="the fixture folder (built here when missing, kept)")
    ap.add_argument("--no-build", action="store_true", help="the fixture must exist already (timing only)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_startup.json")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="medref-startup-"))
    repo = work / "repo"
    if not (repo / "reports").is_dir():
        if a.no_build:
            raise SystemExit(f"{repo}: no fixture; run without --no-build first")
        build(repo)
    onnx = "--engine" in subprocess.run([MEDREF, "predict", "--help"], cwd=repo, env=env(), capture_output=True,
                                        text=True).stdout
    if onnx and not (repo / EXPORTED).is_file():  # models/<regime>/ is train's DVC output: the export goes beside it
        subprocess.run([MEDREF, "export", "models/qata_10pct", "--format", "onnx", "--out", EXPORTED], cwd=repo,
                       env=env(), check=True, capture_output=True)
    load0 = os.getloadavg()
    rows = {}
    for name, args in commands(repo, onnx).items():
        runs = []
        for k in range(a.repeat):
            if args[0] == "predict":
                args = [*args, "--out", str(work / f"pred-{len(rows)}-{k}")]
            runs.append(first_output([MEDREF, *args], repo))
            if args[0] == "predict":
                args = args[:-2]
        prof = import_profile(args if args[0] != "predict" else [*args, "--out", str(work / f"pred-imp-{len(rows)}")],
                              repo)
        rows[name] = {"wall_s": round(min(r[0] for r in runs), 3), "exit_s": round(min(r[1] for r in runs), 3),
                      **prof}
        print(f"{name:16s} first output {rows[name]['wall_s']:6.2f} s  exit {rows[name]['exit_s']:6.2f} s  "
              f"imports {prof['import_s']:5.2f} s ({prof['import_share']:.0%})  torch {prof['torch']}  "
              f"{prof['largest_imports']}", flush=True)
    load1 = os.getloadavg()
    res = {"load_before": load0, "load_after": load1, "cpus": os.cpu_count(), "repeat": a.repeat, "commands": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"load {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs; -> {a.out}")


if __name__ == "__main__":
    main()
