"""The segmentation model: image encoder + (optional) text encoder + GuideDecoder.

Forward contract (every architecture in ``pipeline_src.models.ARCHS`` follows it, so the training
loop, the methods and the predictor never branch on the architecture)::

    model(images [B,1,H,W], tokens LongTensor[B,L] | None) -> {
        "logits":  [B,C,H,W]  logits at input resolution (C = cfg.n_classes: 1 = binary sigmoid, else softmax),
        "img_emb": [B,D]      pooled image embedding (ITCL, alignment score),
        "txt_emb": [B,D] | None  pooled text embedding,
        "feats":   list of encoder feature maps, shallow to deep (dispersive-loss hook),
    }
    model.uses_text: bool  (False -> the loop passes tokens=None and skips ITCL)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.models.encoders import ImageEncoder, normalise, resolve_image_norm
from pipeline_src.models.fusion import GuideDecoder, OfficialGuideDecoder
from pipeline_src.models.text import TextEncoder


class SegModel(nn.Module):
    def __init__(self, cfg, uses_text: bool = True):
        super().__init__()
        self.uses_text = uses_text
        self.image = ImageEncoder(cfg.image_encoder, cfg.image_weights, tuple(cfg.out_indices),
                                  cfg.allow_partial_weights)
        self.norm = resolve_image_norm(cfg.image_norm, cfg.image_weights)
        self.text = None
        text_dim = None
        if uses_text:
            self.text = TextEncoder(cfg)
            text_dim = self.text.width
        n_classes = getattr(cfg, "n_classes", 1)
        if cfg.decoder == "official":
            self.decoder = OfficialGuideDecoder(self.image.channels, self.image.strides, text_dim, cfg.context_length,
                                                n_classes)
        else:
            self.decoder = GuideDecoder(self.image.channels, cfg.decoder_dim, text_dim, cfg.decoder_heads, n_classes)
        self.img_proj = nn.Linear(self.image.channels[-1], cfg.embed_dim)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None) -> dict:
        # Centre the [0,1] grey input (or ImageNet-normalise it for ImageNet weights): raw X-ray pixels give the
        # stem conv a tiny variance (~1e-3), and BN's running variance (initialised at 1, momentum 0.1) then needs
        # hundreds of steps to come down; short runs predicted nothing in eval mode until this was added.
        feats = self.image(normalise(images, self.norm))
        txt_emb = toks = pad = None
        if self.uses_text:
            txt_emb, toks, pad = self.text(tokens)
        logits = self.decoder(feats, toks, pad)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        img_emb = self.img_proj(feats[-1].mean(dim=(2, 3)))
        return {"logits": logits, "img_emb": img_emb, "txt_emb": txt_emb, "feats": feats}


def build_textguided(cfg) -> SegModel:
    return SegModel(cfg, uses_text=True)


def build_image_only(cfg) -> SegModel:
    return SegModel(cfg, uses_text=False)
