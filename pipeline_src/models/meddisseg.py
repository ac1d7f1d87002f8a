"""Med-DisSeg (image-only): timm encoder + structure-sensitive attention (SSA) + adaptive multi-scale calibration.

Selected with ``train.model.arch: meddisseg`` (registry: ``pipeline_src.models.ARCHS``); follows the forward
contract of ``pipeline_src/models/segmodel.py`` (a dict with ``logits``, ``img_emb``, ``txt_emb=None``, ``feats``)
so the loop, the methods and the predictor treat it like every other architecture. The dispersive loss
(``pipeline_src/models/dispersive.py``) is applied by the method to ``feats[stage]``: the RAW encoder stage,
before SSA, which is where the official code applies it (ResNet layer3 output).

What the public material says, and what this file does
-----------------------------------------------------
Sources: the paper abstract (arXiv "Med-DisSeg: Dispersion-Driven Representation Learning for Fine-Grained
Medical Image Segmentation") and the released code (github.com/xiaoquan-1/Med-DisSeg, network/model.py,
read for facts, nothing copied). The released version names the modules ELAT ("Encoder-Level Attention with
TeLU", = the structure-sensitive attention of the issue) and CBAT ("Channel-Balanced Adaptive Attention"
decoder, = the adaptive multi-scale calibration); the code is built on ConDSeg (ResNet-50 to layer3).

- SSA / ELAT (code: ``dilated_conv``, one per encoder stage, on the side outputs, not fed back into the
  backbone): four parallel branches (1x1 and 3x3 convs with dilations 6/12/18) each followed by channel
  attention (avg+max pooled shared MLP, sigmoid), concatenated and fused by a 3x3 conv, plus a 1x1 shortcut,
  ReLU, then spatial attention (channel-mean and channel-max maps -> 7x7 conv -> sigmoid). Activation TeLU
  x * tanh(exp(x)). Here: the same structure with dilations (1, 2, 3) on 3x3 branches, because our maps are
  small (8x8 at stride 16 for 128^2 input; dilation 18 would sample only padding), and a 1x1 instead of a 3x3
  fuse conv (a third of the module's cost, and the branches already cover 3x3..7x7 context). Deviation: the spatial
  attention also sees a fixed Sobel gradient magnitude of the channel-mean map, an explicit boundary cue that
  makes "structure-sensitive" concrete at no parameter cost (the paper only says the module "enhances
  boundary-sensitive cues").
- AMC / CBAT (code: ``decoder_block`` + ``output_block``): each decoder block upsamples, concatenates the skip,
  1x1 conv, a residual-dense chain of 3x3 convs, then channel + spatial attention (the code applies CA, SA and
  then a CBAM again; we apply one CBAM); the output block fuses three decoder scales by concatenation. Here the
  blocks are the same, and the multi-scale fusion is the "adaptive calibration": every decoder scale is
  upsampled to the finest one and summed with per-scale, per-channel weights = softmax over scales of
  (learned prior + an image-conditioned gate from the pooled scale features). The gate's last layer starts at
  zero, so training starts from an even average of the scales.
- Not reproduced: ConDSeg's decouple layer, auxiliary fg/bg/uncertainty heads and contrast-driven feature
  aggregation (they are ConDSeg's, not Med-DisSeg's contribution), and the two-stage training schedule.

Ablation flags: ``ssa=False`` replaces SSA by a 1x1 lateral conv; ``amc=False`` replaces the decoder by a plain
U-Net decoder (upsample, concat, conv-BN-ReLU) with the head on the finest scale. Both off = the same shape of
model as the ``image_only`` architecture.

Test: ``.venv/bin/pytest tests/test_meddisseg.py``; timings: ``.venv/bin/python bench/bench_meddisseg.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline_src.models.encoders import ImageEncoder, normalise, resolve_image_norm

# ---------------------------------------------------------------------------------------------------------------
# Building blocks (usable by other models: SSA on any feature map, AMC fusion on any list of scales)
# ---------------------------------------------------------------------------------------------------------------


class TeLU(nn.Module):
    """x * tanh(exp(x)), the activation of the official code.

    exp is clamped: tanh(e^20) is already 1.0 in float32, and without the clamp exp overflows to inf for x > 88,
    whose backward is 0 * inf = NaN.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.tanh(torch.exp(x.clamp(max=20.0)))


def cbt(cin: int, cout: int, k: int = 3, dilation: int = 1, act: bool = True) -> nn.Sequential:
    """Conv-BN(-TeLU); bias-free because BN follows."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(TeLU())
    return nn.Sequential(*layers)


class ChannelAttention(nn.Module):
    """Shared MLP over avg- and max-pooled channels (CBAM), sigmoid gate."""

    def __init__(self, ch: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(ch // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(ch, hidden, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(hidden, ch, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        a = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(a)


class SpatialAttention(nn.Module):
    """Spatial gate from channel-mean and channel-max maps (CBAM), optionally plus a Sobel edge map."""

    def __init__(self, kernel_size: int = 7, edges: bool = False) -> None:
        super().__init__()
        self.edges = edges
        self.conv = nn.Conv2d(3 if edges else 2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        if edges:
            gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
            # fixed filters (a buffer, not a parameter): the boundary cue should stay a gradient magnitude.
            self.register_buffer("sobel", torch.stack([gx, gx.T])[:, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        maps = [mean, x.amax(dim=1, keepdim=True)]
        if self.edges:
            g = F.conv2d(F.pad(mean, (1, 1, 1, 1), mode="replicate"), self.sobel)
            # +1e-6 inside the sqrt: its gradient is infinite at 0 (flat regions are common).
            maps.append(torch.sqrt(g.pow(2).sum(dim=1, keepdim=True) + 1e-6))
        return x * torch.sigmoid(self.conv(torch.cat(maps, dim=1)))


class StructureSensitiveAttention(nn.Module):
    """SSA (ELAT): multi-dilation branches with channel attention, fused, shortcut, edge-aware spatial attention.

    Maps ``in_ch`` -> ``out_ch`` channels at the same resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, dilations: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        branches = [nn.Sequential(cbt(in_ch, out_ch, k=1), ChannelAttention(out_ch))]
        branches += [nn.Sequential(cbt(in_ch, out_ch, k=3, dilation=d), ChannelAttention(out_ch)) for d in dilations]
        self.branches = nn.ModuleList(branches)
        # 1x1 fuse (the official code uses 3x3): the branches already supply the spatial context, and at stride 4
        # a 3x3 conv over 4 * out_ch channels cost as much as the whole ResNet-18 step on CPU.
        self.fuse = cbt(out_ch * len(branches), out_ch, k=1, act=False)
        self.shortcut = cbt(in_ch, out_ch, k=1, act=False)
        self.spatial = SpatialAttention(edges=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        return self.spatial(F.relu(y + self.shortcut(x)))


class CalibratedDecoderBlock(nn.Module):
    """CBAT decoder block: upsample, concat skip, 1x1, residual-dense 3x3 chain, channel + spatial attention."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.reduce = cbt(2 * ch, ch, k=1)
        self.c2 = cbt(ch, ch, act=False)
        self.c3 = cbt(ch, ch, act=False)
        self.ca = ChannelAttention(ch)
        self.sa = SpatialAttention()

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        s1 = self.reduce(torch.cat([x, skip], dim=1))
        s2 = F.relu(self.c2(s1) + s1)
        x = F.relu(self.c3(s2) + s2 + s1)
        return self.sa(self.ca(x))


class MultiScaleCalibration(nn.Module):
    """AMC fusion: sum of scales (upsampled to the first) with adaptive per-scale, per-channel softmax weights."""

    def __init__(self, n_scales: int, ch: int) -> None:
        super().__init__()
        self.n_scales, self.ch = n_scales, ch
        self.prior = nn.Parameter(torch.zeros(n_scales, ch))
        self.gate = nn.Sequential(nn.Linear(n_scales * ch, ch), nn.ReLU(inplace=True), nn.Linear(ch, n_scales * ch))
        # zero-init: the image-conditioned part starts silent, so training starts from an even average of scales.
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)
        self.refine = cbt(ch, ch)

    def weights(self, scales: Sequence[Tensor]) -> Tensor:
        """[B, S, C] calibration weights (sum to 1 over S); exposed for logging which scale the model relies on."""
        pooled = torch.cat([s.mean(dim=(2, 3)) for s in scales], dim=1)
        logits = self.prior[None] + self.gate(pooled).view(-1, self.n_scales, self.ch)
        return logits.softmax(dim=1)

    def forward(self, scales: Sequence[Tensor]) -> Tensor:
        size = scales[0].shape[-2:]
        w = self.weights(scales)
        ups = [
            s if s.shape[-2:] == size else F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            for s in scales
        ]
        fused = sum(w[:, i, :, None, None] * u for i, u in enumerate(ups))
        return self.refine(fused)


def _plain_fuse(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2 * ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True))


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MedDisSegConfig:
    """Everything that defines the architecture (saved in model.pt so a checkpoint rebuilds itself)."""

    image_encoder: str = "resnet18"
    image_weights: str | None = None  # local weights (pipeline_src/models/encoders.py); never downloaded
    image_norm: str = "auto"  # centre | imagenet | auto (imagenet for weights whose pretrained config says so)
    allow_partial_weights: bool = False
    out_indices: tuple[int, ...] = (1, 2, 3, 4)  # ResNet: strides 4..32; feats[2] = layer3 (dispersive stage)
    decoder_dim: int = 64
    embed_dim: int = 64
    n_classes: int = 1
    ssa: bool = True
    amc: bool = True

    @classmethod
    def from_params(cls, cfg: Any) -> MedDisSegConfig:
        """From a ``train.model`` params block (pydantic), a mapping or any object; absent keys keep defaults,
        so the model builds before the params schema has grown the Med-DisSeg keys."""
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d: getattr(cfg, k, d))
        kw = {f.name: get(f.name, f.default) for f in fields(cls)}
        kw["out_indices"] = tuple(kw["out_indices"])
        return cls(**kw)


class MedDisSeg(nn.Module):
    uses_text = False  # the loop passes tokens=None and skips ITCL

    def __init__(self, config: MedDisSegConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or MedDisSegConfig()
        if overrides:
            cfg = MedDisSegConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        dim = cfg.decoder_dim
        self.encoder = ImageEncoder(cfg.image_encoder, cfg.image_weights, cfg.out_indices, cfg.allow_partial_weights)
        self.norm = resolve_image_norm(cfg.image_norm, cfg.image_weights)
        chans = self.encoder.channels
        if cfg.ssa:
            self.lateral = nn.ModuleList(StructureSensitiveAttention(c, dim) for c in chans)
        else:
            self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in chans)
        n = len(chans)
        if cfg.amc:
            self.blocks = nn.ModuleList(CalibratedDecoderBlock(dim) for _ in range(n - 1))
            self.calibrate = MultiScaleCalibration(n, dim)
        else:
            self.blocks = nn.ModuleList(_plain_fuse(dim) for _ in range(n - 1))
            self.calibrate = None
        self.head = nn.Conv2d(dim, cfg.n_classes, 1)
        self.img_proj = nn.Linear(chans[-1], cfg.embed_dim)

    def features(self, images: Tensor) -> list[Tensor]:
        """Raw encoder stage features, shallow to deep (what the dispersive loss sees).

        The [0,1] input is centred (or ImageNet-normalised) as in ``segmodel.py`` (short runs otherwise predict
        nothing in eval mode: BN's running variance starts at 1 while raw grey pixels have a tiny variance)."""
        return self.encoder(normalise(images, self.norm))

    def decode(self, feats: list[Tensor]) -> Tensor:
        """Encoder features -> logits at the finest feature resolution."""
        lat = [m(f) for m, f in zip(self.lateral, feats, strict=True)]
        x = lat[-1]
        outs = [x]  # deep to shallow
        for i in range(len(lat) - 2, -1, -1):
            if self.calibrate is not None:
                x = self.blocks[i](x, lat[i])
            else:
                x = F.interpolate(x, size=lat[i].shape[-2:], mode="bilinear", align_corners=False)
                x = self.blocks[i](torch.cat([x, lat[i]], dim=1))
            outs.append(x)
        if self.calibrate is not None:
            x = self.calibrate(outs[::-1])  # finest first: everything is resampled to it
        return self.head(x)

    def forward(self, images: Tensor, tokens: Tensor | None = None) -> dict[str, Any]:
        """Contract of ``segmodel.py``; ``tokens`` is accepted and ignored (image-only model)."""
        feats = self.features(images)
        logits = F.interpolate(self.decode(feats), size=images.shape[-2:], mode="bilinear", align_corners=False)
        img_emb = self.img_proj(feats[-1].mean(dim=(2, 3)))
        return {"logits": logits, "img_emb": img_emb, "txt_emb": None, "feats": feats}

    def segment(self, images: Tensor) -> Tensor:
        """Logits [B, n_classes, H, W] only."""
        return self.forward(images)["logits"]


def build(cfg: Any) -> MedDisSeg:
    """Registry entry (``ARCHS["meddisseg"]``): a ``train.model`` params block -> model."""
    return MedDisSeg(MedDisSegConfig.from_params(cfg))
