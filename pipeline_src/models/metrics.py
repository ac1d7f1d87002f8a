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


def class_dice_from_counts(inter, pred_voxels, gt_voxels) -> np.ndarray:
    """Per-class Dice of a multi-class prediction from its counts; a class absent from both prediction and truth is
    NaN (excluded from means: the Synapse convention), one absent side scores 0. Used by the 3-D case metrics of
    ``pipeline_src/evaluate/multiclass.py`` and by the multi-class training validation curve."""
    inter, p, g = (np.asarray(a, dtype=np.float64) for a in (inter, pred_voxels, gt_voxels))
    den = p + g
    return np.where(den > 0, 2.0 * inter / np.maximum(den, 1), np.nan)
