"""Checkpoints: the resumable training state, and the writer of the exported model file.

- ``runs/<regime>/last.pt``: one plain dict (nanoGPT style): ``modules`` (student + EMA teacher), ``optimizer``,
  ``step``, RNG states, epoch accumulators and metric history, and a ``fingerprint`` of everything that
  changes the result. Written atomically; a run resumes from it by default, and only when the fingerprint
  matches (a stale checkpoint from other params is ignored, never silently continued).
- ``models/<regime>/model.pt``: ``{state_dict, model_config, method, regime}`` of the exported network.
  The architecture comes from the file (``model_config``), not from the current params.
  It is read by ``pipeline_src.inference.predictor.load_predictor``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pipeline_src.utils.io import save_torch  # noqa: F401 - the checkpoint's writer, ckpt_io.save_torch in train

CHECKPOINT = "last.pt"


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
