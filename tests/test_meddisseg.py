"""MedDisSeg: shapes, ablation flags, registry build, weights file, toy training, determinism, dispersive hook."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F

from pipeline_src.models.dispersive import dispersive_loss
from pipeline_src.models.meddisseg import (
    MedDisSeg,
    MedDisSegConfig,
    MultiScaleCalibration,
    StructureSensitiveAttention,
    TeLU,
    build,
)
from tests.dispersive_hooks import hook_stage

FLAGS = [(False, False), (True, False), (False, True), (True, True)]


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def models() -> dict[tuple[bool, bool], MedDisSeg]:
    torch.manual_seed(0)
    return {f: MedDisSeg(ssa=f[0], amc=f[1]).eval() for f in FLAGS}


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("flags", FLAGS)
def test_forward_contract_and_shapes(models, flags: tuple[bool, bool], size: int) -> None:
    m = models[flags]
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        out = m(x)
    assert out["logits"].shape == (2, 1, size, size)
    assert out["img_emb"].shape == (2, m.config.embed_dim)
    assert out["txt_emb"] is None and m.uses_text is False
    # raw encoder stages, shallow to deep, strides 4..32 with the default out_indices
    assert [f.shape[-1] for f in out["feats"]] == [size // s for s in (4, 8, 16, 32)]
    assert torch.isfinite(out["logits"]).all()
    with torch.no_grad():
        assert torch.equal(m.segment(x), out["logits"])
        assert all(torch.equal(a, b) for a, b in zip(m.features(x), out["feats"], strict=True))


def test_multiclass_head_and_text_tokens_ignored() -> None:
    m = MedDisSeg(n_classes=3).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        out = m(x, tokens=torch.zeros(1, 8, dtype=torch.long))
        assert out["logits"].shape == (1, 3, 64, 64)
        assert torch.equal(out["logits"], m(x)["logits"])


def test_flags_change_the_model(models) -> None:
    n = {f: _n_params(m) for f, m in models.items()}
    assert n[(True, False)] > n[(False, False)]  # SSA adds parameters
    assert n[(False, True)] > n[(False, False)]  # AMC adds parameters
    assert n[(True, True)] > max(n[(True, False)], n[(False, True)])
    assert any(isinstance(x, StructureSensitiveAttention) for x in models[(True, False)].modules())
    assert not any(isinstance(x, StructureSensitiveAttention) for x in models[(False, True)].modules())
    assert models[(False, False)].calibrate is None and models[(False, True)].calibrate is not None


def test_build_from_params_blocks() -> None:
    # a train.model block that predates the Med-DisSeg keys builds with the defaults
    old = SimpleNamespace(image_encoder="resnet18", image_weights=None, decoder_dim=32, out_indices=[1, 2, 3, 4])
    m = build(old)
    assert m.config == MedDisSegConfig(decoder_dim=32)
    m2 = build({"image_encoder": "resnet18", "decoder_dim": 16, "ssa": False, "amc": False, "n_classes": 2})
    assert (m2.config.ssa, m2.config.amc, m2.config.n_classes, m2.config.decoder_dim) == (False, False, 2, 16)
    # the config rebuilds an identical architecture (what a checkpoint needs)
    assert _n_params(MedDisSeg(m2.config)) == _n_params(m2)


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    rgb = timm.create_model("resnet18", pretrained=False)  # a full RGB classifier checkpoint, as users have them
    path = tmp_path / "resnet18.pth"
    torch.save(rgb.state_dict(), path)
    m = MedDisSeg(image_weights=str(path))
    sd = m.encoder.body.state_dict()
    assert torch.equal(sd["layer3.0.conv1.weight"], rgb.state_dict()["layer3.0.conv1.weight"])
    # grey stem = RGB stem summed over its input channels
    assert torch.allclose(sd["conv1.weight"], rgb.state_dict()["conv1.weight"].sum(dim=1, keepdim=True))


def _toy_batch(n: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright squares at random places on noise; the mask is the square."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(n, 1, size, size, generator=g)
    y = torch.zeros(n, 1, size, size)
    for i in range(n):
        r, c = torch.randint(0, size - 24, (2,), generator=g).tolist()
        x[i, :, r : r + 24, c : c + 24] += 0.7
        y[i, :, r : r + 24, c : c + 24] = 1.0
    return x, y


def _train(flags: tuple[bool, bool], steps: int, disp: float = 0.0) -> tuple[list[float], MedDisSeg]:
    torch.manual_seed(123)
    m = MedDisSeg(ssa=flags[0], amc=flags[1], decoder_dim=32)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, y = _toy_batch()
    losses = []
    for _ in range(steps):
        out = m(x)
        loss = F.binary_cross_entropy_with_logits(out["logits"], y)
        if disp:
            loss = loss + disp * dispersive_loss(out["feats"][2], "infonce_l2")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, m


@pytest.mark.parametrize("flags", [(False, False), (True, True)])
def test_a_few_steps_reduce_the_loss(flags: tuple[bool, bool]) -> None:
    losses, _ = _train(flags, steps=8)
    assert all(map(lambda v: v == v, losses))  # no NaN
    assert losses[-1] < 0.8 * losses[0]


def test_deterministic_on_cpu_with_a_seed() -> None:
    la, ma = _train((True, True), steps=2, disp=0.2)
    lb, mb = _train((True, True), steps=2, disp=0.2)
    assert la == lb
    for (ka, a), (kb, b) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b), ka


def test_dispersive_loss_on_hooked_stage_reaches_only_the_encoder() -> None:
    torch.manual_seed(0)
    m = MedDisSeg()
    with hook_stage(m, 2) as h:  # int = index into out["feats"]: layer3 for a ResNet
        out = m(torch.rand(4, 1, 64, 64))
        z = h.pop()
    assert z is out["feats"][2]
    dispersive_loss(z, "infonce_l2").backward()
    body = m.encoder.body

    def reached(module: torch.nn.Module) -> bool:
        # any parameter (timm zero-inits each block's last BN, so a residual branch's convs start with 0 grad)
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert reached(body.layer3) and reached(body.conv1)
    assert not reached(body.layer4)  # deeper than the hooked stage
    assert m.head.weight.grad is None


def test_blocks_numerics() -> None:
    x = torch.tensor([-5.0, 0.0, 30.0, 200.0], requires_grad=True)
    TeLU()(x).sum().backward()
    assert torch.isfinite(x.grad).all()  # exp(200) would overflow without the clamp
    cal = MultiScaleCalibration(3, 8)
    scales = [torch.randn(2, 8, 16 // 2**i, 16 // 2**i) for i in range(3)]
    w = cal.weights(scales)
    assert w.shape == (2, 3, 8)
    assert torch.allclose(w, torch.full_like(w, 1 / 3))  # zero-init gate: even average at the start
    assert cal(scales).shape == (2, 8, 16, 16)
    ssa = StructureSensitiveAttention(12, 8)
    assert ssa(torch.randn(2, 12, 5, 7)).shape == (2, 8, 5, 7)  # odd sizes: no padding mismatch
