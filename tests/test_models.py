"""Model parts: losses (Dice+BCE, confidence mask, ITCL), architectures registry, text tower, alignment score."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline_src.models import ARCHS, build_model, losses
from pipeline_src.models.alignment import alignment_score
from pipeline_src.models.params import ModelParams
from pipeline_src.models.text import build_tokenizer

SMALL = ModelParams(
    image_encoder="resnet18",
    text_width=32,
    text_layers=1,
    text_heads=2,
    context_length=16,
    embed_dim=16,
    decoder_dim=16,
    decoder_heads=2,
)


def test_dice_bce_is_low_for_right_answer_and_bce_is_not_zero_for_one_channel():
    t = torch.zeros(2, 1, 8, 8)
    t[:, :, 2:5, 2:5] = 1
    good = losses.dice_bce((t * 2 - 1) * 20, t)
    bad = losses.dice_bce((1 - 2 * t) * 20, t)
    assert good < 0.01 < 1.5 < bad
    # one-channel BCE must be a real sigmoid BCE (a softmax CE over 1 channel is identically 0)
    assert F.binary_cross_entropy_with_logits(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)) > 0.6
    assert losses.dice_bce(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)) > 0.6


def test_ignored_pixels_do_not_count():
    t = torch.zeros(1, 1, 4, 4)
    logits = torch.full((1, 1, 4, 4), -10.0)
    logits[..., 0, 0] = 10.0  # wrong at one pixel
    w = torch.ones_like(t)
    w[..., 0, 0] = 0
    assert losses.dice_bce(logits, t, w) < losses.dice_bce(logits, t)
    assert losses.dice_bce(logits, t, torch.zeros_like(t)) == 0  # nothing kept -> 0, not NaN


def test_confidence_mask_keeps_confident_both_ways():
    p = torch.tensor([0.0, 0.3, 0.45, 0.5, 0.55, 0.6, 0.99])
    assert losses.confidence_mask(p, 0.55).tolist() == [1, 1, 1, 0, 1, 1, 1]


def test_itcl_equals_infonce_when_no_regions_are_shared():
    torch.manual_seed(0)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    regions = torch.eye(6, dtype=torch.long)[:4]  # pairwise disjoint -> Jaccard = identity
    known = torch.ones(4, dtype=torch.bool)
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T / 0.07
    y = torch.arange(4)
    infonce = 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))
    assert torch.allclose(losses.itcl(img, txt, regions, known, 0.07), infonce)


def test_itcl_soft_targets_rows_sum_to_one_and_follow_jaccard():
    regions = torch.tensor(
        [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    )
    known = torch.tensor([True, True, True, True, False])
    t = losses.itcl_targets(regions, known)
    assert torch.allclose(t.sum(1), torch.ones(5))
    assert t[0, 3] == t[0, 0] and t[0, 1] == t[0, 0] / 2 and t[0, 2] == 0  # J = 1, 1/2, 0
    assert t[4].tolist() == [0, 0, 0, 0, 1]  # unknown: only itself
    same = losses.itcl_targets(torch.ones(3, 6, dtype=torch.long), torch.ones(3, dtype=torch.bool))
    assert torch.allclose(same, torch.full((3, 3), 1 / 3))  # identical vectors: all equally positive


def test_registry_and_forward_contract():
    assert {"textguided", "image_only", "meddisseg"} <= set(ARCHS)
    tok = build_tokenizer(SMALL.context_length)
    tokens = tok(["upper left lung", "lower right lung"])
    assert tokens.shape == (2, 16)
    for arch in ("textguided", "image_only"):
        torch.manual_seed(0)
        net = build_model(SMALL.model_copy(update={"arch": arch})).eval()
        out = net(torch.rand(2, 1, 64, 64), tokens if net.uses_text else None)
        assert out["logits"].shape == (2, 1, 64, 64)
        assert out["img_emb"].shape == (2, 16)
        assert (out["txt_emb"] is None) == (arch == "image_only")
        assert len(out["feats"]) == 4


def test_text_changes_the_textguided_prediction():
    torch.manual_seed(0)
    net = build_model(SMALL).eval()
    tok = build_tokenizer(SMALL.context_length)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = net(x, tok(["upper left lung"]))["logits"]
        b = net(x, tok(["lower right lung"]))["logits"]
    assert not torch.allclose(a, b)


def test_alignment_score_perfect_and_region_readout():
    emb = F.normalize(torch.eye(3, 8), dim=-1).numpy()
    texts = ["a", "b", "c"]
    regions = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    s = alignment_score(emb, emb, texts, regions)
    assert s["top1"] == 1 and s["region_agreement"] == 1 and abs(s["top1_chance"] - 1 / 3) < 1e-6
    s = alignment_score(emb, emb[[1, 0, 2]], texts, regions)
    assert abs(s["top1"] - 1 / 3) < 1e-6 and abs(s["region_jaccard"] - 1 / 3) < 1e-6
    unknown = regions.copy()
    unknown[2] = -1  # a text whose regions are unknown leaves the region scores, not the retrieval score
    s = alignment_score(emb, emb, texts, unknown)
    assert s["top1"] == 1 and s["region_agreement"] == 1 and s["region_agreement_chance"] == 0.5
    assert alignment_score(emb, emb, texts, None)["region_agreement"] is None


def test_dice_loss_is_monais_dice_loss_and_the_official_dicece_on_one_channel():
    # the official trains with MONAI 1.0.1 DiceCELoss(sigmoid=False) on one channel: its CE term is a softmax over a
    # single channel (identically 0), so the loss is MONAI's soft Dice; losses.dice is that on sigmoid(logits)
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float()
    want = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    assert torch.allclose(losses.dice(logits, target), want, atol=1e-7)
    one_channel_ce = torch.nn.functional.cross_entropy(logits, target, reduction="mean")  # soft labels, C = 1
    assert float(one_channel_ce) == 0.0


def test_hard_pseudo_label_uses_every_pixel():
    p = torch.tensor([0.0, 0.3, 0.54, 0.55, 0.9]).view(1, 1, 1, 5)
    target, weight = losses.pseudo_label(p, "hard", 0.55)
    assert target.flatten().tolist() == [0, 0, 0, 1, 1] and weight is None  # official _threshold_target
    target, weight = losses.pseudo_label(p, "masked", 0.55)
    assert target.flatten().tolist() == [0, 0, 1, 1, 1] and weight.flatten().tolist() == [1, 1, 0, 1, 1]
