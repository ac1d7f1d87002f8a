"""Real-format pretrained-model folders built offline for the encoder tests.

The shapes come from ``../shared/fixtures/hf`` (what a user has on disk for CXR-BERT-specialized, minus the
weights): its config.json (``model_type: cxr-bert`` + ``auto_map``) resized to a tiny BERT, its vocab.txt and
tokenizer files; the weights are a random ``BertForMaskedLM`` saved with ``save_pretrained``. Tests using it skip
when the fixture is absent, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HF_FIXTURES = REPO / ".." / "shared" / "fixtures" / "hf"
CXR_BERT = HF_FIXTURES / "BiomedVLP-CXR-BERT-specialized"
TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}


def require_cxr_bert_fixture() -> Path:
    if not (CXR_BERT / "config.json").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the Hugging Face fixture is missing at {CXR_BERT}")
        pytest.skip(f"Hugging Face fixture not found at {CXR_BERT}")
    return CXR_BERT


def tiny_cxr_bert(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(CXR-BERT-shaped folder, the plain transformers folder it was saved from)."""
    import torch
    import transformers

    src = require_cxr_bert_fixture()
    cfg = json.loads((src / "config.json").read_text())
    ref = root / "reference"
    torch.manual_seed(seed)
    bert_cfg = transformers.BertConfig(vocab_size=cfg["vocab_size"], **TINY)
    transformers.BertForMaskedLM(bert_cfg).save_pretrained(ref)
    cxr = root / "cxr-bert"
    cxr.mkdir()
    shutil.copy(ref / "model.safetensors", cxr / "model.safetensors")
    (cxr / "config.json").write_text(json.dumps({**cfg, **TINY}, indent=2))  # model_type cxr-bert, auto_map kept
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, cxr / f)
    return cxr, ref


def hub_cache_snapshot(cache: Path, repo_id: str, files: dict[str, Path], commit: str = "0" * 40) -> Path:
    """A Hugging Face hub-cache layout: models--owner--name/{refs/main, blobs/, snapshots/<commit>/<file> -> blob}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, path in files.items():
        blob = repo / "blobs" / f"blob-{name}"
        shutil.copy(path, blob)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap
