"""Text encoder: an open_clip CLIP text tower built from a small config, and its tokenizer.

Random init offline by default. ``train.model.text_weights`` may name
- a local checkpoint file (a CLIP/open_clip state dict; ``text.``-prefixed keys of a CustomTextCLIP work too), or
- ``local-dir:<folder>`` holding an open_clip model (open_clip_config.json + weights), e.g. a user's
  BiomedCLIP; the folder's text tower *and* tokenizer are used and the size keys are ignored.
"""

from __future__ import annotations

import functools
from pathlib import Path

import open_clip
import torch
from open_clip.transformer import TextTransformer
from torch import nn

from pipeline_src.errors import MedrefError
from pipeline_src.models.encoders import check_matched, read_state_dict

LOCAL_DIR_CONFIG = "open_clip_config.json"  # what open_clip's local-dir: loader reads first


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int) -> open_clip.tokenizer.SimpleTokenizer:
    # Loading the BPE vocab takes ~0.5 s; cache per length (tokenizers are stateless).
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def build_tokenizer(context_length: int, weights: str | None = None):
    """list[str] -> LongTensor[B, context_length] (truncated; the CLIP EOT token kept last)."""
    if weights and weights.startswith("local-dir:"):
        return open_clip.get_tokenizer(local_dir(weights), context_length=context_length)
    return _simple_tokenizer(context_length)


class TextEncoder(nn.Module):
    """Returns pooled text embedding [B, embed_dim], token features [B, L, width] and a pad mask [B, L]."""

    def __init__(self, width: int, layers: int, heads: int, context_length: int, embed_dim: int,
                 weights: str | None = None):
        super().__init__()
        if weights and weights.startswith("local-dir:"):
            clip = open_clip.create_model(local_dir(weights), pretrained=None, load_weights=True)
            self.tower = _text_tower_of(clip, weights)
            self.tower.output_tokens = True
            self.width = getattr(self.tower, "width", width)
        else:
            # Pad id 0 + argmax pooling is CLIP's convention (the EOT token has the largest id).
            self.tower = TextTransformer(context_length=context_length, width=width, heads=heads, layers=layers,
                                         output_dim=embed_dim, output_tokens=True)
            self.width = width
            if weights:
                _load_text_weights(self.tower, Path(weights))
        out_dim = getattr(self.tower, "output_dim", embed_dim) or self.width
        # Always project to the model's shared embedding size, so user towers of any width plug in.
        self.proj = nn.Identity() if out_dim == embed_dim else nn.Linear(out_dim, embed_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled, toks = self.tower(tokens)
        pad = tokens == 0
        return self.proj(pooled), toks, pad


def _text_tower_of(clip: nn.Module, source: str) -> nn.Module:
    if hasattr(clip, "text"):  # CustomTextCLIP (BiomedCLIP, CoCa ...)
        return clip.text
    raise MedrefError(
        f"train.model.text_weights: {source}: only open_clip CustomTextCLIP models (with a .text tower) are "
        "supported for local-dir:; for plain CLIP pass its checkpoint file instead"
    )


def _load_text_weights(tower: TextTransformer, path: Path) -> None:
    key = "train.model.text_weights"
    if not path.is_file():
        raise MedrefError(f"{key}: {path} is not a file (or use local-dir:<folder>)")
    sd = read_state_dict(path, key)
    own = tower.state_dict()
    picked = {}
    for k, v in sd.items():
        k = k.removeprefix("module.").removeprefix("text.")
        if k in own and own[k].shape == v.shape:
            picked[k] = v
    check_matched(picked, own, path, key, "text tower (check width/layers)")
    tower.load_state_dict(picked, strict=False)


def local_dir(weights: str) -> str:
    """Check a ``local-dir:<folder>`` open_clip model before open_clip opens it (it raises a bare
    FileNotFoundError); returns ``weights`` unchanged."""
    folder = Path(weights.removeprefix("local-dir:"))
    key = "train.model.text_weights"
    if not folder.is_dir():
        raise MedrefError(f"{key}: {weights}: {folder} is not a folder")
    if not (folder / LOCAL_DIR_CONFIG).is_file():
        raise MedrefError(f"{key}: {weights}: {folder} has no {LOCAL_DIR_CONFIG}; a local-dir: folder is an "
                          f"open_clip model saved with its config ({LOCAL_DIR_CONFIG} + weights)")
    return weights
