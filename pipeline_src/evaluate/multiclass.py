"""Multi-class (multi-organ) metrics per CASE on re-stacked 3-D volumes, as Synapse results are reported.

    from pipeline_src.evaluate.multiclass import VolumeAccumulator, summarize, format_table

Slice predictions (argmax class maps [N,H,W]) are grouped by ``case_id``, stacked in ``slice_index`` order
into [Z,H,W] volumes and compared with the ground-truth volume of the same case, using the shard row's
``spacing`` (mm per axis of the stacked array: slice, row, column). Per case and foreground class c:

* Dice = 2|P∩G| / (|P|+|G|) on the 3-D voxel sets;
* HD95 = MONAI's 95th-percentile symmetric Hausdorff distance in **mm** (``spacing`` passed through).

Absent classes (defined here, once, tested in tests/test_multiclass.py):

=========================  ======  =============================  ==========================================
case for class c           Dice    HD95                           why
=========================  ======  =============================  ==========================================
in GT and prediction       value   value (mm)
absent from both           NaN     NaN                            no organ to segment (e.g. a removed
                                                                  gallbladder): excluded from c's mean and
                                                                  from the case mean, counted in ``n_absent``
in GT, not predicted       0       volume diagonal (mm)           a missed organ
predicted, not in GT       0       volume diagonal (mm)           a hallucinated organ; counted in
                                                                  ``n_false_positive``
=========================  ======  =============================  ==========================================

The diagonal (the largest distance possible inside the volume) is charged when exactly one side is empty, as
the binary metrics do (pipeline_src/evaluate/metrics.py), because dropping the case (MONAI's NaN/inf) would
reward a model for predicting nothing. This departs on purpose from TransUNet's widely copied
``calculate_metric_percase``, which scores "predicted, not in GT" as Dice 1 / HD95 0 and "absent from both" as
Dice 0 / HD95 0: a reward for a false positive and a penalty for a correct empty prediction.

Means: a class's mean is over the cases where it is defined (not NaN); the overall ``mean_dice`` /
``mean_hd95`` is the mean of the per-class means over classes with at least one defined case (the Synapse
"average DSC" convention: every organ weighs the same, however large).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline_src.data.volumes import restack
from pipeline_src.errors import MedrefError
from pipeline_src.models.metrics import class_dice_from_counts

CASE_COLUMNS = ("case_id", "class_index", "class_name", "dice", "hd95", "gt_voxels", "pred_voxels")


def _diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], n_classes: int) -> dict[str, np.ndarray]:
    """Per foreground class (1..n_classes-1) of one case: dice, hd95 (mm), gt_voxels, pred_voxels (arrays [C-1])."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise MedrefError(
            f"case_metrics: prediction {pred.shape} and ground truth {gt.shape} must be the same 3-D shape"
        )
    if len(spacing) != 3:
        raise MedrefError(f"case_metrics: spacing must have 3 values, got {spacing}")
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise MedrefError(f"case_metrics: {name} has class values outside 0..{n_classes - 1}")
    classes = np.arange(1, n_classes)
    # bincount over the flat maps: one pass each instead of C comparisons
    g_cnt = np.bincount(gt.ravel().astype(np.int64), minlength=n_classes)[1:].astype(np.int64)
    p_cnt = np.bincount(pred.ravel().astype(np.int64), minlength=n_classes)[1:].astype(np.int64)
    inter = np.bincount(gt[gt == pred].ravel().astype(np.int64), minlength=n_classes)[1:].astype(np.int64)
    den = g_cnt + p_cnt
    dice = class_dice_from_counts(inter, p_cnt, g_cnt)
    diag = _diagonal_mm(gt.shape, spacing)
    hd95 = np.where(den > 0, diag, np.nan)  # one side empty -> diagonal; both empty -> NaN (table above)
    both = (g_cnt > 0) & (p_cnt > 0)
    if both.any():
        cs = classes[both]
        # one call for all classes present on both sides: [1, K, Z, H, W] one-hot channels; include_background
        # because channel 0 here is a real organ, not the background
        yp = torch.from_numpy(np.stack([pred == c for c in cs])[None].astype(np.float32))
        yg = torch.from_numpy(np.stack([gt == c for c in cs])[None].astype(np.float32))
        d = compute_hausdorff_distance(
            yp, yg, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        ).numpy()[0]
        hd95[both] = d
    return {"dice": dice, "hd95": hd95, "gt_voxels": g_cnt, "pred_voxels": p_cnt}


def evaluate_cases(
    preds: Mapping[str, np.ndarray],
    gts: Mapping[str, np.ndarray],
    spacings: Mapping[str, Sequence[float]],
    labels: Mapping[str, int] | Sequence[str],
) -> list[dict]:
    """Per-case, per-class rows (CASE_COLUMNS) for 3-D volumes keyed by case id; ``labels`` is dataset.json's
    {name: index} (or the class names in index order, background first)."""
    names = _names(labels)
    if set(preds) != set(gts):
        raise MedrefError(f"cases differ: predicted {sorted(set(preds) ^ set(gts))[:5]} only on one side")
    rows = []
    for case in sorted(gts):
        m = case_metrics(preds[case], gts[case], spacings[case], len(names))
        for k in range(len(names) - 1):
            rows.append(
                {
                    "case_id": case,
                    "class_index": k + 1,
                    "class_name": names[k + 1],
                    "dice": float(m["dice"][k]),
                    "hd95": float(m["hd95"][k]),
                    "gt_voxels": int(m["gt_voxels"][k]),
                    "pred_voxels": int(m["pred_voxels"][k]),
                }
            )
    return rows


def _names(labels: Mapping[str, int] | Sequence[str]) -> list[str]:
    if isinstance(labels, Mapping):
        by_idx = {int(v): str(k) for k, v in labels.items()}
        if sorted(by_idx) != list(range(len(by_idx))):
            raise MedrefError(f"labels must have indices 0..C-1, got {sorted(by_idx)}")
        return [by_idx[i] for i in range(len(by_idx))]
    return [str(x) for x in labels]


def _nanmean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def _nanstd(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.std()) if x.size else None


def summarize(case_rows: Sequence[dict]) -> dict:
    """Per-class table + overall means from :func:`evaluate_cases` rows (JSON-able: NaN -> None).

    {"per_class": [{class_index, class_name, dice, dice_std, hd95, hd95_std, n_cases, n_absent,
    n_false_positive, n_missed}], "per_case": [{case_id, dice, hd95}], "mean_dice", "mean_hd95", "n_cases"}
    """
    classes = sorted({(r["class_index"], r["class_name"]) for r in case_rows})
    per_class = []
    for idx, name in classes:
        rs = [r for r in case_rows if r["class_index"] == idx]
        dice = np.array([r["dice"] for r in rs], dtype=np.float64)
        hd = np.array([r["hd95"] for r in rs], dtype=np.float64)
        per_class.append(
            {
                "class_index": idx,
                "class_name": name,
                "dice": _nanmean(dice),
                "dice_std": _nanstd(dice),
                "hd95": _nanmean(hd),
                "hd95_std": _nanstd(hd),
                "n_cases": int((~np.isnan(dice)).sum()),
                "n_absent": sum(r["gt_voxels"] == 0 and r["pred_voxels"] == 0 for r in rs),
                "n_false_positive": sum(r["gt_voxels"] == 0 and r["pred_voxels"] > 0 for r in rs),
                "n_missed": sum(r["gt_voxels"] > 0 and r["pred_voxels"] == 0 for r in rs),
            }
        )
    per_case = []
    for case in sorted({r["case_id"] for r in case_rows}):
        rs = [r for r in case_rows if r["case_id"] == case]
        per_case.append(
            {
                "case_id": case,
                "dice": _nanmean(np.array([r["dice"] for r in rs], dtype=np.float64)),
                "hd95": _nanmean(np.array([r["hd95"] for r in rs], dtype=np.float64)),
            }
        )
    means_d = np.array([c["dice"] for c in per_class if c["dice"] is not None], dtype=np.float64)
    means_h = np.array([c["hd95"] for c in per_class if c["hd95"] is not None], dtype=np.float64)
    return {
        "per_class": per_class,
        "per_case": per_case,
        "mean_dice": _nanmean(means_d),
        "mean_hd95": _nanmean(means_h),
        "n_cases": len(per_case),
    }


def format_table(summary: dict) -> str:
    """Markdown per-class table (Synapse style: one row per organ, then the mean) for reports/report.md."""

    def f(x, scale=1.0, nd=2):
        return "n/a" if x is None else f"{x * scale:.{nd}f}"

    lines = [
        "| class | Dice (%) | HD95 (mm) | cases | absent | false positive | missed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in summary["per_class"]:
        lines.append(
            f"| {c['class_name']} | {f(c['dice'], 100)} ± {f(c['dice_std'], 100)} | {f(c['hd95'])} ± {f(c['hd95_std'])}"
            f" | {c['n_cases']} | {c['n_absent']} | {c['n_false_positive']} | {c['n_missed']} |"
        )
    lines.append(
        f"| **mean** | **{f(summary['mean_dice'], 100)}** | **{f(summary['mean_hd95'])}** | {summary['n_cases']} | | | |"
    )
    return "\n".join(lines) + "\n"


class VolumeAccumulator:
    """Collects slice predictions batch by batch (any order), then scores each case on its 3-D volume.

    ``add`` takes the shard columns of the batch (case_id, slice_index, spacing) with the argmax prediction
    and the ground-truth class maps [B,H,W]; memory is one uint8 pair per slice (a Synapse test set is ~1.5 k
    slices: ~150 MB at 224²).
    """

    def __init__(self, labels: Mapping[str, int] | Sequence[str]):
        self.names = _names(labels)
        self._case: list[str] = []
        self._k: list[int] = []
        self._pred: list[np.ndarray] = []
        self._gt: list[np.ndarray] = []
        self._spacing: dict[str, tuple[float, float, float]] = {}

    def add(self, case_ids, slice_index, pred: np.ndarray, gt: np.ndarray, spacing) -> None:
        pred, gt = np.asarray(pred, dtype=np.uint8), np.asarray(gt, dtype=np.uint8)
        if pred.shape != gt.shape or pred.ndim != 3 or len(pred) != len(case_ids) or len(case_ids) != len(slice_index):
            raise MedrefError(f"VolumeAccumulator.add: pred {pred.shape}, gt {gt.shape}, {len(case_ids)} case ids")
        for i, c in enumerate(case_ids):
            sp = tuple(float(s) for s in spacing[i])
            prev = self._spacing.setdefault(str(c), sp)
            if not np.allclose(prev, sp, rtol=1e-5):
                raise MedrefError(f"case {c}: slices disagree on spacing ({prev} vs {sp})")
            self._case.append(str(c))
            self._k.append(int(slice_index[i]))
            self._pred.append(pred[i])
            self._gt.append(gt[i])

    def volumes(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, tuple[float, float, float]]]:
        preds = restack(self._case, self._k, np.stack(self._pred) if self._pred else np.zeros((0, 0, 0), np.uint8))
        gts = restack(self._case, self._k, np.stack(self._gt) if self._gt else np.zeros((0, 0, 0), np.uint8))
        return preds, gts, dict(self._spacing)

    def case_rows(self) -> list[dict]:
        preds, gts, sp = self.volumes()
        return evaluate_cases(preds, gts, sp, self.names)

    def compute(self) -> dict:
        rows = self.case_rows()
        out = summarize(rows)
        # NaN is not JSON; the summary already uses None for "undefined", so the raw rows do too
        out["per_case_class"] = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows
        ]
        return out
