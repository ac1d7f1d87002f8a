"""The text-aware augmentations work with a WordPiece (CXR-BERT) tokenizer: the flip swaps the side tokens, PosAug
removes the position tokens, and T-PatchMix's joined text keeps both reports' positions within 24 tokens.

    .venv/bin/python -m pytest -q tests/test_augment_wordpiece.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline_src.labels.text_parser import parse
from pipeline_src.models.text import JoinedText, build_tokenizer
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


def test_tpatchmix_joined_text_keeps_both_positions_within_24_tokens(wordpiece):
    tok, ref = wordpiece
    batch = _batch([A, B])
    for seed in range(20):  # a seed whose permutation pairs the two samples
        gen = torch.Generator().manual_seed(seed)
        probs = torch.full((2, 1, 48, 48), 0.9)
        mixed, *_ = augment.tpatchmix(batch, probs, torch.ones(2, 1, 48, 48), gen, block=16, p=1.0)
        if any(isinstance(t, JoinedText) for t in mixed["texts"]):
            break
    joined = next(t for t in mixed["texts"] if isinstance(t, JoinedText))
    assert str(joined) == f"{joined.parts[0]} and {joined.parts[1]}"  # the text itself is the paper's join
    pos = ("left", "right", "upper", "middle", "lower")
    words = _words(tok([joined])[0], ref)
    plain = _words(tok([str(joined)])[0], ref)  # what truncating the plain string at 24 tokens would give
    assert len(ref(str(joined))["input_ids"]) > 24  # the join does not fit CXR-BERT's 24 tokens
    expect = [w for part in joined.parts for w in _words(tok([part])[0], ref) if w in pos]
    assert [w for w in words if w in pos] == expect  # both reports' positions, in order
    assert len(ref(fit := " ".join(words))["input_ids"]) <= 24, fit  # nothing of it was truncated
    assert [w for w in plain if w in pos] != expect  # plain truncation cuts the second report's positions
    # a text that fits is tokenized unchanged
    short = JoinedText("left lung", "right lung")
    assert tok([short]).tolist() == tok(["left lung and right lung"]).tolist()
