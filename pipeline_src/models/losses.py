"""Losses: soft Dice (optionally + BCE) on logits, optionally pixel-weighted; multi-class Dice + CE; ITCL; the
dispersive-loss hook.

The official Semi-MedRef code trains with MONAI 1.0.1's ``DiceCELoss(sigmoid=False)`` on its one-channel
probability map. With one channel that version's cross-entropy term is a softmax over a single channel, identically
0, so the official loss is soft Dice alone (``dice`` here: MONAI ``DiceLoss`` with smooth 1e-5, per image; a test
checks the two agree). ``dice_bce`` adds a real-sigmoid BCE (MONAI >= 1.2's DiceCELoss does that for one channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline_src.models import resolve


def dice_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice (per image, then mean) + BCE, both on logits [B,1,H,W] vs target in [0,1].

    ``weight`` (same shape, {0,1}) ignores pixels: the teacher's low-confidence pixels on unlabelled
    images. An all-ignored batch gives 0 (not NaN), so early low-confidence steps are harmless.
    """
    if weight is None:
        weight = torch.ones_like(target)
    n = weight.sum()
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / n.clamp_min(1.0)
    p = torch.sigmoid(logits) * weight
    t = target * weight
    inter = (p * t).flatten(1).sum(1)
    denom = p.flatten(1).sum(1) + t.flatten(1).sum(1)
    dice = 1 - (2 * inter + smooth) / (denom + smooth)
    has = (weight.flatten(1).sum(1) > 0).float()  # images with no kept pixel do not vote
    dice = (dice * has).sum() / has.sum().clamp_min(1.0)
    return bce + dice


def dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
         smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice of sigmoid(logits) [B,1,H,W] vs target in [0,1], per image then mean (MONAI ``DiceLoss(sigmoid=
    True)``: smooth_nr = smooth_dr = 1e-5). ``weight`` ({0,1}, same shape) drops ignored pixels; images with no
    kept pixel do not vote."""
    p = torch.sigmoid(logits)
    if weight is None:
        inter = (p * target).flatten(1).sum(1)
        denom = p.flatten(1).sum(1) + target.flatten(1).sum(1)
        return (1 - (2 * inter + smooth) / (denom + smooth)).mean()
    p, t = p * weight, target * weight
    inter = (p * t).flatten(1).sum(1)
    denom = p.flatten(1).sum(1) + t.flatten(1).sum(1)
    d = 1 - (2 * inter + smooth) / (denom + smooth)
    has = (weight.flatten(1).sum(1) > 0).float()
    return (d * has).sum() / has.sum().clamp_min(1.0)


def binary(name: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``train.loss``: ``dice`` (official) or ``dice_bce``."""
    return dice(logits, target, weight) if name == "dice" else dice_bce(logits, target, weight)


def dice_ce(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Multi-class: softmax cross-entropy + soft Dice over the foreground classes (nnU-Net's DC_and_CE, batch
    Dice, background excluded). ``logits`` [B,C,H,W]; ``target`` class indices [B,H,W] or [B,1,H,W] (any dtype).

    A class absent from the batch adds a Dice term that is 0 once its predicted mass is 0 (smooth / smooth),
    so absent organs push the prediction towards empty instead of giving NaN."""
    b, c = logits.shape[:2]
    t = target.reshape(b, *logits.shape[2:]).long()
    ce = F.cross_entropy(logits, t)
    p = logits.softmax(1)
    onehot = F.one_hot(t, c).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * onehot).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = 1 - (2 * inter + smooth) / (denom + smooth)
    return ce + dice[1:].mean()


def pseudo_label(probs: torch.Tensor, rule: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher probabilities -> (target, pixel weight or None). ``hard`` (official ``_threshold_target``): target
    1[p >= threshold] on every pixel; ``masked``: target 1[p > 0.5] where max(p, 1-p) >= threshold, else ignored."""
    if rule == "hard":
        return (probs >= threshold).float(), None
    return (probs > 0.5).float(), confidence_mask(probs, threshold)


def confidence_mask(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where the teacher is confident either way: max(p, 1-p) >= threshold."""
    return (torch.maximum(probs, 1 - probs) >= threshold).float()


def jaccard_matrix(regions: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Pairwise Jaccard of binary region vectors [B,6]. Unknown (or empty) vectors overlap only themselves."""
    r = regions.float()
    inter = r @ r.T
    union = r.sum(1, keepdim=True) + r.sum(1) - inter
    j = torch.where(union > 0, inter / union.clamp_min(1e-8), torch.zeros_like(inter))
    valid = known & (r.sum(1) > 0)
    j = j * (valid[:, None] & valid[None, :]).float()
    eye = torch.eye(len(r), device=r.device, dtype=j.dtype)
    return torch.maximum(j, eye)  # a sample is always its own positive


def itcl_targets(regions: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Soft positives: each row is the Jaccard overlap normalised to sum 1."""
    j = jaccard_matrix(regions, known)
    return j / j.sum(1, keepdim=True)


def itcl(img_emb: torch.Tensor, txt_emb: torch.Tensor, regions: torch.Tensor, known: torch.Tensor,
         tau: float = 0.07) -> torch.Tensor:
    """Image-text contrastive loss with Jaccard soft positives (symmetric, image->text and text->image).

    When no two samples share a region (the Jaccard matrix is the identity) the targets are one-hot and
    this is exactly CLIP's InfoNCE.
    """
    img = F.normalize(img_emb, dim=-1)
    txt = F.normalize(txt_emb, dim=-1)
    logits = img @ txt.T / tau
    t = itcl_targets(regions, known)  # symmetric, so the same targets serve both directions
    return 0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t))


def dispersive(z: torch.Tensor, cfg) -> torch.Tensor:
    """Dispersive loss on one encoder stage's features (Med-DisSeg), via its own module.

    Extension point: ``pipeline_src.models.dispersive.dispersive_loss(z [B,...], variant, tau, eps, include_diagonal) -> scalar``,
    with ``cfg`` the ``train.dispersive`` params block. Imported lazily so the text-guided
    methods do not depend on it unless ``train.dispersive.weight > 0``.
    """
    fn = resolve("pipeline_src.models.dispersive:dispersive_loss")
    return fn(z, variant=cfg.variant, tau=cfg.tau, eps=cfg.eps, include_diagonal=cfg.include_diagonal,
              distance=cfg.distance)
