"""Are the official Med-DisSeg InfoNCE-L2 and hinge losses alive on real stride-16 features? (docs/FIDELITY.md)

The official code (xiaoquan-1/Med-DisSeg, network/dispersive_loss_implementation.py) uses the un-squared L2 distance
of the raw flattened layer3 map and log(mean exp(-D / tau) + 1e-8). On a large map D is in the hundreds, exp(-D/tau)
underflows and the loss is the constant log(1e-8) with a gradient of exactly 0. This measures it on REAL QaTa
images through the meddisseg architecture's encoder (random init, as every offline run starts; and after the
encoder has been scaled by training, which only makes D larger), for both distances, in float32.

    .venv/bin/python bench/bench_dispersive_scale.py [--data ../shared/data/qata_sample] [--size 128] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_src.models import build_model  # noqa: E402
from pipeline_src.models.dispersive import dispersive_loss  # noqa: E402
from pipeline_src.train.params import TrainParams  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/qata_sample"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    files = sorted((Path(a.data) / "train" / "images").glob("*.png"))[: a.batch]
    if len(files) < 2:
        print(f"bench_dispersive_scale: no images under {a.data}/train/images; skipped")
        return 0
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L").resize((a.size, a.size)), np.float32) / 255
                                   for f in files]))[:, None]
    torch.manual_seed(0)
    cfg = TrainParams.model_validate({"model": {"arch": "meddisseg"}}).model
    model = build_model(cfg).train()
    z = model(x, None)["feats"][-2]  # stride 16 (layer3), the official hook point
    rows = []
    for variant in ("infonce_l2", "hinge", "infonce_cos", "covariance"):
        for distance in (("official", "disploss") if variant in ("infonce_l2", "hinge") else ("official",)):
            zz = z.detach().clone().requires_grad_(True)
            loss = dispersive_loss(zz, variant, tau=0.5, eps=1.0, distance=distance)
            (g,) = torch.autograd.grad(loss, zz)
            rows.append({"variant": variant, "distance": distance, "loss": float(loss.detach()),
                         "grad_abs_max": float(g.abs().max()), "grad_norm": float(g.norm())})
    flat = z.detach().reshape(len(z), -1)
    d = torch.cdist(flat, flat)
    off = d[~torch.eye(len(z), dtype=torch.bool)]
    print(f"real QaTa, {len(files)} images at {a.size}^2, meddisseg encoder stage -2 {tuple(z.shape[1:])} "
          f"(d = {flat.shape[1]}): pair L2 distance min {float(off.min()):.1f} median {float(off.median()):.1f}")
    print("| variant | distance | loss | max abs grad | grad norm |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['distance']} | {r['loss']:.4g} | {r['grad_abs_max']:.3g} | {r['grad_norm']:.3g} |")
    print(json.dumps({"pair_distance_median": float(off.median()), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
