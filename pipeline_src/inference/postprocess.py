"""Probabilities -> binary mask: the one rule ``medref eval`` scores and ``medref predict`` writes.

    python -c "from pipeline_src.inference.postprocess import postprocess; help(postprocess)"

It lives in the inference phase because both consumers of a model apply it; ``pipeline_src.evaluate.metrics``
re-exports it, so eval's masks and predict's are the same bits for the same probabilities.
"""

from __future__ import annotations

import numpy as np


def postprocess(prob: np.ndarray, threshold: float, min_component_size: int = 0) -> np.ndarray:
    """Threshold probabilities and drop 8-connected components smaller than ``min_component_size`` pixels.

    ``prob`` is [N,H,W] or [N,1,H,W] (as the predictor returns it) or one [H,W] map; returns uint8 [N,H,W]."""
    x = np.asarray(prob)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected probabilities [N,H,W] or [N,1,H,W], got shape {x.shape}")
    m = x > threshold
    if min_component_size > 0:
        from scipy import ndimage

        structure = np.ones((3, 3), dtype=bool)
        for i in range(len(m)):
            lab, k = ndimage.label(m[i], structure=structure)
            if k:
                sizes = np.bincount(lab.ravel())
                small = sizes < min_component_size
                small[0] = False
                m[i][small[lab]] = False
    return m.astype(np.uint8)
