"""Per-case 3-D multi-class metrics (pipeline_src/evaluate/multiclass.py) on hand-made volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline_src.errors import MedrefError
from pipeline_src.evaluate.multiclass import VolumeAccumulator, case_metrics, evaluate_cases, format_table, summarize

LABELS = {"background": 0, "a": 1, "b": 2, "c": 3, "d": 4}
SPACING = (2.5, 0.7, 0.9)  # (slice, row, column) mm: strongly anisotropic, every axis different


def _cube(shape, z0, y0, x0, n=3, cls=1, out=None):
    v = np.zeros(shape, np.uint8) if out is None else out
    v[z0 : z0 + n, y0 : y0 + n, x0 : x0 + n] = cls
    return v


def test_hd95_anisotropic_spacing_matches_hand_computation():
    # A 3x3x3 cube and the same cube 5 slices further along z. From each surface voxel of one cube the nearest
    # surface voxel of the other is straight along z: distances 3, 4, 5 slices for its 9 / 8 (the centre voxel
    # is not surface) / 9 voxels; the 95th percentile of those 26 values is 5 slices = 5 * 2.5 mm.
    gt = _cube((12, 8, 8), 0, 2, 2)
    pred = _cube((12, 8, 8), 5, 2, 2)
    m = case_metrics(pred, gt, SPACING, n_classes=2)
    d = np.array([3] * 9 + [4] * 8 + [5] * 9) * SPACING[0]
    assert m["hd95"][0] == pytest.approx(np.percentile(d, 95)) == pytest.approx(12.5)
    assert m["dice"][0] == 0.0
    # the spacing must be applied per axis: the same shift along the column axis costs 5 * 0.9 mm
    pred_x = _cube((12, 8, 12), 0, 2, 7)
    gt_x = _cube((12, 8, 12), 0, 2, 2)
    assert case_metrics(pred_x, gt_x, SPACING, 2)["hd95"][0] == pytest.approx(5 * SPACING[2])


def test_hd95_single_voxels_oblique():
    gt = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros_like(gt)
    gt[1, 1, 1] = 1
    pred[3, 4, 2] = 1
    want = math.sqrt((2 * SPACING[0]) ** 2 + (3 * SPACING[1]) ** 2 + (1 * SPACING[2]) ** 2)
    assert case_metrics(pred, gt, SPACING, 2)["hd95"][0] == pytest.approx(want, rel=1e-5)


def test_dice_and_absent_class_rules():
    shape = (6, 8, 8)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    gt[0:2, 0:2, 0:2] = 1  # class 1: 8 voxels
    pred[0:2, 0:2, 1:3] = 1  # 8 voxels, 4 shared -> Dice 0.5
    pred[4:6, 4:6, 4:6] = 3  # class 3: predicted, absent from GT (false positive)
    gt[4:6, 0:2, 4:6] = 4  # class 4: in GT, missed
    # class 2: absent from both
    m = case_metrics(pred, gt, SPACING, 5)
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, SPACING, strict=True)))
    assert m["dice"][0] == pytest.approx(0.5)
    assert np.isnan(m["dice"][1]) and np.isnan(m["hd95"][1])  # absent from both: undefined, excluded
    assert m["dice"][2] == 0.0 and m["hd95"][2] == pytest.approx(diag)  # hallucinated organ: worst distance
    assert m["dice"][3] == 0.0 and m["hd95"][3] == pytest.approx(diag)  # missed organ: worst distance
    assert np.isfinite(m["hd95"][0]) and 0 < m["hd95"][0] < diag
    assert list(m["gt_voxels"]) == [8, 0, 0, 8] and list(m["pred_voxels"]) == [8, 0, 8, 0]


def test_summary_means_exclude_undefined_and_count_cases():
    shape = (4, 6, 6)
    gt1 = _cube(shape, 0, 0, 0, n=2, cls=1)
    _cube(shape, 2, 3, 3, n=2, cls=2, out=gt1)
    gt2 = _cube(shape, 0, 0, 0, n=2, cls=1)  # class 2 absent from case 2 (e.g. no gallbladder)
    preds = {"c1": gt1.copy(), "c2": gt2.copy()}
    preds["c2"][0, 0, 0] = 0  # Dice of class 1 in c2 = 2*7/(8+7)
    rows = evaluate_cases(preds, {"c1": gt1, "c2": gt2}, {"c1": SPACING, "c2": SPACING}, {"bg": 0, "x": 1, "y": 2})
    s = summarize(rows)
    by = {c["class_name"]: c for c in s["per_class"]}
    assert by["x"]["dice"] == pytest.approx((1.0 + 14 / 15) / 2)
    assert by["x"]["n_cases"] == 2
    # class y defined only in c1 (perfect); c2's NaN must not drag the mean down to 0.5
    assert by["y"]["dice"] == pytest.approx(1.0) and by["y"]["n_cases"] == 1 and by["y"]["n_absent"] == 1
    assert by["y"]["hd95"] == pytest.approx(0.0)
    assert s["mean_dice"] == pytest.approx((by["x"]["dice"] + 1.0) / 2)  # mean of class means
    assert {c["case_id"]: c["dice"] for c in s["per_case"]}["c2"] == pytest.approx(14 / 15)
    table = format_table(s)
    assert "| y |" in table and "**mean**" in table


def test_accumulator_restacks_shuffled_slices_by_case():
    rng = np.random.default_rng(0)
    shape = (5, 8, 8)
    gt = {"a": rng.integers(0, 3, shape).astype(np.uint8), "b": rng.integers(0, 3, (3, 8, 8)).astype(np.uint8)}
    pred = {k: v.copy() for k, v in gt.items()}
    pred["a"][2] = 0  # damage one slice of a so order matters for which voxels mismatch
    spacing = {"a": (3.0, 1.0, 1.0), "b": (2.0, 0.5, 0.5)}
    flat = [(c, k) for c in gt for k in range(len(gt[c]))]
    order = rng.permutation(len(flat))
    acc = VolumeAccumulator(["bg", "p", "q"])
    for chunk in np.array_split(order, 3):  # batches in a shuffled order, as a DataLoader might give them
        cs = [flat[i][0] for i in chunk]
        ks = [flat[i][1] for i in chunk]
        acc.add(
            cs,
            ks,
            np.stack([pred[c][k] for c, k in zip(cs, ks, strict=True)]),
            np.stack([gt[c][k] for c, k in zip(cs, ks, strict=True)]),
            [spacing[c] for c in cs],
        )
    out = acc.compute()
    want = summarize(evaluate_cases(pred, gt, spacing, ["bg", "p", "q"]))
    assert out["per_class"] == want["per_class"]
    assert out["per_case"][1]["dice"] == pytest.approx(1.0)  # case b untouched
    assert out["per_case"][0]["dice"] < 1.0
    json.dumps(out, allow_nan=False)  # report-ready: NaN became None


def test_accumulator_rejects_missing_slice():
    acc = VolumeAccumulator(["bg", "p"])
    z = np.zeros((2, 4, 4), np.uint8)
    acc.add(["a", "a"], [0, 2], z, z, [(1, 1, 1)] * 2)
    with pytest.raises(MedrefError, match="case a"):
        acc.compute()


def test_bad_inputs_are_errors():
    with pytest.raises(MedrefError, match="same 3-D shape"):
        case_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)), SPACING, 2)
    with pytest.raises(MedrefError, match="outside"):
        case_metrics(np.full((2, 3, 3), 5), np.zeros((2, 3, 3)), SPACING, 2)
