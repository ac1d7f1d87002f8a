"""CPU train-step throughput (samples/s) of each method at the demo config.

    .venv/bin/python bench/bench_train.py [--steps 6] [--methods supervised,semi_medref] [--size 128]

Times ``method.loss`` + backward + AdamW step + teacher update on random 128^2 batches with report-like texts,
after burn-in (the unsupervised branch is on), so teacher-student numbers include the teacher forward.
samples/s counts labelled + unlabelled images per step.

    .venv/bin/python bench/bench_train.py --variants            # issue 25: CPU speed-ups, one process per variant

``--variants``: one child process per (variant, ``base.cpu_numerics`` mode) - fp32 as today, channels_last (model and
images), bf16 autocast on CPU, ``torch.compile`` - each timing supervised and semi_medref at 128^2 and 224^2
(``--sizes``), with its peak RSS and the training Dice on its fixed labelled batch after the run, and a table of
each variant's ratio to fp32 in the same mode. A child that fails (``torch.compile`` needs a C++ compiler) or
passes ``--child-timeout`` is reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline_src.models import build_model
from pipeline_src.models.text import build_tokenizer
from pipeline_src.params import load
from pipeline_src.train.methods import METHODS
from pipeline_src.train.train import Schedules, param_groups

TEXTS = ["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
         "Unilateral pulmonary infection, one infected area, middle left lung."]


def fake_batch(n: int, size: int, gen: torch.Generator) -> dict:
    from pipeline_src.labels.text_parser import parse

    texts = [TEXTS[i % 2] for i in range(n)]
    parsed = [parse(t) for t in texts]
    return {"images": torch.rand(n, 1, size, size, generator=gen),
            "masks": (torch.rand(n, 1, size, size, generator=gen) > 0.9).float(), "texts": texts,
            "spans": [p.spans for p in parsed], "regions": torch.tensor([p.regions for p in parsed]),
            "known": torch.ones(n, dtype=torch.bool)}


VARIANTS = ("fp32", "channels_last", "bf16", "compile")


def measure(cfg, name: str, size: int, steps: int, warmup: int, variant: str = "fp32") -> dict:
    """One method at one size: median step seconds after the warm-up, samples/s, the final training Dice."""
    M = METHODS[name]
    torch.manual_seed(0)
    n = warmup + steps
    sched = Schedules(lr=np.full(n, cfg.lr), momentum=np.full(n, 0.99), unsup=np.full(n, cfg.ssl.unsup_weight))
    mcfg = cfg.model if M.arch is None else cfg.model.model_copy(update={"arch": M.arch})
    model = build_model(mcfg)
    tok = build_tokenizer(mcfg.context_length)
    method = M(cfg.model_copy(update={"model": mcfg}), model, sched, tok)
    fmt = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    if variant == "channels_last":
        method.modules.to(memory_format=torch.channels_last)
    if variant == "compile":
        method.student.image.compile()  # in place (nn.Module.compile): the conv encoder, most of the step; state_dict keys unchanged for the EMA
    opt = torch.optim.AdamW(param_groups(method.student, cfg.weight_decay), lr=cfg.lr)
    method.train()
    g = torch.Generator().manual_seed(0)
    lab = fake_batch(cfg.batch_size, size, g)
    unl = fake_batch(cfg.unlabelled_batch_size, size, g) if M.needs_unlabelled else None
    for b in (lab, unl):
        if b is not None:
            b["images"] = b["images"].contiguous(memory_format=fmt)
    per_step = cfg.batch_size + (cfg.unlabelled_batch_size if unl is not None else 0)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext()
    times = []
    for step in range(n):
        t = time.perf_counter()
        with amp:
            loss, _ = method.loss(step, lab, unl, torch.Generator().manual_seed(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(step)
        if step >= warmup:
            times.append(time.perf_counter() - t)
    method.student.eval()
    with torch.no_grad():
        tokens = tok(lab["texts"]) if getattr(method.student, "uses_text", False) else None
        logits = method.student(lab["images"], tokens)["logits"].float()
    pred, gt = (logits > 0).float(), lab["masks"]
    dice = float((2 * (pred * gt).sum() / (pred.sum() + gt.sum()).clamp_min(1)).item())
    s = float(np.median(times))
    return {"ms_per_step": round(s * 1000, 1), "samples_per_s": round(per_step / s, 2), "dice": round(dice, 5),
            "images_per_step": per_step, "final_loss": float(loss.detach())}


def child(a) -> None:
    cfg = load(a.params).train
    torch.set_num_threads(load(a.params).base.cpu_threads)
    out = {}
    for size in a.sizes:
        for name in a.methods.split(","):
            out[f"{name}@{size}"] = measure(cfg, name, size, a.steps, a.warmup, a.child)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT=" + json.dumps(out))


def variants(a) -> None:
    load0 = os.getloadavg()
    res: dict = {}
    chosen = [v for v in VARIANTS if v == "fp32" or v in a.only.split(",")]
    for mode in ("portable", "native"):
        for v in chosen:
            cmd = [sys.executable, __file__, "--child", v, "--steps", str(a.steps), "--warmup", str(a.warmup),
                   "--methods", a.methods, "--params", a.params, "--sizes", *map(str, a.sizes)]
            t = time.perf_counter()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.child_timeout,
                                   env={**os.environ, "MEDREF_CPU_NUMERICS": mode, "MEDREF_PROGRESS": "0"})
                line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT=")]
                got = json.loads(line[-1][7:]) if r.returncode == 0 and line else {
                    "error": " ".join(r.stderr.strip().splitlines()[-1:])[:300]}
            except subprocess.TimeoutExpired:
                got = {"error": f"timed out after {a.child_timeout} s"}
            got["wall_s"] = round(time.perf_counter() - t, 1)
            res[f"{mode}/{v}"] = got
            print(f"{mode:8s} {v:14s} {json.dumps(got)}", flush=True)
    load1 = os.getloadavg()
    print(f"\nload {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs; samples/s (ratio to fp32 in its mode)")
    keys = [f"{m}@{s}" for s in a.sizes for m in a.methods.split(",")]
    print(f"| mode | variant | {' | '.join(keys)} | peak RSS MiB | Dice change vs fp32 (max) |")
    print("|---|---|" + "---|" * (len(keys) + 2))
    for mode in ("portable", "native"):
        base = res[f"{mode}/fp32"]
        for v in chosen:
            r = res[f"{mode}/{v}"]
            if "error" in r:
                print(f"| {mode} | {v} | {r['error']} |")
                continue
            cells = [f"{r[k]['samples_per_s']:.1f} ({r[k]['samples_per_s'] / base[k]['samples_per_s']:.2f}x)"
                     if "error" not in base else f"{r[k]['samples_per_s']:.1f}" for k in keys]
            dd = max(abs(r[k]["dice"] - base[k]["dice"]) for k in keys) if "error" not in base else float("nan")
            print(f"| {mode} | {v} | {' | '.join(cells)} | {r['peak_rss_mib']:.0f} | {dd:.4f} |")
    out = {"load_before": load0, "load_after": load1, "steps": a.steps, "warmup": a.warmup, "results": res}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", default="supervised,semi_medref")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variants", action="store_true", help="one child process per variant and numerics mode")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--child-timeout", type=int, default=120)
    ap.add_argument("--only", default=",".join(VARIANTS), help="with --variants: these variants (fp32, the ratios' "
                    "base, always runs), comma-separated")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_train_variants.json"))
    a = ap.parse_args()
    if a.child:
        return child(a)
    if a.variants:
        return variants(a)
    cfg = load(a.params).train
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.size}^2, encoder {cfg.model.image_encoder}")
    for name in a.methods.split(","):
        r = measure(cfg, name, a.size, a.steps, a.warmup)
        print(f"{name:14s} {r['ms_per_step']:7.0f} ms/step  {r['samples_per_s']:6.1f} samples/s  "
              f"({r['images_per_step']} images/step)")


if __name__ == "__main__":
    main()
