"""Hugging Face ``transformers`` text towers (BERT family, CXR-BERT included) from local files only.

``train.model.text_weights`` names one as
- ``hf-dir:<folder>``: a ``save_pretrained`` folder (config.json, model.safetensors / pytorch_model.bin, vocab.txt),
  e.g. ``hf-dir:models/text/qata`` (the ``pretrain_text`` stage's output) or a copy of a hub repository;
- ``hf:<owner>/<name>``: that repository's snapshot in the local Hugging Face cache (``HF_HUB_CACHE``). Nothing is
  downloaded; missing files are named with the cache folder.

A CXR-BERT folder (``model_type: cxr-bert`` with an ``auto_map`` into the hub repository's Python files) loads
without running that code: ``CXRBertModel`` is a ``BertForMaskedLM`` subclass, so its config is a ``BertConfig``
and its ``bert.*`` tensors fill a ``BertModel``; its tokenizer is the lower-case WordPiece ``vocab.txt``.

    .venv/bin/python -m pytest -q tests/test_text_hf.py
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

from pipeline_src.errors import MedrefError
from pipeline_src.models.encoders import check_matched, hub_snapshot, read_state_dict

TEXT_KEY = "train.model.text_weights"
PREFIXES = ("hf-dir:", "hf:")
CONFIG = "config.json"
VOCAB = "vocab.txt"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# CXR-BERT's remote classes subclass BERT's; its config adds only projection_size (for a head medref does not use)
BERT_ALIASES = ("bert", "cxr-bert")
# config.json keys that describe the file, not the architecture
_NOT_ARCH = ("auto_map", "architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype",
             "dtype", "projection_size")


def is_hf(weights: str | None) -> bool:
    return bool(weights) and weights.startswith(PREFIXES)


def hf_folder(weights: str, need_weights: bool = True) -> Path:
    """The local folder a ``hf-dir:`` / ``hf:`` spec names, checked to hold config, vocab and (optionally) weights."""
    if weights.startswith("hf:"):
        return hub_snapshot(weights.removeprefix("hf:"), (CONFIG,), TEXT_KEY, any_of=WEIGHTS if need_weights else ())
    folder = Path(weights.removeprefix("hf-dir:"))
    if not folder.is_dir():
        raise MedrefError(f"{TEXT_KEY}: {weights}: {folder} is not a folder")
    missing = [f for f in (CONFIG,) if not (folder / f).is_file()]
    if need_weights and not any((folder / f).is_file() for f in WEIGHTS):
        missing.append(" or ".join(WEIGHTS[::2]))
    if missing:
        raise MedrefError(f"{TEXT_KEY}: {weights}: {folder} lacks {', '.join(missing)} (a transformers folder saved "
                          "with save_pretrained holds config.json, the weights and the tokenizer files)")
    return folder


def hf_config(folder: Path, source: str):
    """A transformers config for the folder, never running remote code."""
    import transformers

    try:
        raw = json.loads((folder / CONFIG).read_text())
    except ValueError as e:
        raise MedrefError(f"{TEXT_KEY}: {source}: {folder / CONFIG} is not valid JSON ({e})") from e
    model_type = raw.get("model_type")
    arch = {k: v for k, v in raw.items() if k not in _NOT_ARCH}
    if model_type in BERT_ALIASES:
        return transformers.BertConfig(**arch)
    if model_type in transformers.CONFIG_MAPPING:
        return transformers.AutoConfig.for_model(model_type, **arch)
    remote = " (its auto_map points at remote code)" if raw.get("auto_map") else ""
    raise MedrefError(f"{TEXT_KEY}: {source}: {folder / CONFIG} has model_type {model_type!r}, not a transformers "
                      f"architecture{remote}; medref never executes a repository's Python code. Supported: "
                      f"{', '.join(BERT_ALIASES)} and the model types transformers itself defines")


def _state_dict(folder: Path, source: str) -> tuple[dict[str, torch.Tensor], Path]:
    for name in WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):  # sharded: weight_map tensor -> shard file
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise MedrefError(f"{TEXT_KEY}: {source}: {path} is not a shard index ({e})") from e
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(read_state_dict(folder / shard, TEXT_KEY))
            return sd, path
        return read_state_dict(path, TEXT_KEY), path
    raise MedrefError(f"{TEXT_KEY}: {source}: {folder} has none of {', '.join(WEIGHTS)}")


class HFTower(nn.Module):
    """A transformers encoder; ``forward(tokens)`` -> (hidden states of every layer, attention mask)."""

    def __init__(self, weights: str, context_length: int, load_weights: bool = True, allow_partial: bool = False):
        super().__init__()
        import transformers

        folder = hf_folder(weights, need_weights=load_weights)
        config = hf_config(folder, weights)
        if context_length > getattr(config, "max_position_embeddings", context_length):
            raise MedrefError(f"train.model.context_length: {context_length} exceeds {weights}'s "
                              f"max_position_embeddings {config.max_position_embeddings}")
        if isinstance(config, transformers.BertConfig):
            self.model = transformers.BertModel(config, add_pooling_layer=False)  # the MLM checkpoints have no pooler
        else:
            self.model = transformers.AutoModel.from_config(config)
        self.width = config.hidden_size
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        if load_weights:
            sd, path = _state_dict(folder, weights)
            own = self.model.state_dict()
            prefix = f"{self.model.base_model_prefix}."
            picked = {}
            for k, v in sd.items():
                k = k.removeprefix(prefix)
                if k in own and own[k].shape == v.shape:
                    picked[k] = v
            check_matched(picked, own, path, TEXT_KEY, "text tower (check the folder's config.json)", allow_partial)
            self.model.load_state_dict(picked, strict=False)

    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def forward(self, tokens: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        mask = tokens != self.pad_id
        out = self.model(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True, return_dict=True)
        return out.hidden_states, mask


@functools.lru_cache(maxsize=4)
def _wordpiece(vocab: str, lower: bool):
    from transformers import BertTokenizerFast

    # positional: transformers 5 takes the vocab (path or dict) as ``vocab`` and silently ignores ``vocab_file=``,
    # which left a tokenizer that maps every word to [UNK]
    tok = BertTokenizerFast(vocab, do_lower_case=lower)
    if tok.vocab_size < 10:
        raise MedrefError(f"{TEXT_KEY}: {vocab}: only {tok.vocab_size} WordPiece entries read; not a vocab.txt")
    return tok


class HFTokenizer:
    """list[str] -> LongTensor[B, context_length]: padded to the full length and truncated (the official code's
    ``padding='max_length', truncation=True``), [CLS] ... [SEP] kept."""

    def __init__(self, weights: str, context_length: int):
        folder = hf_folder(weights, need_weights=False)
        self.context_length = context_length
        if (folder / VOCAB).is_file():
            # WordPiece: read vocab.txt directly, so a tokenizer_config naming a remote class (CXRBertTokenizer) is
            # never resolved; lower-case unless the folder says otherwise
            tc = folder / "tokenizer_config.json"
            lower = json.loads(tc.read_text()).get("do_lower_case", True) if tc.is_file() else True
            self.tok = _wordpiece(str(folder / VOCAB), bool(lower))
        else:
            from transformers import AutoTokenizer

            try:
                self.tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            except (OSError, ValueError) as e:
                raise MedrefError(f"{TEXT_KEY}: {weights}: {folder} has no {VOCAB} and transformers cannot build its "
                                  f"tokenizer offline without remote code ({e})") from e

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tok(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                       return_tensors="pt")
        return enc["input_ids"]
