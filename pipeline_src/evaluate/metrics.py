"""Segmentation metrics, with both Dice conventions the literature mixes up.

Papers on QaTa-COV19 / MosMedData+ report different numbers for the same thing:

* **per-image** (LViT convention): Dice and IoU are computed for each image and averaged
  (we also report the standard deviation);
* **global / micro** (GuideDecoder convention): TP/FP/FN are summed over every pixel of every
  image and Dice/IoU are computed once. Large lesions dominate, empty masks count for nothing,
  so it is typically 5-7 points higher on QaTa.

We report both side by side, plus HD95, ASSD and normalised surface Dice (NSD) through MONAI,
and per-image sensitivity / specificity.

Empty masks (defined here, once, and tested in tests/test_eval_metrics.py):

===================  =====  =====  =================  =================  =====  ===========  ===========
case                 Dice   IoU    HD95               ASSD               NSD    sensitivity  specificity
===================  =====  =====  =================  =================  =====  ===========  ===========
both empty           1      1      0                  0                  1      NaN          1
only GT empty        0      0      image diagonal     image diagonal     0      NaN          < 1
only pred empty      0      0      image diagonal     image diagonal     0      0            1
===================  =====  =====  =================  =================  =====  ===========  ===========

Distances are in pixels. When exactly one mask is empty the surface distance is undefined; we
charge the worst possible distance in the image (its diagonal) instead of dropping the sample,
because dropping it (MONAI's NaN) would *reward* a model for predicting nothing on hard images.
Sensitivity is undefined without lesion pixels (NaN; excluded from the mean, and the count of
samples it was defined for is reported); specificity likewise for an all-lesion ground truth.

How each metric is labelled, its unit, direction and number format: pipeline_src/evaluate/metric_specs.py, the one
table that study and report read (a file of its own, so that they do not depend on this one).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline_src.inference.postprocess import postprocess  # noqa: F401  (the one mask rule, shared with predict)

# Text-named lung regions ("left" is IMAGE-left), owned by the parser that produces the region vectors.
from pipeline_src.labels.text_parser import REGIONS
from pipeline_src.models.metrics import dice_iou_from_counts  # the one Dice rule, shared with training

# Per-sample columns, in CSV order (per_sample.csv).
COLUMNS = (
    "dice",
    "iou",
    "hd95",
    "assd",
    "nsd",
    "sensitivity",
    "specificity",
    "tp",
    "fp",
    "fn",
    "tn",
    "gt_pixels",
    "pred_pixels",
)


def _as_bool(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1] == 1:  # [N,1,H,W] as the predictor returns it
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected masks [N,H,W] or [N,1,H,W], got shape {x.shape}")
    return x > 0


def confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image TP, FP, FN, TN pixel counts (int64 arrays of length N)."""
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} != ground truth shape {g.shape}")
    tp = (p & g).sum(axis=(1, 2), dtype=np.int64)
    fp = (p & ~g).sum(axis=(1, 2), dtype=np.int64)
    fn = (~p & g).sum(axis=(1, 2), dtype=np.int64)
    tn = p[0].size - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num, den) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def surface_metrics(pred: np.ndarray, gt: np.ndarray, nsd_tolerance: float = 2.0) -> dict[str, np.ndarray]:
    """HD95, ASSD (symmetric) and NSD per image through MONAI, with our empty-mask rules.

    MONAI is only called on images where both masks are non-empty (it returns NaN/inf and warns
    otherwise); the empty cases are filled in from the table in the module docstring.
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    p, g = _as_bool(pred), _as_bool(gt)
    n, h, w = p.shape
    diag = math.hypot(h, w)
    p_any, g_any = p.any(axis=(1, 2)), g.any(axis=(1, 2))
    both = p_any & g_any
    hd95 = np.where(p_any | g_any, diag, 0.0)
    assd = hd95.copy()
    nsd = np.where(p_any | g_any, 0.0, 1.0)
    if both.any():
        # [B,1,H,W] single foreground channel: include_background=True keeps that channel.
        tp_ = torch.from_numpy(p[both][:, None].astype(np.float32))
        tg_ = torch.from_numpy(g[both][:, None].astype(np.float32))
        with warnings.catch_warnings():
            # MONAI 1.6 passes its own deprecated `always_return_as_numpy` internally; nothing for us to change.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            hd95[both] = compute_hausdorff_distance(tp_, tg_, include_background=True, percentile=95).numpy()[:, 0]
            assd[both] = compute_average_surface_distance(tp_, tg_, include_background=True, symmetric=True).numpy()[
                :, 0
            ]
            nsd[both] = compute_surface_dice(tp_, tg_, [float(nsd_tolerance)], include_background=True).numpy()[:, 0]
    return {"hd95": hd95, "assd": assd, "nsd": nsd}


def per_sample(
    pred: np.ndarray, gt: np.ndarray, *, nsd_tolerance: float = 2.0, distances: bool = True
) -> dict[str, np.ndarray]:
    """Every per-image metric in COLUMNS as arrays of length N (distances NaN when distances=False)."""
    tp, fp, fn, tn = confusion(pred, gt)
    dice, iou = dice_iou_from_counts(tp, fp, fn)
    out = {
        "dice": dice,
        "iou": iou,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "gt_pixels": tp + fn,
        "pred_pixels": tp + fp,
    }
    if distances:
        out.update(surface_metrics(pred, gt, nsd_tolerance))
    else:  # fast path for validation during training
        out.update({k: np.full(len(tp), np.nan) for k in ("hd95", "assd", "nsd")})
    return {k: out[k] for k in COLUMNS}


def _mean(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def _std(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.std()) if x.size else None  # population std, as LViT's np.std


def summarize(rows: dict[str, np.ndarray], regions: np.ndarray | None = None) -> dict:
    """Aggregate per-sample metrics (the output of :func:`per_sample`, possibly concatenated).

    ``regions``: int array [N,6] of the text-named regions (1 named, 0 not, -1 for a text whose
    regions are unknown); adds ``per_region``: mean Dice/IoU over the samples naming each region.
    """
    n = len(rows["dice"])
    tp, fp, fn, tn = (int(np.sum(rows[k])) for k in ("tp", "fp", "fn", "tn"))
    dice_g, iou_g = dice_iou_from_counts(tp, fp, fn)
    gt_empty = np.asarray(rows["gt_pixels"]) == 0
    pred_empty = np.asarray(rows["pred_pixels"]) == 0
    out = {
        "n": n,
        "dice": _mean(rows["dice"]),
        "dice_std": _std(rows["dice"]),
        "iou": _mean(rows["iou"]),
        "iou_std": _std(rows["iou"]),
        "dice_global": float(dice_g),
        "iou_global": float(iou_g),
        "hd95": _mean(rows["hd95"]),
        "hd95_std": _std(rows["hd95"]),
        "assd": _mean(rows["assd"]),
        "assd_std": _std(rows["assd"]),
        "nsd": _mean(rows["nsd"]),
        "nsd_std": _std(rows["nsd"]),
        "sensitivity": _mean(rows["sensitivity"]),
        "specificity": _mean(rows["specificity"]),
        "sensitivity_global": float(_ratio(tp, tp + fn)) if tp + fn else None,
        "specificity_global": float(_ratio(tn, tn + fp)) if tn + fp else None,
        # how often the empty-mask rules (module docstring) were applied
        "n_sensitivity_defined": int(np.sum(~np.isnan(np.asarray(rows["sensitivity"], dtype=float)))),
        "n_empty_gt": int(gt_empty.sum()),
        "n_empty_pred": int(pred_empty.sum()),
        "n_one_empty": int((gt_empty ^ pred_empty).sum()),
    }
    if regions is not None:
        out["per_region"] = per_region(rows, regions)
    return out


def per_region(rows: dict[str, np.ndarray], regions: np.ndarray) -> dict[str, dict]:
    """Mean Dice/IoU over the samples whose text names each region, plus texts with unknown regions."""
    regions = np.asarray(regions, dtype=np.int64).reshape(-1, len(REGIONS))
    if len(regions) != len(rows["dice"]):
        raise ValueError(f"{len(regions)} region rows for {len(rows['dice'])} samples")
    dice, iou = np.asarray(rows["dice"]), np.asarray(rows["iou"])
    unknown = (regions < 0).any(axis=1)
    out: dict[str, dict] = {}
    for j, name in enumerate(REGIONS):
        sel = ~unknown & (regions[:, j] == 1)
        out[name] = {"n": int(sel.sum()), "dice": _mean(dice[sel]), "iou": _mean(iou[sel])}
    out["unknown"] = {"n": int(unknown.sum()), "dice": _mean(dice[unknown]), "iou": _mean(iou[unknown])}
    return out


@dataclass
class Accumulator:
    """Collects per-sample metrics batch by batch (inference keeps only counts, not masks)."""

    nsd_tolerance: float = 2.0
    distances: bool = True

    def __post_init__(self) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._parts: list[dict[str, np.ndarray]] = []

    def update(self, pred: np.ndarray, gt: np.ndarray, ids: Sequence[str], texts: Sequence[str]) -> dict:
        rows = per_sample(pred, gt, nsd_tolerance=self.nsd_tolerance, distances=self.distances)
        self._parts.append(rows)
        self.ids.extend(ids)
        self.texts.extend(texts)
        return rows

    @property
    def rows(self) -> dict[str, np.ndarray]:
        if not self._parts:
            return {k: np.zeros(0) for k in COLUMNS}
        return {k: np.concatenate([p[k] for p in self._parts]) for k in COLUMNS}
