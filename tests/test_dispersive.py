"""Dispersive loss variants against hand-computed values, invariances, the i=j convention, and the stage hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from pipeline_src.errors import MedrefError
from pipeline_src.models.dispersive import VARIANTS, dispersive_loss, feature_dispersion
from tests.dispersive_hooks import DispersiveLoss, hook_stage, stage_for_reduction

# Three 2-D points: squared distances 1 (0-1), 4 (0-2), 5 (1-2); divided by d = 2: 0.5, 2, 2.5.
Z3 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
D3 = (0.5, 2.0, 2.5)


def _seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- values on hand-computable inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_infonce_l2_hand_values(tau: float) -> None:
    e = [math.exp(-d / tau) for d in D3]
    # i != j: every unordered pair appears twice among the 6 ordered pairs -> mean over the 3 pairs.
    want_off = math.log(sum(e) / 3)
    # with the diagonal: 3 self-terms exp(0) = 1 among 9 entries.
    want_diag = math.log((3 + 2 * sum(e)) / 9)
    assert float(dispersive_loss(Z3, "infonce_l2", tau=tau, include_diagonal=False)) == pytest.approx(want_off)
    assert float(dispersive_loss(Z3, "infonce_l2", tau=tau, include_diagonal=True)) == pytest.approx(want_diag)


def test_infonce_l2_matches_official_disploss_formula() -> None:
    # Wang & He's PyTorch reference: pdist^2 / d, padded with B zeros (full BxB matrix), log mean exp, tau = 1.
    z = _seeded(6, 5, 3)
    zf = z.reshape(6, -1)
    diff = torch.nn.functional.pdist(zf).pow(2) / zf.shape[1]
    ref = torch.log(torch.exp(-torch.cat([diff, diff, torch.zeros(6, dtype=z.dtype)])).mean())
    assert float(dispersive_loss(z, "infonce_l2", tau=1.0, include_diagonal=True)) == pytest.approx(float(ref))


def test_infonce_cos_hand_values() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)  # cos: 0, 1/sqrt2, 1/sqrt2
    s = 1 / math.sqrt(2)
    e = [math.exp(-1.0 / 0.5), math.exp(-(1 - s) / 0.5), math.exp(-(1 - s) / 0.5)]
    got_off = float(dispersive_loss(z, "infonce_cos", tau=0.5, include_diagonal=False))
    got_diag = float(dispersive_loss(z, "infonce_cos", tau=0.5, include_diagonal=True))
    assert got_off == pytest.approx(math.log(sum(e) / 3))
    assert got_diag == pytest.approx(math.log((3 + 2 * sum(e)) / 9))


def test_hinge_hand_values() -> None:
    # eps = 1 on D = (0.5, 2, 2.5): only the first pair is inside the margin, (1 - 0.5)^2 = 0.25.
    assert float(dispersive_loss(Z3, "hinge", eps=1.0, include_diagonal=False)) == pytest.approx(2 * 0.25 / 6)
    # diagonal: D = 0 -> (1 - 0)^2 = 1 for each of the 3 self-terms.
    assert float(dispersive_loss(Z3, "hinge", eps=1.0, include_diagonal=True)) == pytest.approx((2 * 0.25 + 3) / 9)
    # a larger margin reaches every pair: eps = 3 -> 2.5^2, 1^2, 0.5^2.
    assert float(dispersive_loss(Z3, "hinge", eps=3.0, include_diagonal=False)) == pytest.approx((6.25 + 1 + 0.25) / 3)


def test_covariance_hand_value_is_the_official_sum_on_raw_features() -> None:
    # official (dispersive_loss_implementation.py): raw features, unbiased covariance, SUM of squared off-diagonals
    z = torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    u = z.numpy()
    m = u.mean(axis=0)
    c01 = ((u[:, 0] - m[0]) * (u[:, 1] - m[1])).sum() / 2  # unbiased (B - 1)
    # d = 2: two off-diagonal entries, both c01.
    assert float(dispersive_loss(z, "covariance")) == pytest.approx(2 * c01**2)


def test_covariance_gram_trick_matches_explicit_matrix() -> None:
    z = _seeded(5, 7, seed=3)
    c = np.cov(z.numpy().T)  # explicit d x d, unbiased, raw features
    off = ~np.eye(7, dtype=bool)
    assert float(dispersive_loss(z, "covariance")) == pytest.approx(float((c[off] ** 2).sum()), rel=1e-9)


def test_covariance_is_not_a_no_op_on_a_feature_map_sized_input() -> None:
    # The earlier form (mean over d(d-1) of unit-vector covariances) was ~1e-10 with a ~1e-12 gradient on a
    # stride-16 map, i.e. nothing at weight 0.25. The official sum on raw features is of order one and moves z.
    z = torch.relu(0.5 * _seeded(8, 256 * 4 * 4, seed=4)).requires_grad_(True)
    loss = dispersive_loss(z, "covariance")
    (g,) = torch.autograd.grad(loss, z)
    assert float(loss) > 1.0 and float(g.abs().max()) > 1e-3


def test_official_l2_distance_saturates_where_disploss_does_not() -> None:
    # D = ||z_i - z_j|| on a large raw map: exp(-D / tau) underflows, log(0 + 1e-8) has no gradient (measured on
    # real features in docs/FIDELITY.md); the DispLoss scaling ||.||^2 / d keeps a gradient.
    z = torch.relu(0.5 * _seeded(8, 256 * 8 * 8, seed=5)).float().requires_grad_(True)  # float32, as in training
    off = dispersive_loss(z, "infonce_l2", distance="official")
    (g_off,) = torch.autograd.grad(off, z)
    assert float(off) == pytest.approx(math.log(1e-8)) and float(g_off.abs().max()) == 0.0
    dl = dispersive_loss(z, "infonce_l2", distance="disploss")
    (g_dl,) = torch.autograd.grad(dl, z)
    assert float(g_dl.abs().max()) > 0.0


# ---- invariances, gradients, edge cases -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("diag", [True, False])
def test_batch_permutation_invariance(variant: str, diag: bool) -> None:
    z = _seeded(7, 4, 3, 3, seed=1)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    a = dispersive_loss(z, variant, include_diagonal=diag)
    b = dispersive_loss(z[perm], variant, include_diagonal=diag)
    assert float(a) == pytest.approx(float(b), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_finite_including_collapse_and_float32(variant: str) -> None:
    spread = torch.randn(8, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    collapsed = spread[:1].repeat(8, 1, 1, 1)  # identical rows: distance 0, where sqrt/pdist grads are NaN
    for z0 in (spread, collapsed, torch.zeros(4, 10)):
        z = z0.clone().requires_grad_(True)
        loss = dispersive_loss(z, variant)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("variant", ["infonce_l2", "infonce_cos", "hinge"])
@pytest.mark.parametrize("diag", [True, False])
def test_collapse_scores_worse_than_spread(variant: str, diag: bool) -> None:
    spread = _seeded(8, 32, seed=4)
    collapsed = spread[:1].repeat(8, 1)
    hi = float(dispersive_loss(collapsed, variant, include_diagonal=diag))
    lo = float(dispersive_loss(spread, variant, include_diagonal=diag))
    assert lo < hi
    # collapse is the maximum: log 1 = 0 for InfoNCE, eps^2 = 1 for the hinge.
    assert hi == pytest.approx(0.0 if variant != "hinge" else 1.0, abs=1e-6)


def test_covariance_penalises_correlation_not_collapse() -> None:
    # Documented property: the covariance variant is 0 at collapse (it decorrelates dimensions, it does not spread
    # samples), and it scores correlated features above isotropic ones.
    base = _seeded(8, 16, seed=6)
    assert float(dispersive_loss(base[:1].repeat(8, 1), "covariance")) == pytest.approx(0.0, abs=1e-15)
    g = torch.Generator().manual_seed(7)
    v, w = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    a = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]
    correlated = v + a * w  # samples vary along one direction: a rank-1 covariance
    isotropic = v + 0.3 * _seeded(8, 16, seed=8)
    assert float(dispersive_loss(correlated, "covariance")) > float(dispersive_loss(isotropic, "covariance"))


def test_diagonal_flag_relation() -> None:
    # log-mean-exp over B^2 entries = log((B + (B^2 - B) * exp(L_off)) / B^2): the diagonal only adds B ones.
    z = _seeded(5, 12, seed=9)
    for variant in ("infonce_l2", "infonce_cos"):
        off = float(dispersive_loss(z, variant, include_diagonal=False))
        on = float(dispersive_loss(z, variant, include_diagonal=True))
        assert on == pytest.approx(math.log((5 + 20 * math.exp(off)) / 25))
        assert on > off  # exp(0) = 1 exceeds every pair term
    # the covariance variant has no pairs: the flag must not change it.
    assert float(dispersive_loss(z, "covariance", include_diagonal=True)) == float(
        dispersive_loss(z, "covariance", include_diagonal=False)
    )


def test_diagonal_bounds_infonce_below_and_switches_gradient_off() -> None:
    # Far-apart samples: with the diagonal, L -> -log B and the gradient vanishes (the regulariser stops pushing);
    # without it, L is unbounded below and the pair gradient stays O(1/tau).
    far = (100.0 * torch.eye(6, dtype=torch.float64)).requires_grad_(True)
    on = dispersive_loss(far, "infonce_l2", include_diagonal=True)
    on.backward()
    assert float(on.detach()) == pytest.approx(-math.log(6), abs=1e-6)
    assert float(far.grad.abs().max()) < 1e-12
    far2 = (100.0 * torch.eye(6, dtype=torch.float64)).requires_grad_(True)
    dispersive_loss(far2, "infonce_l2", include_diagonal=False).backward()
    assert float(far2.grad.abs().max()) > 1e-3


def test_tiny_batch_and_bad_input() -> None:
    z = torch.randn(1, 8, requires_grad=True)
    loss = dispersive_loss(z, "infonce_l2")
    loss.backward()  # still attached to the graph
    assert float(loss.detach()) == 0.0
    with pytest.raises(MedrefError, match="variant"):
        dispersive_loss(torch.randn(4, 3), "nope")  # type: ignore[arg-type]
    with pytest.raises(MedrefError, match="tau"):
        dispersive_loss(torch.randn(4, 3), tau=0.0)
    with pytest.raises(MedrefError, match="shape"):
        dispersive_loss(torch.randn(4))


def test_module_matches_function_and_minimising_spreads_features() -> None:
    loss_fn = DispersiveLoss("infonce_l2", tau=0.5)
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    z = (0.01 * _seeded(8, 16, seed=10)).requires_grad_(True)  # nearly collapsed start
    assert float(loss_fn(z)) == float(dispersive_loss(z, "infonce_l2", tau=0.5, include_diagonal=loss_fn.include_diagonal))
    before = feature_dispersion(z.detach())
    opt = torch.optim.SGD([z], lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(z).backward()
        opt.step()
    after = feature_dispersion(z.detach())
    assert after["mean_pairwise_dist"] > 2 * before["mean_pairwise_dist"]
    assert after["per_dim_var"] > 2 * before["per_dim_var"]


# ---- the dispersion probe ---------------------------------------------------------------------------------------


def test_feature_dispersion_hand_values_and_pooling() -> None:
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    got = feature_dispersion(z)
    assert got["mean_pairwise_dist"] == pytest.approx(5.0)
    assert got["per_dim_var"] == pytest.approx((4.5 + 8.0) / 2)  # var([0,3]) = 4.5, var([0,4]) = 8 (unbiased)
    # [B, C, H, W] maps are average-pooled first: constant maps pool to the vectors above.
    maps = z[:, :, None, None].expand(2, 2, 3, 3)
    assert feature_dispersion(maps) == pytest.approx(got)
    assert feature_dispersion(torch.zeros(1, 4)) == {"mean_pairwise_dist": 0.0, "per_dim_var": 0.0}


# ---- capturing a stage ------------------------------------------------------------------------------------------


class _Wrapper(nn.Module):
    def __init__(self, name: str, **kw) -> None:
        super().__init__()
        self.enc = timm.create_model(name, features_only=True, pretrained=False, in_chans=1, **kw)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.enc(x)


def test_hook_stage_captures_the_encoder_output() -> None:
    torch.manual_seed(0)
    model = _Wrapper("resnet18", out_indices=(1, 2, 3, 4)).eval()
    x = torch.rand(2, 1, 64, 64)
    idx = stage_for_reduction(model, 16)
    assert idx == 2  # layer3 of a ResNet, the official Med-DisSeg choice, is feats[2] with out_indices (1,2,3,4)
    with hook_stage(model, idx) as h:
        feats = model(x)
        assert h.name == "layer3"
        assert torch.equal(h.pop(), feats[2])
        with pytest.raises(MedrefError, match="no features"):
            h.pop()  # popped: a stale tensor is never reused for the next step
    model(x)
    assert h.features is None  # removed on exit
    with hook_stage(model, "enc.layer2") as h2:
        feats = model(x)
        assert torch.equal(h2.pop(), feats[1])


def test_hook_stage_nested_timm_names_and_errors() -> None:
    model = _Wrapper("convnext_atto")  # feature module names are nested ("stages.2"), flattened by timm
    with hook_stage(model, -2) as h:
        feats = model(torch.rand(1, 1, 64, 64))
        assert torch.equal(h.pop(), feats[-2])
    with pytest.raises(MedrefError, match="out of range"):
        hook_stage(model, 9)
    with pytest.raises(MedrefError, match="sub-module"):
        hook_stage(model, "enc.nope")
    with pytest.raises(MedrefError, match="stride"):
        stage_for_reduction(model, 64)
    with pytest.raises(MedrefError, match="feature_info"):
        hook_stage(nn.Linear(2, 2), 0)
