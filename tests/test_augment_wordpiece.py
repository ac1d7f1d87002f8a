"""The text-aware augmentations work with a WordPiece (CXR-BERT) tokenizer: the flip swaps the side tokens, PosAug
removes the position tokens.

    .venv/bin/python -m pytest -q tests/test_augment_wordpiece.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline_src.labels.text_parser import parse
from pipeline_src.models.text import build_tokenizer
from pipeline_src.train import augment
from tests.hf_fixtures import require_cxr_bert_fixture

A = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
B = "Unilateral pulmonary infection, one infected area, middle  Right lung.."


@pytest.fixture(scope="module")
def wordpiece():
    folder = require_cxr_bert_fixture()  # vocab.txt + tokenizer files are all a tokenizer needs
    tok = build_tokenizer(24, f"hf-dir:{folder}")
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)
    return tok, ref


def _batch(texts):
    ps = [parse(t) for t in texts]
    return {"images": torch.rand(len(texts), 1, 48, 48), "texts": list(texts), "spans": [p.spans for p in ps],
            "regions": torch.tensor([list(p.regions) for p in ps]), "known": torch.ones(len(texts), dtype=torch.bool)}


def _words(ids, ref):
    return [w for w in ref.convert_ids_to_tokens(ids) if w not in ("[PAD]", "[CLS]", "[SEP]")]


def test_flip_swaps_the_side_tokens(wordpiece):
    tok, ref = wordpiece
    out = augment.hflip(_batch([A, B]), torch.Generator().manual_seed(0), p=1.0)
    swap = {"left": "right", "right": "left"}
    for before, after in zip([A, B], out["texts"], strict=True):
        assert _words(tok([after])[0], ref) == [swap.get(w, w) for w in _words(tok([before])[0], ref)]


def test_posaug_removes_the_position_tokens(wordpiece):
    tok, ref = wordpiece
    cfg = SimpleNamespace(p=1.0, mode="unknown", unknown_token="unknown", neutral_phrase="a region of the lung")
    out = augment.posaug(_batch([A, B]), torch.Generator().manual_seed(0), cfg)
    for t in out["texts"]:
        words = _words(tok([t])[0], ref)
        assert "unknown" in words and not {"left", "right", "upper", "middle", "lower"} & set(words)
