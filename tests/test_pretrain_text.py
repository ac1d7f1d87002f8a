"""pretrain_text: MLM on the train split's texts only, same bytes twice on CPU, and train loads the folder.

    .venv/bin/python -m pytest -q tests/test_pretrain_text.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_src.errors import MedrefError
from pipeline_src.params import Params, load_raw
from pipeline_src.train.pretrain_text import build_vocab, run
from tests.train_fixtures import write_split_shard

TRAIN = ["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
         "Unilateral pulmonary infection, one infected area, middle right lung.",
         "Unilateral pulmonary infection, one infected area, lower  left lung.."]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt") / "shards"
    img, mask = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    manifest = {"dataset": "qata", "kind": "qata", "image_size": 16, "digest": "pt-0", "splits": {}}
    texts = {"train": [TRAIN[i % 3] for i in range(30)], "val": ["zebraword valonly lung"] * 4,
             "test": ["testonlyword lung"] * 4}
    for split, ts in texts.items():
        manifest["splits"][split] = write_split_shard(root, split, [(f"{split}_{i}", img, mask, t)
                                                                   for i, t in enumerate(ts)])
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _params(repo_root, **kw) -> Params:
    raw = load_raw(repo_root / "params.yaml")
    raw["pretrain_text"] = {**raw["pretrain_text"], "hidden_size": 16, "layers": 2, "heads": 2,
                            "intermediate_size": 32, "steps": 6, "batch_size": 8, **kw}
    return Params.model_validate(raw)


def test_same_bytes_twice_train_texts_only_and_train_loads_it(repo_root, shards, tmp_path):
    p = _params(repo_root)
    a = run(p, "qata", shards, tmp_path / "a")
    b = run(p, "qata", shards, tmp_path / "b")
    files = sorted(f.name for f in a.iterdir())
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "pretrain.json"} <= set(files)
    assert files == sorted(f.name for f in b.iterdir())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    vocab = (a / "vocab.txt").read_text().split()
    assert "pulmonary" in vocab and "left" in vocab
    assert not {"zebraword", "valonly", "testonlyword"} & set(vocab)  # val/test texts never read
    prov = json.loads((a / "pretrain.json").read_text())
    assert prov["n_texts"] == 30 and prov["inputs"]["shards"] == "pt-0" and "pretrain_text" in prov["params_keys"]
    other = run(_params(repo_root, seed=1), "qata", shards, tmp_path / "c")
    assert (other / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()

    from pipeline_src.models.params import ModelParams
    from pipeline_src.models.text import TextEncoder, build_tokenizer

    cfg = ModelParams(text_weights=f"hf-dir:{a}", context_length=24, text_train="frozen", embed_dim=16)
    tokens = build_tokenizer(24, cfg.text_weights)(TRAIN)
    emb, toks, pad = TextEncoder(cfg).eval()(tokens)
    assert toks.shape == (3, 24, 16) and not pad[:, 0].any()
    # the loaded tower is the pretrained encoder (not a fresh init): same hidden states as transformers' own load
    import transformers

    mlm = transformers.BertForMaskedLM.from_pretrained(a, local_files_only=True).eval()
    with torch.no_grad():
        ref = mlm.bert(input_ids=tokens, attention_mask=(~pad).long()).last_hidden_state
    torch.testing.assert_close(toks, ref, rtol=0, atol=0)


def test_vocab_is_deterministic_and_frequency_ordered():
    v = build_vocab(TRAIN * 3 + ["rare"], 200)
    assert v == build_vocab(list(reversed(TRAIN * 3 + ["rare"])), 200)
    assert v[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [w for w in v[5:] if len(w) > 1 and not w.startswith("##")]
    assert words.index("lung") < words.index("rare")
    small = build_vocab(TRAIN, 10)  # below the size cap the characters are still all kept: every word spells out
    assert {c for t in TRAIN for c in t.lower() if not c.isspace()} <= set(small) and len(small) > 10


def test_with_the_cxr_bert_vocab(repo_root, shards, tmp_path):
    from tests.hf_fixtures import require_cxr_bert_fixture

    vocab = require_cxr_bert_fixture() / "vocab.txt"
    out = run(_params(repo_root, vocab=str(vocab), steps=2), "qata", shards, tmp_path / "cxr")
    assert (out / "vocab.txt").read_bytes() == vocab.read_bytes()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 30522


def test_bad_vocab_is_one_clear_error(repo_root, shards, tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(MedrefError, match=r"pretrain_text.vocab: .*does not start with \[PAD\]"):
        run(_params(repo_root, vocab=str(bad)), "qata", shards, tmp_path / "out")
    with pytest.raises(MedrefError, match=r"pretrain_text.vocab: .*nope.txt is not a file"):
        run(_params(repo_root, vocab=str(tmp_path / "nope.txt")), "qata", shards, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_semi_medref_trains_on_the_pretrained_encoder_frozen(repo_root, tmp_path):
    from safetensors.torch import load_file

    from pipeline_src.train.train import run as train
    from tests.train_fixtures import make_dataset

    tiny = make_dataset(tmp_path / "data")
    enc = run(_params(repo_root), "qata", tiny["shards_dir"], tmp_path / "text")
    raw = load_raw(repo_root / "params.yaml")
    model = {"text_weights": f"hf-dir:{enc}", "context_length": 24, "text_pooling": "official", "text_head": "mlp",
             "text_train": "frozen", "embed_dim": 16, "decoder_dim": 16, "decoder_heads": 2}
    raw["regimes"]["tiny"] = {"dataset": next(iter(raw["datasets"])), "fraction": 0.25, "method": "semi_medref",
                              "train": {"model": model, "epochs": 1, "max_steps": 3, "batch_size": 4,
                                        "unlabelled_batch_size": 4, "val_max": 4, "precise_bn_batches": 1,
                                        "ssl": {"burn_in_epochs": 0, "ramp_epochs": 0.1}, "tpatchmix": {"p": 1.0}}}
    out = train(Params.model_validate(raw), "tiny", tiny["shards_dir"], tiny["labels_file"], tiny["split_file"],
                tmp_path / "model", tmp_path / "run")
    sd = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    pre = load_file(enc / "model.safetensors")
    frozen = {k.removeprefix("bert."): v for k, v in pre.items() if k.startswith("bert.")}
    tower = {k.removeprefix("text.tower.model."): v for k, v in sd.items() if k.startswith("text.tower.model.")}
    assert tower and all(torch.equal(v, frozen[k]) for k, v in tower.items())  # frozen: the pretrained weights
    history = json.loads((out / "live" / "metrics.json").read_text())
    assert "train_loss_unsup" in history  # the unlabelled branch (T-PatchMix joins with WordPiece) ran
