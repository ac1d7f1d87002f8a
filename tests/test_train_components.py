"""Semi-MedRef components, each on hand-made inputs: flip, PosAug, T-PatchMix, EMA, schedules, sampler."""

from __future__ import annotations

import math
import re

import torch

from pipeline_src import params as params_mod
from pipeline_src.labels.text_parser import parse
from pipeline_src.train import augment
from pipeline_src.train.methods import METHODS, ema_update
from pipeline_src.train.params import PosAugParams, TrainParams
from pipeline_src.train.train import batch_indices, make_schedules

TEXT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
POSITION = re.compile(r"\b(left|right|upper|middle|lower|all)\b", re.IGNORECASE)


def _batch(texts, regions, size=32):
    n = len(texts)
    known = torch.tensor([r is not None for r in regions])
    reg = torch.tensor([r if r is not None else [0] * 6 for r in regions], dtype=torch.long)
    return {
        "images": torch.rand(n, 1, size, size),
        "masks": (torch.rand(n, 1, size, size) > 0.5).float(),
        "texts": list(texts),
        "spans": [parse(t).spans for t in texts],
        "regions": reg,
        "known": known,
    }


def test_registry_matches_params_method_names():
    assert set(METHODS) == set(params_mod.METHODS)


def test_flip_swaps_sides_in_pixels_text_and_regions():
    b = _batch([TEXT, "One infected area, upper left lung."], [[1, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]])
    f = augment.hflip(b, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(f["images"], b["images"].flip(-1)) and torch.equal(f["masks"], b["masks"].flip(-1))
    assert f["texts"][0] == "Bilateral pulmonary infection, two infected areas, upper right lung and lower left lung."
    assert f["texts"][1] == "One infected area, upper right lung."
    assert f["regions"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]]
    assert [parse(t).regions for t in f["texts"]] == [tuple(r) for r in f["regions"].tolist()]
    naive = augment.hflip(b, torch.Generator().manual_seed(0), p=1.0, flip_text_too=False)
    assert naive["texts"] == b["texts"]  # the ablation: text keeps naming the pre-flip side
    none = augment.hflip(b, torch.Generator().manual_seed(0), p=0.0)
    assert none["texts"] == b["texts"] and torch.equal(none["images"], b["images"])


def test_posaug_masks_only_position_words():
    for mode, rep in (("unknown", "unknown"), ("neutral", "a region of the lung")):
        cfg = PosAugParams(p=1.0, mode=mode)
        out = augment.posaug(_batch([TEXT], [[1, 0, 0, 0, 0, 1]]), torch.Generator().manual_seed(0), cfg)["texts"][0]
        assert not POSITION.search(out), out
        assert out.count(rep) == 2
        kept = [w for w in re.findall(r"[A-Za-z]+", TEXT) if not POSITION.fullmatch(w) and w != "lung"]
        assert [w for w in re.findall(r"[A-Za-z]+", out) if w in kept] == kept  # other words, in order
    assert augment.posaug_text(TEXT, parse(TEXT).spans, "unknown").endswith("unknown lung and unknown lung.")
    # p = 0 and texts without position words are untouched
    b = _batch([TEXT, "Pulmonary infection."], [[1, 0, 0, 0, 0, 1], None])
    assert augment.posaug(b, torch.Generator(), PosAugParams(p=0.0))["texts"] == b["texts"]
    assert augment.posaug(b, torch.Generator(), PosAugParams(p=1.0))["texts"][1] == "Pulmonary infection."


def test_posaug_rate_is_about_p_per_phrase():
    # one coin per phrase (pos_aug.py::pos_token_dropout): each of TEXT's two phrases goes with probability p
    b = _batch([TEXT] * 400, [[1, 0, 0, 0, 0, 1]] * 400)
    out = augment.posaug(b, torch.Generator().manual_seed(1), PosAugParams(p=0.5))["texts"]
    first = sum("upper left" not in t for t in out) / 400
    second = sum("lower right" not in t for t in out) / 400
    both = sum("upper left" not in t and "lower right" not in t for t in out) / 400
    assert 0.4 < first < 0.6 and 0.4 < second < 0.6 and 0.15 < both < 0.35


def test_ema_update_math():
    torch.manual_seed(0)
    s, t = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), None
    t = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    s[1].running_mean.fill_(1.0)
    s[1].num_batches_tracked.fill_(7)
    before = [p.clone() for p in t.parameters()]
    ema_update(t, s, 0.9)
    for b0, p_s, p_t in zip(before, s.parameters(), t.parameters(), strict=True):
        assert torch.allclose(p_t, 0.9 * b0 + 0.1 * p_s)
    assert torch.allclose(t[1].running_mean, torch.full((2,), 0.1)) and int(t[1].num_batches_tracked) == 7
    ema_update(t, s, 0.0)  # momentum 0 (burn-in) copies the student
    assert all(torch.equal(a, b) for a, b in zip(t.parameters(), s.parameters(), strict=True))


def test_schedules_burn_in_ramp_and_momentum():
    cfg = TrainParams.model_validate({"ssl": {"burn_in_epochs": 2, "ramp_epochs": 3, "unsup_weight": 0.3}})
    s = make_schedules(cfg, total=100, steps_per_epoch=10)
    assert (s.unsup[:20] == 0).all() and abs(s.unsup[49] - 0.3) < 1e-12 and (s.unsup[50:] == 0.3).all()
    assert (s.unsup[20:50] > 0).all() and (s.unsup[20:51] <= 0.3).all() and (s.unsup[20:50] < 0.3 - 1e-9).sum() == 29
    # momentum: 0 in burn-in, then linear 0.99 -> 0.999 over ema_ramp_epochs (20 by default: 200 steps here)
    assert (s.momentum[:20] == 0).all() and abs(s.momentum[20] - 0.99) < 1e-12
    assert abs(s.momentum[70] - (0.99 + 0.009 * 50 / 200)) < 1e-12 and s.momentum[-1] < 0.999
    short = make_schedules(TrainParams.model_validate({"ssl": {"burn_in_epochs": 2, "ema_ramp_epochs": 5}}), 100, 10)
    assert abs(short.momentum[70] - 0.999) < 1e-12 and abs(short.momentum[45] - (0.99 + 0.009 * 25 / 50)) < 1e-12
    # official lr: CosineAnnealingLR(T_max=200 epochs, eta_min=1e-6) stepped per epoch -> constant within an epoch
    assert (s.lr[:10] == 3e-4).all() and s.lr[10] == s.lr[19] < s.lr[9]
    want = 1e-6 + (3e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 9 / 200))
    assert abs(s.lr[95] - want) < 1e-15
    cos = make_schedules(TrainParams.model_validate({"lr_schedule": "cosine"}), total=100, steps_per_epoch=10)
    assert (abs(cos.lr[0] - 3e-4) < 1e-12) and cos.lr[-1] < cos.lr[50] < cos.lr[0]


def test_batch_indices_are_seeded_epoch_permutations():
    n, bs = 10, 4
    stream = sum((batch_indices(n, bs, k, seed=3, stream=0) for k in range(5)), [])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert batch_indices(n, bs, 3, seed=3, stream=0) == stream[12:16]  # pure function of the step
