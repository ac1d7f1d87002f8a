"""Training checkpoints: resumable training state, written and read by ``medref train``.

- ``runs/<regime>/last.pt``: one plain dict (nanoGPT style): ``modules`` (student + EMA teacher), ``optimizer``,
  ``step``, RNG states, epoch accumulators and metric history, and a ``fingerprint`` of everything that
  changes the result. Written atomically; a run resumes from it by default, and only when the fingerprint
  matches (a stale checkpoint from other params is ignored, never silently continued).

The exported network (``models/<regime>/model.pt``) is read by :mod:`pipeline_src.inference.predictor`.

    from pipeline_src.train import checkpoint; state = checkpoint.load_checkpoint(Path("runs/qata_10pct"), fp)
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pipeline_src.utils.io import atomic_file

CHECKPOINT = "last.pt"


def save_torch(obj, path: Path) -> None:
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_checkpoint(run_dir: Path, fingerprint: str) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds RNG states (numpy)
    if ckpt.get("fingerprint") != fingerprint:
        print(f"[train] {path}: checkpoint is from other params/inputs; starting from scratch")
        return None
    return ckpt
