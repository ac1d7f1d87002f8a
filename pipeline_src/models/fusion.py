"""Text-guided decoders over the timm feature pyramid (``train.model.decoder``).

``official`` (default): the GuideDecoder of the Semi-MedRef code (``utils/layers.py::GuideDecoderLayer`` and
``GuideDecoder``, wired as ``utils/model.py::LanGuideMedSeg``). Deep to shallow, before each up-block the pixel
tokens of that scale run

    self-attention (1 head, sinusoidal positions added to queries and keys)
    cross-attention to the report (4 heads; sinusoidal positions on the pixel queries and on the word keys),
    added with a learned scale that starts at 0.01,

where the report's token features are first projected to that scale's channels and to a fixed number of word
slots (Conv1d over the token axis, 24 / 12 / 9 slots at strides 32 / 16 / 8). Each up-block is MONAI's
``UnetrUpBlock`` (transposed conv x2, concatenation with the encoder skip, a conv block with BatchNorm); a
``SubpixelUpsample`` back to the input stride and ``UnetOutBlock`` give the logits. The positions are what lets
"lower left" ground on a place in the image.

``medref`` (the earlier decoder, kept as an option): every stage projected to ``decoder_dim`` channels,
pre-norm cross-attention (pixels -> words, padding masked) plus an MLP at all four scales, no positional encoding,
bilinear upsampling and a 3x3 conv fuse.

With ``text=None`` either decoder is a plain U-Net (the ``image_only`` architecture), so the two differ only in
the text guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TextGuide(nn.Module):
    """Pre-norm cross-attention (pixels -> words) plus an MLP, both residual."""

    def __init__(self, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.kv = nn.Linear(text_dim, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        kv = self.kv(text)
        # A row with every token padded would give NaN softmax; CLIP tokens always keep SOT/EOT, so never empty.
        a, _ = self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)
        q = q + a
        q = q + self.mlp(self.norm_mlp(q))
        return q.transpose(1, 2).reshape(b, c, h, w)


class GuideDecoder(nn.Module):
    def __init__(self, enc_channels: list[int], dim: int, text_dim: int | None, heads: int = 4, n_classes: int = 1):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in enc_channels)
        self.fuse = nn.ModuleList(conv_bn_relu(2 * dim, dim) for _ in enc_channels[:-1])
        n = len(enc_channels)
        self.guides = nn.ModuleList(TextGuide(dim, text_dim, heads) for _ in range(n)) if text_dim else None
        self.head = nn.Conv2d(dim, n_classes, 1)

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        if self.guides is not None:
            x = self.guides[-1](x, text, pad)
        for i in range(len(feats) - 2, -1, -1):
            skip = self.lateral[i](feats[i])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[i](torch.cat([x, skip], 1))
            if self.guides is not None:
                x = self.guides[i](x, text, pad)
        return self.head(x)


# ---- the official GuideDecoder -----------------------------------------------------------------------------------

OFFICIAL_TEXT_SLOTS = (24, 12, 9)  # word slots per guide layer, deep to shallow (utils/model.py::LanGuideMedSeg)


def sinusoid(n: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[n, dim] sinusoidal positions (Vaswani et al.; utils/layers.py::PositionalEncoding): sin on even, cos on odd
    channels, over a 1-D index (the official code flattens H x W in raster order)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe.to(dtype)


class GuideLayer(nn.Module):
    """One GuideDecoderLayer: positional self-attention over pixels, then report cross-attention scaled by a learned
    factor (init 0.01). ``x`` [B, N, C] pixel tokens; ``text`` [B, L, text_dim] token features."""

    def __init__(self, dim: int, text_dim: int, text_len: int, slots: int):
        super().__init__()
        self.text_project = nn.Sequential(nn.Conv1d(text_len, slots, kernel_size=1), nn.GELU(),
                                          nn.Linear(text_dim, dim), nn.LeakyReLU())
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, 1, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, 4 if dim % 4 == 0 else 1, batch_first=True)
        self.self_attn_norm, self.cross_attn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.scale = nn.Parameter(torch.tensor(0.01))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = self.text_project(text)
        n, c = x.shape[1], x.shape[2]
        pos_v = sinusoid(n, c, x.device, x.dtype)
        pos_t = sinusoid(t.shape[1], c, x.device, x.dtype)
        v = self.norm1(x)
        q = v + pos_v
        v = x + self.self_attn_norm(self.self_attn(q, q, v, need_weights=False)[0])
        v2 = self.norm2(v)
        a = self.cross_attn(v2 + pos_v, t + pos_t, t, need_weights=False)[0]
        return v + self.scale * self.cross_attn_norm(a)


class OfficialGuideDecoder(nn.Module):
    """Deep-to-shallow UnetrUpBlocks with a GuideLayer on each block's input (see the module docstring).

    ``enc_channels`` / ``enc_strides``: the encoder stages (shallow to deep); each up-block maps stage i+1 onto stage
    i's channels and resolution, so consecutive stages must halve the resolution (every timm CNN pyramid does)."""

    def __init__(self, enc_channels: list[int], enc_strides: list[int], text_dim: int | None, text_len: int,
                 n_classes: int = 1):
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetOutBlock
        from monai.networks.blocks.unetr_block import UnetrUpBlock
        from monai.networks.blocks.upsample import SubpixelUpsample

        n = len(enc_channels)
        if n < 2:
            raise ValueError("decoder: official needs at least two encoder stages (out_indices)")
        for i in range(n - 1):
            if enc_strides[i + 1] != 2 * enc_strides[i]:
                raise ValueError(f"decoder: official needs each encoder stage to halve the resolution; strides "
                                 f"{enc_strides} (choose consecutive out_indices)")
        self.ups = nn.ModuleList(UnetrUpBlock(2, enc_channels[i + 1], enc_channels[i], 3, 2, norm_name="BATCH")
                                 for i in range(n - 2, -1, -1))
        slots = [OFFICIAL_TEXT_SLOTS[min(k, len(OFFICIAL_TEXT_SLOTS) - 1)] for k in range(n - 1)]
        self.guides = (nn.ModuleList(GuideLayer(enc_channels[i + 1], text_dim, text_len, slots[k])
                                     for k, i in enumerate(range(n - 2, -1, -1))) if text_dim else None)
        stride = enc_strides[0]
        self.up_out = SubpixelUpsample(2, enc_channels[0], 24, stride) if stride > 1 else nn.Identity()
        self.head = UnetOutBlock(2, in_channels=24 if stride > 1 else enc_channels[0], out_channels=n_classes)

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        # ``pad`` is unused, as in the official layer: the Conv1d word-slot projection mixes every token position.
        x = feats[-1]
        for k, up in enumerate(self.ups):
            if self.guides is not None:
                b, c, h, w = x.shape
                x = self.guides[k](x.flatten(2).transpose(1, 2), text).transpose(1, 2).reshape(b, c, h, w)
            x = up(x, feats[len(feats) - 2 - k])
        return self.head(self.up_out(x))
