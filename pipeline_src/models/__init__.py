"""Model zoo: an explicit registry of architectures (no folder scanning).

``train.model.arch`` picks an entry of ``ARCHS``. An entry is a builder ``build(model_params) -> nn.Module``
or a lazy ``"module:function"`` string, so an architecture in its own module (Med-DisSeg's
``pipeline_src/models/meddisseg.py``) plugs in without this file importing it eagerly.
Every model follows the forward contract in ``pipeline_src/models/segmodel.py``.

To add an architecture: write ``build(cfg) -> nn.Module`` honouring that contract, add one line here,
and add the name to ``ModelParams.arch``'s allowed values in ``pipeline_src/models/params.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline_src.errors import MedrefError

if TYPE_CHECKING:  # importing the package (e.g. for models.params) must not pull in torch
    from torch import nn

ARCHS: dict[str, Callable | str] = {
    "textguided": "pipeline_src.models.segmodel:build_textguided",
    "image_only": "pipeline_src.models.segmodel:build_image_only",
    # Med-DisSeg: structure-sensitive attention encoder + adaptive multi-scale calibration decoder.
    "meddisseg": "pipeline_src.models.meddisseg:build",
}


def resolve(ref: Callable | str) -> Callable:
    if callable(ref):
        return ref
    mod, _, fn = ref.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise MedrefError(f"cannot import {ref}: {e}") from e


def build_model(cfg) -> nn.Module:
    """Build ``cfg.arch`` (a ``train.model`` params block)."""
    if cfg.arch not in ARCHS:
        raise MedrefError(f"train.model.arch: unknown architecture {cfg.arch!r}; known: {', '.join(ARCHS)}")
    return resolve(ARCHS[cfg.arch])(cfg)
