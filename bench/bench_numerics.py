"""What the portable CPU numerics cost: train-step throughput with ``base.cpu_numerics`` native vs portable.

    .venv/bin/python bench/bench_numerics.py [--rounds 2] [--steps 12] [--size 128]

portable caps oneDNN, ATen and oneMKL at kernels every x86-64 CPU runs (pipeline_src/numerics.py), so that CPU
weights are the same bits on any of them; native runs the CPU's widest kernels. This runs bench/bench_train.py
(supervised and semi_medref, random 128^2 batches, median over the timed steps after warm-up) in one child
process per variant, with $MEDREF_CPU_NUMERICS set, pipeline_src imported before torch as in every medref
process, and the variants alternating round by round so a change of machine load hits both. Each child first
reports what it ran: oneDNN's convolution ISA (ONEDNN_VERBOSE) and ATen's CPU capability. Prints samples/s per
method and variant and the portable/native ratio of the medians, with the load average before and after
(measure on an idle machine). The README's "CPU numerics" table comes from this.
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
VARIANTS = ("native", "portable")
# pipeline_src first (it sets the mode's variables), then the benchmark as its own __main__
CHILD = ("import sys, runpy, pipeline_src, torch\n"
         "sys.argv = ['bench_train.py'] + sys.argv[1:]\n"
         "runpy.run_path('bench/bench_train.py', run_name='__main__')\n")
PROBE = ("import pipeline_src, torch\n"
         "torch.nn.Conv2d(3, 8, 3)(torch.randn(2, 3, 32, 32)).sum().backward()\n"
         "print('aten', torch.backends.cpu.get_cpu_capability())\n")


def _env(variant: str, **extra: str) -> dict[str, str]:
    from pipeline_src import numerics  # noqa: F401  (only the names; this process trains nothing)

    drop = {*numerics.RECORDED, numerics.MARK, numerics.ENV}
    return {k: v for k, v in os.environ.items() if k not in drop} | {numerics.ENV: variant, **extra}


def kernels(variant: str) -> str:
    """'conv <oneDNN impl>, aten <capability>' as a child of this variant reports them."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=_env(variant, ONEDNN_VERBOSE="1"),
                         capture_output=True, text=True, check=True).stdout
    conv = sorted({ln.split(",")[6] for ln in out.splitlines() if ",exec,cpu,convolution," in ln})
    aten = re.search(r"^aten (\S+)", out, re.M)
    return f"conv {'/'.join(conv) or '?'}, aten {aten[1] if aten else '?'}"


def run(variant: str, args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, env=_env(variant), capture_output=True,
                         text=True, check=True).stdout
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+)\s+\d+ ms/step\s+([\d.]+) samples/s", out, re.M)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--methods", default="supervised,semi_medref")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    print(f"load average before: {os.getloadavg()}")
    for v in VARIANTS:
        print(f"{v}: {kernels(v)}", flush=True)
    args = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--size", str(a.size), "--methods", a.methods]
    got: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    for r in range(a.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate who goes first
        for v in order:
            for name, sps in run(v, args).items():
                got[v].setdefault(name, []).append(sps)
            print(f"round {r + 1} {v}: " + ", ".join(f"{k} {x[-1]:.1f}" for k, x in got[v].items()), flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"{'method':14s} {'native':>10s} {'portable':>10s} {'port/nat':>9s}  (samples/s, median of {a.rounds}, "
          f"{a.size}^2, {a.steps} steps after {a.warmup} warm-up)")
    for name in got["native"]:
        nat, por = statistics.median(got["native"][name]), statistics.median(got["portable"][name])
        print(f"{name:14s} {nat:10.1f} {por:10.1f} {por / nat:9.3f}")


if __name__ == "__main__":
    main()
