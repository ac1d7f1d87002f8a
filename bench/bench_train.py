"""CPU train-step throughput (samples/s) of each method at the demo config.

    .venv/bin/python bench/bench_train.py [--steps 6] [--methods supervised,semi_medref] [--size 128]

Times ``method.loss`` + backward + AdamW step + teacher update on random 128^2 batches with report-like texts,
after burn-in (the unsupervised branch is on), so teacher-student numbers include the teacher forward.
samples/s counts labelled + unlabelled images per step.
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", default="supervised,semi_medref")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args()
    cfg = load(a.params).train
    torch.manual_seed(0)
    n = a.warmup + a.steps
    sched = Schedules(lr=np.full(n, cfg.lr), momentum=np.full(n, 0.99), unsup=np.full(n, cfg.ssl.unsup_weight))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.size}^2, encoder {cfg.model.image_encoder}")
    for name in a.methods.split(","):
        M = METHODS[name]
        mcfg = cfg.model if M.arch is None else cfg.model.model_copy(update={"arch": M.arch})
        model = build_model(mcfg)
        tok = build_tokenizer(mcfg.context_length)
        method = M(cfg.model_copy(update={"model": mcfg}), model, sched, tok)
        opt = torch.optim.AdamW(param_groups(method.student, cfg.weight_decay), lr=cfg.lr)
        method.train()
        g = torch.Generator().manual_seed(0)
        lab = fake_batch(cfg.batch_size, a.size, g)
        unl = fake_batch(cfg.unlabelled_batch_size, a.size, g) if M.needs_unlabelled else None
        per_step = cfg.batch_size + (cfg.unlabelled_batch_size if unl is not None else 0)
        times = []
        for step in range(n):
            t = time.perf_counter()
            loss, _ = method.loss(step, lab, unl, torch.Generator().manual_seed(step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(step)
            if step >= a.warmup:
                times.append(time.perf_counter() - t)
        s = float(np.median(times))
        print(f"{name:14s} {s * 1000:7.0f} ms/step  {per_step / s:6.1f} samples/s  ({per_step} images/step)")


if __name__ == "__main__":
    main()
