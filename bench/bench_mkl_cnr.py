"""What oneMKL's reproducibility mode costs: CPU train-step throughput with CNR off vs ``MKL_CBWR=AUTO,STRICT``.

    .venv/bin/python bench/bench_mkl_cnr.py [--rounds 2] [--steps 6] [--size 128]

Every medref process runs with ``MKL_CBWR=AUTO,STRICT`` (pipeline_src/__init__.py: bit-identical weights from
run to run). This runs bench/bench_train.py in child processes, alternately with CNR off (oneMKL initialised
by a GEMM before pipeline_src is imported, so the mode stays off; MKL_VERBOSE confirms it) and on, and prints
samples/s per method and the on/off ratio of the medians. Measure on an idle machine: the load average is
printed before and after.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# argv[1] is the mode; "off" makes oneMKL's first call before pipeline_src sets MKL_CBWR (read once, then)
PREAMBLE = ("import sys, runpy, torch\n"
            "if sys.argv[1] == 'off':\n"
            "    torch.ones(8, 8) @ torch.ones(8, 8)\n")
CHILD = PREAMBLE + "sys.argv = ['bench_train.py'] + sys.argv[2:]\nrunpy.run_path('bench/bench_train.py', run_name='__main__')\n"
PROBE = PREAMBLE + "import pipeline_src\ntorch.randn(64, 64) @ torch.randn(64, 64)\n"


def cnr_mode(mode: str) -> str:
    """The CNR mode oneMKL reports for a GEMM in a child set up like the benchmark's."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | {"MKL_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    return sorted({w for line in out.splitlines() if "GEMM" in line for w in line.split() if w.startswith("CNR:")})[-1]


def run(mode: str, args: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, *args], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+)\s+\d+ ms/step\s+([\d.]+) samples/s", out, re.M)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    modes = {m: cnr_mode(m) for m in ("off", "on")}
    print(f"oneMKL modes: off -> {modes['off']}, on -> {modes['on']}")
    if modes["off"] == modes["on"]:
        raise SystemExit("could not run one child with CNR off and one with it on")
    args = ["--steps", str(a.steps), "--size", str(a.size)]
    got: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    for r in range(a.rounds):
        for mode in ("off", "on"):
            for name, sps in run(mode, args).items():
                got[mode].setdefault(name, []).append(sps)
            print(f"round {r + 1} {mode}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in got[mode].items()), flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"{'method':14s} {'CNR off':>10s} {'CNR on':>10s} {'on/off':>7s}  (samples/s, median of {a.rounds})")
    for name in got["off"]:
        off, on = statistics.median(got["off"][name]), statistics.median(got["on"][name])
        print(f"{name:14s} {off:10.1f} {on:10.1f} {on / off:7.3f}")


if __name__ == "__main__":
    main()
