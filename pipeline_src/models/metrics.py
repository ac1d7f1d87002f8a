"""The one count -> Dice/IoU rule, below training so that validation and evaluation score alike.

    from pipeline_src.models.metrics import dice_iou_from_counts; dice, iou = dice_iou_from_counts(tp, fp, fn)

Used by ``pipeline_src/evaluate/metrics.py`` (per-image and global Dice) and by the training validation curve
(``pipeline_src/train/train.py`` ``validate``), so the curve shows the number ``medref eval`` reports for the
same predictions. Both-empty (tp + fp + fn == 0) is a perfect 1: the empty-mask table in evaluate/metrics.py.
"""

from __future__ import annotations

import numpy as np


def dice_iou_from_counts(tp, fp, fn) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU from pixel counts (arrays or scalars); both-empty (tp+fp+fn == 0) is a perfect 1."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    empty = denom == 0
    dice = np.where(empty, 1.0, 2 * tp / np.where(empty, 1, denom))
    iou = np.where(empty, 1.0, tp / np.where(empty, 1, tp + fp + fn))
    return dice, iou
