"""Metric code against hand-computed cases and independent computations (MONAI DiceMetric, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline_src.evaluate import metrics as M


def _square(h=32, w=32, y=8, x=8, s=8):
    m = np.zeros((h, w), np.uint8)
    m[y : y + s, x : x + s] = 1
    return m


def test_hand_dice_iou_and_global_differs_from_per_image():
    # image 1: 8x8 square vs same square shifted by 4 cols -> overlap 32 px of 64
    # image 2: tiny 2x2 lesion, prediction misses it entirely
    g1, p1 = _square(), _square(x=12)
    g2 = np.zeros((32, 32), np.uint8)
    g2[0:2, 0:2] = 1
    p2 = np.zeros_like(g2)
    rows = M.per_sample(np.stack([p1, p2]), np.stack([g1, g2]))
    assert rows["dice"][0] == pytest.approx(2 * 32 / 128)
    assert rows["iou"][0] == pytest.approx(32 / 96)
    assert rows["dice"][1] == 0.0 and rows["iou"][1] == 0.0
    s = M.summarize(rows)
    assert s["dice"] == pytest.approx((0.5 + 0.0) / 2)
    assert s["dice_std"] == pytest.approx(0.25)
    # global: TP=32, FP=32, FN=32+4 -> 64/(64+32+36)
    assert s["dice_global"] == pytest.approx(64 / 132)
    assert s["iou_global"] == pytest.approx(32 / 100)
    assert rows["sensitivity"][0] == pytest.approx(0.5)
    assert rows["specificity"][0] == pytest.approx((1024 - 96) / (1024 - 64))


def test_hand_distances_shifted_square():
    # a square shifted by 3 px: every edge distance is 0 or 3 (euclidean), HD95 = 3
    g, p = _square(), _square(x=11)
    rows = M.per_sample(p[None], g[None])
    assert rows["hd95"][0] == pytest.approx(3.0)
    assert 0 < rows["assd"][0] < 3.0
    # with tolerance >= shift every boundary point is within tolerance
    assert M.per_sample(p[None], g[None], nsd_tolerance=3.0)["nsd"][0] == pytest.approx(1.0)
    assert M.per_sample(p[None], g[None], nsd_tolerance=0.5)["nsd"][0] < 1.0
    same = M.per_sample(g[None], g[None])
    assert same["hd95"][0] == 0 and same["assd"][0] == 0 and same["nsd"][0] == 1 and same["dice"][0] == 1


def test_empty_mask_rules():
    z = np.zeros((20, 30), np.uint8)
    m = _square(20, 30, 5, 5, 4)
    rows = M.per_sample(np.stack([z, m, z]), np.stack([z, z, m]))
    diag = math.hypot(20, 30)
    # both empty: perfect
    assert rows["dice"][0] == 1 and rows["iou"][0] == 1
    assert rows["hd95"][0] == 0 and rows["assd"][0] == 0 and rows["nsd"][0] == 1
    assert math.isnan(rows["sensitivity"][0]) and rows["specificity"][0] == 1
    # only GT empty (false positive) and only prediction empty (miss): worst case
    for i in (1, 2):
        assert rows["dice"][i] == 0 and rows["iou"][i] == 0 and rows["nsd"][i] == 0
        assert rows["hd95"][i] == pytest.approx(diag) and rows["assd"][i] == pytest.approx(diag)
    assert math.isnan(rows["sensitivity"][1]) and rows["sensitivity"][2] == 0
    s = M.summarize(rows)
    assert s["n_empty_gt"] == 2 and s["n_empty_pred"] == 2 and s["n_one_empty"] == 2
    assert s["n_sensitivity_defined"] == 1 and s["sensitivity"] == 0.0
    assert s["dice"] == pytest.approx(1 / 3)
    # all-empty batch: global Dice follows the same both-empty rule
    assert M.summarize(M.per_sample(np.stack([z, z]), np.stack([z, z])))["dice_global"] == 1.0


def _random_masks(rng, n=12, h=40, w=36):
    # blobby masks (smoothed noise) so surfaces are non-trivial; some empty
    noise = rng.random((n, h, w))
    sm = np.stack([ndimage.gaussian_filter(x, 2.0) for x in noise])
    thr = rng.uniform(0.48, 0.56, size=(n, 1, 1))
    return (sm > thr).astype(np.uint8)


def test_per_image_dice_matches_monai_dicemetric():
    from monai.metrics import DiceMetric, MeanIoU

    rng = np.random.default_rng(0)
    p, g = _random_masks(rng), _random_masks(rng)
    g[0] = 0  # an empty GT with a non-empty prediction: MONAI (ignore_empty=False) says 0, as we do
    ours = M.per_sample(p, g, distances=False)
    tp_, tg_ = torch.from_numpy(p[:, None]).float(), torch.from_numpy(g[:, None]).float()
    ref = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(tp_, tg_).numpy()[:, 0]
    np.testing.assert_allclose(ours["dice"], ref, atol=1e-6)
    ref_iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(tp_, tg_).numpy()[:, 0]
    np.testing.assert_allclose(ours["iou"], ref_iou, atol=1e-6)


def _edges(m):
    return m ^ ndimage.binary_erosion(m)


def _independent_surface(p, g, tol):
    """HD95 / symmetric ASSD / NSD from scipy distance transforms, written without MONAI."""
    ep, eg = _edges(p.astype(bool)), _edges(g.astype(bool))
    d_pg = ndimage.distance_transform_edt(~eg)[ep]
    d_gp = ndimage.distance_transform_edt(~ep)[eg]
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    assd = (d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size)
    nsd = ((d_pg <= tol).sum() + (d_gp <= tol).sum()) / (d_pg.size + d_gp.size)
    return hd95, assd, nsd


def test_surface_metrics_match_independent_scipy():
    rng = np.random.default_rng(1)
    p, g = _random_masks(rng), _random_masks(rng)
    rows = M.per_sample(p, g, nsd_tolerance=2.0)
    checked = 0
    for i in range(len(p)):
        if not (p[i].any() and g[i].any()):
            continue
        hd95, assd, nsd = _independent_surface(p[i], g[i], 2.0)
        assert rows["hd95"][i] == pytest.approx(hd95, rel=1e-5)
        assert rows["assd"][i] == pytest.approx(assd, rel=1e-5)
        assert rows["nsd"][i] == pytest.approx(nsd, rel=1e-5)
        checked += 1
    assert checked >= 5


def test_per_region_breakdown():
    rows = {"dice": np.array([1.0, 0.5, 0.0, 0.2]), "iou": np.array([1.0, 0.3, 0.0, 0.1])}
    regions = np.array([[1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0], [-1] * 6])
    pr = M.per_region(rows, regions)
    assert pr["left-upper"] == {"n": 2, "dice": pytest.approx(0.75), "iou": pytest.approx(0.65)}
    assert pr["right-upper"]["dice"] == pytest.approx(0.25)
    assert pr["left-middle"] == {"n": 0, "dice": None, "iou": None}
    assert pr["unknown"]["n"] == 1 and pr["unknown"]["dice"] == pytest.approx(0.2)


def test_postprocess_threshold_and_min_component():
    prob = np.zeros((1, 1, 20, 20), np.float32)
    prob[0, 0, 2:10, 2:10] = 0.9  # 64 px kept
    prob[0, 0, 15:17, 15:17] = 0.8  # 4 px speck removed
    prob[0, 0, 12, 2] = 0.4  # below threshold
    out = M.postprocess(prob, 0.5, min_component_size=10)
    assert out.shape == (1, 20, 20) and out.sum() == 64
    assert M.postprocess(prob, 0.5).sum() == 68
    assert M.postprocess(prob, 0.3).sum() == 69
