"""Extra time per training step of each Med-DisSeg component (CPU by default).

    .venv/bin/python bench/bench_meddisseg.py [--batch 8] [--size 128] [--encoder resnet18] [--steps 10]

One training step = forward, BCE (+ lambda * dispersive loss on feats[2], ResNet layer3), backward, AdamW step.
Rows: plain U-Net decoder, +SSA, +AMC, +SSA+AMC, each +dispersive. Reported: median ms/step over ``--steps``
timed steps after 2 warm-up steps (the first steps pay for allocator growth and oneDNN kernel selection), and
the difference to the plain row. Configs are interleaved round-robin so slow drift of a shared machine hits
every row alike. On a shared CPU, wall time also counts the time other processes held the cores, so the
process CPU time per step (``time.process_time``) is reported too; with ``--threads 1`` it is the cleanest
measure of the work a component adds (more threads add OpenMP spin-wait to it). A second table times the
dispersive loss alone (forward + backward) per variant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pipeline_src.models.dispersive import VARIANTS, dispersive_loss
from pipeline_src.models.meddisseg import MedDisSeg

ROWS = [  # name, ssa, amc, dispersive
    ("plain", False, False, False),
    ("+SSA", True, False, False),
    ("+AMC", False, True, False),
    ("+SSA+AMC", True, True, False),
    ("plain+disp", False, False, True),
    ("+SSA+AMC+disp", True, True, True),
]


def _step(model, opt, x, y, disp: bool) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = model(x)
    loss = F.binary_cross_entropy_with_logits(out["logits"], y)
    if disp:
        loss = loss + 0.25 * dispersive_loss(out["feats"][2], "infonce_l2")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size, device=dev)
    y = (torch.rand_like(x) > 0.7).float()

    setups = {}
    for name, ssa, amc, disp in ROWS:
        m = MedDisSeg(image_encoder=args.encoder, ssa=ssa, amc=amc).to(dev).train()
        setups[name] = (m, torch.optim.AdamW(m.parameters(), lr=1e-4), disp)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in setups}
    for i in range(args.steps + 2):
        for name, (m, opt, disp) in setups.items():
            sync()
            dt = _step(m, opt, x, y, disp)
            sync()
            if i >= 2:
                times[name].append(dt)

    print(
        f"# MedDisSeg step time: {args.encoder}, batch {args.batch}, {args.size}^2, device {dev}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, median of {args.steps}\n"
    )
    print("| config | params (M) | wall ms/step | extra wall (ms) | CPU ms/step | extra CPU (ms) | extra CPU (%) |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def med(name: str, k: int) -> float:
        return statistics.median(t[k] for t in times[name]) * 1e3

    wb, cb = med("plain", 0), med("plain", 1)
    for name, (m, _, _) in setups.items():
        n = sum(p.numel() for p in m.parameters()) / 1e6
        w, c = med(name, 0), med(name, 1)
        print(f"| {name} | {n:.2f} | {w:.0f} | {w - wb:+.0f} | {c:.0f} | {c - cb:+.0f} | {100 * (c - cb) / cb:+.1f} |")

    # The loss alone on the stage it sees in training (layer3 map of this batch).
    with torch.no_grad():
        z0 = setups["plain"][0].features(x)[2]
    print(f"\n# dispersive loss alone, z {tuple(z0.shape)} (forward + backward), median of 50\n")
    print("| variant | ms |")
    print("|---|---:|")
    for v in VARIANTS:
        ts = []
        for _ in range(55):
            z = z0.clone().requires_grad_(True)
            sync()
            t0 = time.perf_counter()
            dispersive_loss(z, v).backward()
            sync()
            ts.append(time.perf_counter() - t0)
        print(f"| {v} | {statistics.median(ts[5:]) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
