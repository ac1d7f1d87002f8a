"""Hugging Face text towers: a CXR-BERT-shaped folder loads without remote code, equals transformers' own load,
pools as the official code does, freezes as asked, and every bad folder is one clear error.

    .venv/bin/python -m pytest -q tests/test_text_hf.py
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline_src.errors import MedrefError
from pipeline_src.models.params import ModelParams
from pipeline_src.models.text import TextEncoder, build_tokenizer
from tests.hf_fixtures import hub_cache_snapshot, tiny_cxr_bert

TEXTS = ["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
         "Unilateral pulmonary infection, one infected area, middle  Right lung.."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny_cxr_bert(tmp_path_factory.mktemp("hf"))


def _cfg(weights: str, **kw) -> ModelParams:
    return ModelParams(text_weights=weights, context_length=24, embed_dim=16, **kw)


def test_cxr_bert_folder_equals_transformers_own_load(folders):
    import transformers

    cxr, ref = folders
    cfg = _cfg(f"hf-dir:{cxr}", text_pooling="official")
    enc = TextEncoder(cfg).eval()
    tokens = build_tokenizer(24, cfg.text_weights)(TEXTS)
    theirs = transformers.BertForMaskedLM.from_pretrained(ref, local_files_only=True).eval()
    with torch.no_grad():
        hidden, mask = enc.tower(tokens)
        out = theirs(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True)
        _, toks, pad = enc(tokens)
    assert len(hidden) == len(out.hidden_states) == 4  # embeddings + 3 layers
    for a, b in zip(hidden, out.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(toks, out.hidden_states[-1], rtol=0, atol=0)
    assert torch.equal(pad, tokens == 0)


def test_tokenizer_is_lower_case_wordpiece_padded_to_the_length(folders):
    from transformers import BertTokenizerFast

    cxr, _ = folders
    tok = build_tokenizer(24, f"hf-dir:{cxr}")
    ids = tok(TEXTS)
    assert ids.shape == (2, 24)
    ref = BertTokenizerFast(str(cxr / "vocab.txt"), do_lower_case=True)
    expect = ref(TEXTS, padding="max_length", max_length=24, truncation=True)["input_ids"]
    assert ids.tolist() == expect
    words = ref.convert_ids_to_tokens(ids[0])
    assert words[0] == "[CLS]" and "left" in words and "Left" not in words


def test_official_pooling_is_the_mean_over_positions_of_layers_1_2_last(folders):
    cxr, _ = folders
    w = f"hf-dir:{cxr}"
    tokens = build_tokenizer(24, w)(TEXTS)
    for pooling in ("official", "masked"):
        enc = TextEncoder(_cfg(w, text_pooling=pooling, text_head="mlp")).eval()
        with torch.no_grad():
            hidden, mask = enc.tower(tokens)
            emb, _, _ = enc(tokens)
            layers = (hidden[1] + hidden[2] + hidden[3]) / 3
            if pooling == "official":  # the GuideDecoder code: .mean(2).mean(1), pad positions included
                feat = torch.stack([hidden[1], hidden[2], hidden[-1]]).permute(1, 0, 2, 3).mean(2).mean(1)
            else:
                feat = torch.stack([layers[i, mask[i]].mean(0) for i in range(len(TEXTS))])
            torch.testing.assert_close(emb, enc.proj(feat))
            torch.testing.assert_close(feat, layers.mean(1) if pooling == "official" else feat)
    assert [type(m).__name__ for m in enc.proj] == ["Linear", "LayerNorm", "GELU", "Linear"]
    torch.manual_seed(0)
    a = TextEncoder(_cfg(w, text_pooling="official")).eval()(tokens)[0]
    torch.manual_seed(0)
    b = TextEncoder(_cfg(w, text_pooling="masked")).eval()(tokens)[0]
    assert not torch.allclose(a, b)  # the two differ: padding counts in one only


def test_freeze_modes(folders):
    cxr, _ = folders
    w = f"hf-dir:{cxr}"
    frozen = TextEncoder(_cfg(w, text_train="frozen", text_head="mlp"))
    assert not any(p.requires_grad for p in frozen.tower.parameters())
    assert all(p.requires_grad for p in frozen.proj.parameters())
    last = TextEncoder(_cfg(w, text_train="last_k", text_train_k=1))
    trainable = {n for n, p in last.tower.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.layer.2.") for n in trainable)
    full = TextEncoder(_cfg(w))
    assert all(p.requires_grad for p in full.tower.parameters())
    with pytest.raises(MedrefError, match="text_train_k: 9 exceeds the text tower's 3 layers"):
        TextEncoder(_cfg(w, text_train="last_k", text_train_k=9))


def test_hf_repo_id_resolves_from_the_local_cache_only(folders, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cxr, _ = folders
    files = {f.name: f for f in cxr.iterdir()}
    snap = hub_cache_snapshot(tmp_path / "hub", "microsoft/BiomedVLP-CXR-BERT-specialized", files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    w = "hf:microsoft/BiomedVLP-CXR-BERT-specialized"
    tokens = build_tokenizer(24, w)(TEXTS)
    torch.manual_seed(0)  # the projection head is random init
    a = TextEncoder(_cfg(w)).eval()(tokens)[0]
    torch.manual_seed(0)
    b = TextEncoder(_cfg(f"hf-dir:{cxr}")).eval()(tokens)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the cache lacks the weights: the error names the file and the folder
    (snap / "model.safetensors").unlink()
    with pytest.raises(MedrefError, match=r"snapshots lacks model\.safetensors or .*pytorch_model\.bin"):
        TextEncoder(_cfg(w))
    with pytest.raises(MedrefError, match=r"microsoft/other is not in the local Hugging Face cache: .*models--micro"):
        TextEncoder(_cfg("hf:microsoft/other"))


def test_bad_folders_are_one_clear_error(folders, tmp_path):
    cxr, _ = folders
    bad = tmp_path / "bad"
    shutil.copytree(cxr, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(MedrefError, match=r"bad lacks model\.safetensors or pytorch_model\.bin"):
        TextEncoder(_cfg(f"hf-dir:{bad}"))
    with pytest.raises(MedrefError, match="is not a folder"):
        TextEncoder(_cfg(f"hf-dir:{tmp_path / 'nope'}"))
    # remote code: a model type transformers does not define, reachable only through the auto_map
    remote = tmp_path / "remote"
    shutil.copytree(cxr, remote)
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**cfg, "model_type": "my-bert"}))
    with pytest.raises(MedrefError, match=r"model_type 'my-bert'.*auto_map points at remote code.*never executes"):
        TextEncoder(_cfg(f"hf-dir:{remote}"))
    # wrong shapes: weights of another size than config.json says
    wrong = tmp_path / "wrong"
    shutil.copytree(cxr, wrong)
    (wrong / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "intermediate_size": 128}))
    with pytest.raises(MedrefError, match=r"text_weights: .*only \d+ of the text tower"):
        TextEncoder(_cfg(f"hf-dir:{wrong}"))
    with pytest.raises(MedrefError, match="context_length: 100 exceeds"):
        TextEncoder(ModelParams(text_weights=f"hf-dir:{cxr}", context_length=100))


def test_pooling_needs_a_transformers_tower():
    with pytest.raises(ValueError, match="text_pooling"):
        ModelParams(text_pooling="official")


def test_segmodel_with_a_frozen_cxr_bert_trains_only_the_head(folders, tmp_path):
    from pipeline_src.models import build_model

    cxr, _ = folders
    cfg = ModelParams(text_weights=f"hf-dir:{cxr}", context_length=24, text_pooling="official", text_head="mlp",
                      text_train="frozen", embed_dim=16, decoder_dim=16, decoder_heads=2)
    net = build_model(cfg)
    tok = build_tokenizer(cfg.context_length, cfg.text_weights)
    out = net(torch.rand(2, 1, 64, 64), tok(TEXTS))
    assert out["logits"].shape == (2, 1, 64, 64) and out["txt_emb"].shape == (2, 16)
    (out["logits"].mean() + out["txt_emb"].sum()).backward()
    assert all(p.grad is None for p in net.text.tower.parameters())
    assert net.text.proj[0].weight.grad is not None
