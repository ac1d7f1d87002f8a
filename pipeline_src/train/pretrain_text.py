"""pretrain_text@<dataset>: BERT-style masked-language modelling on the TRAIN split's report texts.

    medref pretrain_text qata        # models/text/qata/ (a transformers folder), then
    dvc exp run -S train.model.text_weights=hf-dir:models/text/qata -S train.model.text_train=frozen

Reads ``data/shards/<dataset>/train`` (labelled and unlabelled alike: the split into labelled images is about masks,
every training text may be read; val and test texts never are) and ``params.pretrain_text``. The vocabulary is a
WordPiece ``vocab.txt`` (``pretrain_text.vocab``, e.g. CXR-BERT's) or, when that is null, one built from the train
texts: the special tokens, every character seen (alone and as ``##`` continuation), then the most frequent
lower-cased words, ties broken by the word, so the same texts give the same vocabulary.

Writes ``models/text/<dataset>/`` atomically, in transformers format (``save_pretrained``: config.json,
model.safetensors, vocab.txt, tokenizer files) plus ``pretrain.json`` (params, inputs' digests, the loss curve).
A ``BertForMaskedLM``: train loads its ``bert.*`` encoder through ``hf-dir:`` like a CXR-BERT folder.

Deterministic on CPU: init from ``pretrain_text.seed``; batch ``step`` and its masks are drawn from a generator
seeded by (seed, step); deterministic kernels and ``base.cpu_threads`` threads, so the same inputs give the same
bytes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from pipeline_src import provenance
from pipeline_src.data.shards import load_manifest, read_table, require_current
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import atomic_dir, write_json
from pipeline_src.utils.stage import torch_device

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PROVENANCE = "pretrain.json"


def train_texts(shards_dir: Path) -> list[str]:
    """The non-empty report texts of the train split, in shard (id) order."""
    table = read_table(shards_dir, "train", columns=["id", "text"])
    return [t for t in table.column("text").to_pylist() if t and t.strip()]


def build_vocab(texts: list[str], size: int) -> list[str]:
    """A WordPiece vocabulary for ``texts`` (deterministic; see the module docstring)."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    chars = sorted({c for w in words for c in w})
    vocab = [*SPECIALS, *chars, *(f"##{c}" for c in chars)]
    seen = set(vocab)
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= size:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def _tokenizer(vocab_file: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(str(vocab_file), do_lower_case=True)  # positional: transformers 5 ignores vocab_file=


def mask_tokens(ids, special, cfg, vocab_size: int, gen):
    """BERT's masking: ``mlm_probability`` of the real tokens are predicted; of those 80 % become [MASK], 10 % a
    random token, 10 % stay. Returns (inputs, labels with -100 where nothing is predicted)."""
    import torch

    labels = ids.clone()
    pick = (torch.rand(ids.shape, generator=gen) < cfg.mlm_probability) & ~special
    labels[~pick] = -100
    inputs = ids.clone()
    to_mask = pick & (torch.rand(ids.shape, generator=gen) < 0.8)
    inputs[to_mask] = SPECIALS.index("[MASK]")
    to_random = pick & ~to_mask & (torch.rand(ids.shape, generator=gen) < 0.5)
    inputs[to_random] = torch.randint(len(SPECIALS), vocab_size, ids.shape, generator=gen)[to_random]
    return inputs, labels


def run(params, dataset: str, shards_dir: Path, out_dir: Path) -> Path:
    """Pretrain the text encoder of ``dataset`` and write ``out_dir`` (models/text/<dataset>/)."""
    import torch
    import transformers

    cfg = params.pretrain_text
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    require_current(shards_dir, params, dataset, load_manifest(shards_dir))
    texts = train_texts(shards_dir)
    if not texts:
        raise MedrefError(f"{shards_dir}/train: no report texts to pretrain on (dataset {dataset!r} has none); "
                          f"remove it from pretrain_text.datasets")
    device = torch_device("cpu", threads=params.base.cpu_threads)  # a small MLM: trained on CPU, bit-reproducible
    torch.use_deterministic_algorithms(True)
    with atomic_dir(out_dir) as tmp:
        vocab_file = tmp / "vocab.txt"
        if cfg.vocab:
            src = Path(cfg.vocab)
            if not src.is_file():
                raise MedrefError(f"pretrain_text.vocab: {src} is not a file (a WordPiece vocab.txt, one token a line)")
            vocab = src.read_text(encoding="utf-8").splitlines()
            if tuple(vocab[:len(SPECIALS)]) != SPECIALS:
                raise MedrefError(f"pretrain_text.vocab: {src} does not start with {', '.join(SPECIALS)} (a BERT "
                                  "WordPiece vocab.txt does; medref's masking relies on those ids)")
        else:
            vocab = build_vocab(texts, cfg.vocab_size)
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tok = _tokenizer(vocab_file)
        enc = tok(texts, padding="max_length", truncation=True, max_length=cfg.max_length, return_tensors="pt")
        ids, attn = enc["input_ids"], enc["attention_mask"].bool()
        special = ~attn | (ids == tok.cls_token_id) | (ids == tok.sep_token_id)

        torch.manual_seed(cfg.seed)
        bert = transformers.BertConfig(vocab_size=len(vocab), hidden_size=cfg.hidden_size,
                                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                       intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_length,
                                       pad_token_id=0)
        model = transformers.BertForMaskedLM(bert)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(1, cfg.steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) /
                                                                                          max(1, cfg.steps - warm))))
        losses = []
        for step in range(cfg.steps):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            idx = torch.randint(len(texts), (min(cfg.batch_size, len(texts)),), generator=gen)
            inputs, labels = mask_tokens(ids[idx], special[idx], cfg, len(vocab), gen)
            if not bool((labels != -100).any()):
                continue  # nothing drawn to predict (tiny batches only): no loss to take
            out = model(input_ids=inputs, attention_mask=attn[idx].long(), labels=labels)
            if not math.isfinite(out.loss.item()):
                raise FloatingPointError(f"pretrain_text {dataset}: loss {out.loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(round(out.loss.item(), 6))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        inputs_ = {"shards": shards_dir, **({"vocab": Path(cfg.vocab)} if cfg.vocab else {})}
        write_json(tmp / PROVENANCE, {
            **provenance.stage_block(params, ["base.cpu_threads", "base.cpu_numerics", "pretrain_text"], inputs_,
                                     device=device),
            "dataset": dataset, "n_texts": len(texts), "vocab_size": len(vocab),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            # about 50 points: enough for a curve, small enough to read
            "loss_curve": losses[:: max(1, len(losses) // 50)],
        })
        _drop_paths(tmp)
    print(f"[pretrain_text] {dataset}: {len(texts)} train texts, vocab {len(vocab)}, {cfg.steps} steps, MLM loss "
          f"{losses[0] if losses else float('nan'):.3f} -> {losses[-1] if losses else float('nan'):.3f}", flush=True)
    return out_dir


def _drop_paths(folder: Path) -> None:
    """tokenizer_config.json may record where the tokenizer was built (a temp folder): outputs must not depend on
    it, so any such key is removed."""
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        cfg = json.loads(tc.read_text())
        for k in ("name_or_path", "vocab_file", "tokenizer_file"):
            cfg.pop(k, None)
        tc.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
