"""Dispersive loss (Med-DisSeg; Wang & He, "Diffuse and Disperse", arXiv:2506.09027) and feature-dispersion probes.

The loss treats every other sample in the batch as a negative and pushes the encoder's hidden representations
apart; there are no positive pairs, so it can be added to any segmentation loss:

    L_disp = log E_{i,j}[ exp(-D(z_i, z_j) / tau) ]                                (InfoNCE variants)

Variants (``variant=``):

- ``infonce_l2``   ``distance="disploss"`` (default): D = ||z_i - z_j||^2 / d (d = flattened feature size), as
                   Wang & He's DispLoss code; it makes tau independent of the chosen stage's size.
                   ``distance="official"``: D = ||z_i - z_j|| and L = log(mean exp(-D / tau) + 1e-8), as the
                   Med-DisSeg code (``DispersiveLoss.compute_dispersive_loss``). On real stride-16 features that
                   form saturates (docs/FIDELITY.md gives the measurement), hence the default.
- ``infonce_cos``  D = 1 - cos(z_i, z_j) (both codes).
- ``hinge``        mean over pairs of max(0, eps - D)^2 with the same D as ``infonce_l2``.
- ``covariance``   the official form: C = cov over the batch of the raw flattened features (unbiased, B - 1);
                   the SUM of the squared off-diagonal entries of C. C is d x d, so it is computed through the
                   B x B Gram matrix (||C||_F = ||Z_c Z_c^T||_F / (B - 1)) and never materialised. It is
                   minimised by collapse (identical z give C = 0): it decorrelates dimensions, it does not by
                   itself spread samples (VICReg pairs it with a variance term for that reason). (medref's earlier
                   form, the mean over d(d - 1) on unit vectors, was ~1e-10 with a ~1e-12 gradient: a no-op.)

The i = j convention (``include_diagonal``)
-------------------------------------------
The issue writes E over i != j. The two public codes disagree:

- Wang & He's official DispLoss code pads the B(B-1) pair distances with B zeros "to match the JAX
  implementation of the full BxB matrix", i.e. it INCLUDES the diagonal (exp(0) = 1 per sample).
- The released Med-DisSeg code (xiaoquan-1/Med-DisSeg, network/dispersive_loss_implementation.py) EXCLUDES it
  (and, unlike DispLoss, uses the un-squared L2 distance without the 1/d scaling, on the raw layer3 map).

Default here: ``include_diagonal=False``, the paper's Eq. 2 and the Med-DisSeg code. ``include_diagonal=True``
(DispLoss's convention) bounds InfoNCE below by -log B, and the softmax weight on the pair terms then decays to 0
once samples are far apart, so the regulariser switches itself off; without the diagonal the pair weights always
sum to 1 and L2 variants can be lowered by scaling features up. The diagonal only rescales / shifts the hinge loss
and is irrelevant for the covariance loss (which has no pairs).

Where z comes from: the official Med-DisSeg model applies the loss to the flattened output of ResNet-50 layer3
(stride 16; timm features_only index 3 for ResNets), before its attention modules. Training takes z from the
model's ``feats`` output (``train.dispersive.stage``), so no second forward is needed.

Test: ``.venv/bin/pytest tests/test_dispersive.py``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline_src.errors import MedrefError

Variant = Literal["infonce_l2", "infonce_cos", "hinge", "covariance"]
VARIANTS: tuple[str, ...] = ("infonce_l2", "infonce_cos", "hinge", "covariance")


def _flatten(z: Tensor) -> Tensor:
    if z.dim() < 2:
        raise MedrefError(f"dispersive loss: z must be [B, ...] with a feature axis, got shape {tuple(z.shape)}")
    z = z.reshape(z.shape[0], -1)
    # float32 at least (float64 kept): the Gram trick cancels large terms, which fp16/bf16 cannot represent well
    # under autocast.
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def pairwise_sq_l2(z: Tensor) -> Tensor:
    """[B, d] -> [B, B] squared Euclidean distances (diagonal exactly 0).

    Via the Gram matrix (O(B^2 d) time, O(B^2) memory) instead of z[:, None] - z[None] (O(B^2 d) memory: 200 MB
    for a ResNet-50 layer3 map at 224^2 and B = 16). Centring first removes the common offset, which is where the
    Gram formula loses precision; distances are translation invariant so the result is unchanged.
    """
    zc = z - z.mean(dim=0, keepdim=True)
    sq = zc.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (zc @ zc.T)
    # clamp: rounding can make identical rows slightly negative; the clamp also gives them a zero (not NaN) gradient.
    d2 = d2.clamp_min(0.0)
    return d2 * (1.0 - torch.eye(z.shape[0], device=z.device, dtype=z.dtype))


def _pair_values(m: Tensor, include_diagonal: bool) -> Tensor:
    """The entries of a [B, B] matrix that enter the expectation: all B^2, or the B(B-1) off-diagonal ones."""
    if include_diagonal:
        return m.reshape(-1)
    off = ~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    return m[off]


def _distance(z: Tensor, variant: str, distance: str = "disploss") -> Tensor:
    if variant == "infonce_cos":
        u = F.normalize(z, dim=1, eps=1e-8)
        d = 1.0 - u @ u.T
        # the diagonal is 0 by definition; set it exactly so rounding cannot leak into the diagonal convention.
        return d * (1.0 - torch.eye(z.shape[0], device=z.device, dtype=z.dtype))
    if distance == "official":
        # sqrt of the squared distances; the tiny floor keeps the gradient of the (masked) diagonal finite
        return pairwise_sq_l2(z).clamp_min(1e-30).sqrt() * (1.0 - torch.eye(z.shape[0], device=z.device,
                                                                              dtype=z.dtype))
    return pairwise_sq_l2(z) / z.shape[1]


def _covariance_offdiag_sum(z: Tensor) -> Tensor:
    """sum_{k != l} C_kl^2 with C the unbiased covariance of the raw rows of z (official form)."""
    b, d = z.shape
    zc = z - z.mean(dim=0, keepdim=True)
    gram = (zc @ zc.T) / (b - 1)  # shares its nonzero spectrum with C = zc^T zc / (B-1)
    total = gram.pow(2).sum()  # = ||C||_F^2, without building the d x d matrix
    diag = (zc.pow(2).sum(dim=0) / (b - 1)).pow(2).sum()  # sum_k C_kk^2
    if d < 2:
        return total * 0.0
    return (total - diag).clamp_min(0.0)


def dispersive_loss(
    z: Tensor,
    variant: Variant = "infonce_l2",
    tau: float = 0.5,
    eps: float = 1.0,
    include_diagonal: bool = False,
    distance: str = "disploss",
) -> Tensor:
    """Dispersive loss of a batch of representations ``z`` [B, ...] (flattened per sample); a scalar tensor.

    ``tau``: temperature of the InfoNCE variants (paper default 0.5). ``eps``: hinge margin on D. ``distance``:
    ``disploss`` (||.||^2 / d) or ``official`` (||.||, with the Med-DisSeg code's log(mean + 1e-8)).
    With B < 2 there are no pairs: returns 0 still attached to the graph (so ``backward`` works on tiny batches).
    """
    if variant not in VARIANTS:
        raise MedrefError(f"dispersive loss: variant must be one of {VARIANTS}, got {variant!r}")
    if tau <= 0:
        raise MedrefError(f"dispersive loss: tau must be > 0, got {tau}")
    zf = _flatten(z)
    b = zf.shape[0]
    if b < 2:
        return zf.sum() * 0.0
    if distance not in ("disploss", "official"):
        raise MedrefError(f"dispersive loss: distance must be disploss or official, got {distance!r}")
    if variant == "covariance":
        return _covariance_offdiag_sum(zf)
    pairs = _pair_values(_distance(zf, variant, distance), include_diagonal)
    if variant == "hinge":
        return (eps - pairs).clamp_min(0.0).pow(2).mean()
    if distance == "official" and variant == "infonce_l2":
        return torch.log(torch.exp(-pairs / tau).mean() + 1e-8)
    # log mean exp via logsumexp: exp(-D/tau) underflows to 0 for well-separated features, log(0) would be -inf.
    return torch.logsumexp(-pairs / tau, dim=0) - math.log(pairs.numel())


@torch.no_grad()
def feature_dispersion(z: Tensor, pool: bool = True) -> dict[str, float]:
    """Dispersion statistics of a batch of features, for logging with and without the loss.

    ``z`` [B, C, H, W] is global-average-pooled to [B, C] first when ``pool`` (the issue asks for the pooled
    features: spatial positions would otherwise dominate d); other shapes are flattened per sample.
    Returns ``mean_pairwise_dist`` (mean Euclidean distance over i < j) and ``per_dim_var`` (per-dimension
    variance across the batch, unbiased, averaged over dimensions). Both are 0.0 for B < 2.
    Accumulate them over a held-out set by evaluating batches of a FIXED size: both depend on B only through
    sampling noise, but the mean over a batch of 2 is much noisier than over 32.
    """
    zf = z.mean(dim=(2, 3)) if (pool and z.dim() == 4) else z.reshape(z.shape[0], -1)
    zf = zf.double()  # a logging statistic: precision is free here and makes the numbers reproducible
    b = zf.shape[0]
    if b < 2:
        return {"mean_pairwise_dist": 0.0, "per_dim_var": 0.0}
    d = pairwise_sq_l2(zf).sqrt()
    iu = torch.triu_indices(b, b, offset=1, device=zf.device)
    return {
        "mean_pairwise_dist": float(d[iu[0], iu[1]].mean()),
        "per_dim_var": float(zf.var(dim=0, unbiased=True).mean()),
    }
