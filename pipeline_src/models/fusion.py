"""GuideDecoder-style fusion decoder: text tokens guide every decoder scale through cross-attention.

Deep-to-shallow U-Net decoder over the timm feature pyramid. At each scale the visual tokens
attend to the text tokens (queries = pixels, keys/values = words, padding masked), so a phrase
such as "lower right lung" can up-weight the pixels of that region before the skip from the
encoder refines the boundary. With ``text=None`` the same decoder is a plain U-Net
(the ``image_only`` architecture), so the two differ only in the text guidance.
"""

from __future__ import annotations

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
