"""Text encoders behind one interface: ``TextEncoder(cfg)`` and ``build_tokenizer(context_length, weights)``.

``train.model.text_weights`` picks the tower:
- null: an open_clip CLIP text tower built from the size keys, random init (the default);
- a local checkpoint file: a CLIP/open_clip state dict for that tower (``text.``-prefixed keys of a CustomTextCLIP
  work too);
- ``local-dir:<folder>`` holding an open_clip model (open_clip_config.json + weights), e.g. a user's BiomedCLIP; the
  folder's text tower *and* tokenizer are used and the size keys are ignored;
- ``hf-dir:<folder>`` / ``hf:<owner>/<name>``: a Hugging Face transformers BERT-family model (CXR-BERT included)
  from a folder or the local HF cache, offline (``pipeline_src/models/text_hf.py``).

Options (``train.model``): ``text_pooling`` (``tower``: the tower's own pooled output, [CLS] for a transformers
tower; ``official``: the Semi-MedRef / GuideDecoder code, the mean of hidden states 1, 2 and the last, averaged over
all ``context_length`` positions, padding included; ``masked``: the same over the real tokens only),
``text_head`` (``linear``, or ``mlp`` = Linear -> LayerNorm -> GELU -> Linear as in that code) and ``text_train``
(``full``, ``frozen``, ``last_k`` = the last ``text_train_k`` layers train). The official setting:
``text_weights: hf:microsoft/BiomedVLP-CXR-BERT-specialized, text_pooling: official, text_head: mlp,
text_train: frozen, context_length: 24``.

    .venv/bin/python -m pytest -q tests/test_text_hf.py
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from pipeline_src.errors import MedrefError
from pipeline_src.models.encoders import check_matched, read_state_dict
from pipeline_src.models.text_hf import HFTokenizer, HFTower, is_hf

LOCAL_DIR_CONFIG = "open_clip_config.json"  # what open_clip's local-dir: loader reads first

# open_clip is imported where a CLIP tower or tokenizer is built, not at import (issue 25). Its package import
# (open_clip/__init__.py) loads its whole model zoo, CoCa's transformers included (~2-4 s); the default tower needs
# only two of its modules, open_clip.transformer (TextTransformer) and open_clip.tokenizer (SimpleTokenizer).
# ``_open_clip`` loads just those; a ``local-dir:`` tower (open_clip.create_model) imports the whole package.


def _open_clip(name: str):
    """The module ``open_clip.<name>`` without running open_clip/__init__.py when the package is not imported yet.

    A bare package object stands in for ``open_clip`` while the module and its relative imports (.utils,
    .pos_embed) load; then it and they leave sys.modules again (we keep the module objects), so that a later
    ``import open_clip`` (a ``local-dir:`` tower, a user's code) loads the real package whole, its submodules as
    its attributes. Its classes are then new objects of the same code: the same weights and the same numerics."""
    import importlib
    import importlib.util
    import sys
    import types

    full = f"open_clip.{name}"
    if "open_clip" in sys.modules:
        return importlib.import_module(full)
    if full in _OPEN_CLIP:
        return _OPEN_CLIP[full]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MedrefError("the CLIP text tower needs open_clip (pip install open_clip_torch)")
    stub = types.ModuleType("open_clip")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__spec__ = spec
    sys.modules["open_clip"] = stub
    try:
        _OPEN_CLIP[full] = importlib.import_module(full)
    finally:
        for k in [k for k, m in sys.modules.items() if k.startswith("open_clip.") or m is stub]:
            _OPEN_CLIP.setdefault(k, sys.modules.pop(k))
    return _OPEN_CLIP[full]


_OPEN_CLIP: dict = {}  # the open_clip modules _open_clip loaded, by name


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int):
    # Loading the BPE vocab takes ~0.5 s; cache per length (tokenizers are stateless).
    return _open_clip("tokenizer").SimpleTokenizer(context_length=context_length)


def build_tokenizer(context_length: int, weights: str | None = None):
    """list[str] -> LongTensor[B, context_length] (truncated; CLIP: the EOT token kept last, pad 0; transformers:
    [CLS] ... [SEP], the tower's pad id)."""
    if is_hf(weights):
        return HFTokenizer(weights, context_length)
    if weights and weights.startswith("local-dir:"):
        import open_clip

        return open_clip.get_tokenizer(local_dir(weights), context_length=context_length)
    return _simple_tokenizer(context_length)


def defines_architecture(weights: str | None) -> bool:
    """Whether the ``text_weights`` source also defines the tower's architecture and tokenizer (so a saved model
    needs it to be rebuilt), rather than only initial weights."""
    return bool(weights) and (weights.startswith("local-dir:") or is_hf(weights))


class TextEncoder(nn.Module):
    """Returns pooled text embedding [B, embed_dim], token features [B, L, width] and a pad mask [B, L]."""

    def __init__(self, cfg, load_weights: bool = True):
        super().__init__()
        weights = cfg.text_weights
        self.hf = is_hf(weights)
        self.pooling = cfg.text_pooling
        if self.hf:
            self.tower = HFTower(weights, cfg.context_length, load_weights, cfg.allow_partial_weights)
            self.width = out_dim = self.tower.width
        elif weights and weights.startswith("local-dir:"):
            import open_clip

            clip = open_clip.create_model(local_dir(weights), pretrained=None, load_weights=True)
            self.tower = _text_tower_of(clip, weights)
            self.tower.output_tokens = True
            self.width = getattr(self.tower, "width", cfg.text_width)
            out_dim = getattr(self.tower, "output_dim", cfg.embed_dim) or self.width
        else:
            TextTransformer = _open_clip("transformer").TextTransformer

            # Pad id 0 + argmax pooling is CLIP's convention (the EOT token has the largest id).
            self.tower = TextTransformer(context_length=cfg.context_length, width=cfg.text_width,
                                         heads=cfg.text_heads, layers=cfg.text_layers, output_dim=cfg.embed_dim,
                                         output_tokens=True)
            self.width = cfg.text_width
            out_dim = getattr(self.tower, "output_dim", cfg.embed_dim) or self.width
            if weights and load_weights:
                _load_text_weights(self.tower, Path(weights), cfg.allow_partial_weights)
        if self.pooling != "tower" and not self.hf:
            raise MedrefError(f"train.model.text_pooling: {self.pooling!r} needs a transformers text tower "
                              "(text_weights: hf-dir:<folder> or hf:<repo id>); open_clip towers pool themselves")
        e = cfg.embed_dim
        if cfg.text_head == "mlp":
            self.proj = nn.Sequential(nn.Linear(out_dim, e), nn.LayerNorm(e), nn.GELU(), nn.Linear(e, e))
        else:
            # Always project to the model's shared embedding size, so user towers of any width plug in.
            self.proj = nn.Identity() if out_dim == e else nn.Linear(out_dim, e)
        set_trainable(self.tower, cfg.text_train, cfg.text_train_k)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.hf:
            pooled, toks = self.tower(tokens)
            return self.proj(pooled), toks, tokens == 0
        hidden, mask = self.tower(tokens)
        toks = hidden[-1]
        if self.pooling == "tower":
            pooled = toks[:, 0]  # [CLS]
        else:
            layers = torch.stack([hidden[1], hidden[2], hidden[-1]]).mean(0)  # [B, L, width]
            if self.pooling == "official":
                pooled = layers.mean(1)
            else:
                w = mask.unsqueeze(-1).to(layers.dtype)
                pooled = (layers * w).sum(1) / w.sum(1).clamp_min(1)
        return self.proj(pooled), toks, ~mask


def _layers(tower: nn.Module) -> nn.ModuleList:
    if isinstance(tower, HFTower):
        return tower.layers()
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    if blocks is None:
        raise MedrefError(f"train.model.text_train: last_k needs a tower with a layer list; {type(tower).__name__} "
                          "has none (use full or frozen)")
    return blocks


def set_trainable(tower: nn.Module, mode: str, k: int) -> None:
    """``full``: every tower weight trains; ``frozen``: none (the projection head still does); ``last_k``: the last
    ``k`` layers (plus an open_clip tower's final norm and projection, which sit after them)."""
    if mode == "full":
        return
    for p in tower.parameters():
        p.requires_grad_(False)
    if mode == "frozen":
        return
    layers = _layers(tower)
    if k > len(layers):
        raise MedrefError(f"train.model.text_train_k: {k} exceeds the text tower's {len(layers)} layers")
    for layer in list(layers)[len(layers) - k:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    for name in ("ln_final", "text_projection"):
        part = getattr(tower, name, None)
        if isinstance(part, (nn.Module, nn.Parameter)):
            part.requires_grad_(True)


def _text_tower_of(clip: nn.Module, source: str) -> nn.Module:
    if hasattr(clip, "text"):  # CustomTextCLIP (BiomedCLIP, CoCa ...)
        return clip.text
    raise MedrefError(
        f"train.model.text_weights: {source}: only open_clip CustomTextCLIP models (with a .text tower) are "
        "supported for local-dir:; for plain CLIP pass its checkpoint file instead"
    )


def _load_text_weights(tower: nn.Module, path: Path, allow_partial: bool = False) -> None:
    key = "train.model.text_weights"
    if not path.is_file():
        raise MedrefError(f"{key}: {path} is not a file (or use local-dir:<folder>, hf-dir:<folder>, hf:<repo id>)")
    sd = read_state_dict(path, key)
    own = tower.state_dict()
    picked = {}
    for k, v in sd.items():
        k = k.removeprefix("module.").removeprefix("text.")
        if k in own and own[k].shape == v.shape:
            picked[k] = v
    check_matched(picked, own, path, key, "text tower (check width/layers)", allow_partial)
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
