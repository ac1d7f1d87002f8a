"""The validation curve reports the Dice that eval reports for the same model and images.

    .venv/bin/python -m pytest -q tests/test_one_dice.py
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from pipeline_src.evaluate.evaluate import evaluate_predictor
from pipeline_src.inference.predictor import Predictor
from pipeline_src.models import build_model
from pipeline_src.models.params import ModelParams
from pipeline_src.models.text import build_tokenizer
from pipeline_src.train.train import Split, validate

SMALL = ModelParams(text_width=32, text_layers=1, text_heads=2, context_length=16, embed_dim=16, decoder_dim=16,
                    decoder_heads=2)


def test_validation_dice_equals_eval_dice_on_the_same_predictions():
    torch.manual_seed(0)
    net = build_model(SMALL).eval()
    tok = build_tokenizer(SMALL.context_length, SMALL.text_weights)
    rng = np.random.default_rng(0)
    n, h = 6, 64
    images = torch.from_numpy(rng.integers(0, 256, (n, 1, h, h), dtype=np.uint8))
    masks = torch.zeros(n, 1, h, h, dtype=torch.uint8)
    masks[:3, :, 10:40, 8:30] = 1  # the last three have empty ground truth: the both-empty rule matters
    texts = ["left lower lung", "right upper", "bilateral", "", "left", "right"]
    val = Split([f"v{i}" for i in range(n)], images, masks, texts, [[] for _ in range(n)],
                torch.zeros(n, 6, dtype=torch.long), torch.zeros(n, dtype=torch.bool))
    got = validate(net, val, n, tok, torch.device("cpu"), contextlib.nullcontext, bs=4)["val_dice"]

    items = [{"id": val.ids[i], "image": images[i].float() / 255, "mask": masks[i].float(), "text": texts[i]}
             for i in range(n)]
    summary, per = evaluate_predictor(Predictor(net, tok, {}, "supervised"), items, batch_size=4, distances=False,
                                      progress=False)
    assert got == summary["dice"]
    assert per["dice"].nunique() > 1  # not a trivially constant score


def test_multiclass_dice_rule_is_shared_by_case_metrics():
    """3-D case metrics and the multi-class validation curve score classes with the same rule: absent from both
    sides -> NaN (excluded), one side empty -> 0."""
    import numpy as np

    from pipeline_src.evaluate.multiclass import case_metrics
    from pipeline_src.models.metrics import class_dice_from_counts

    gt = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, :2, :2] = 1
    pred[0, :2, :3] = 1  # class 1: 4 true, 6 predicted, 4 overlap -> 0.8
    pred[1, 0, 0] = 3  # class 3: predicted, absent from the truth -> 0; class 2 absent from both -> NaN
    d = case_metrics(pred, gt, (1.0, 1.0, 1.0), n_classes=4)["dice"]
    assert d[0] == 0.8 and np.isnan(d[1]) and d[2] == 0.0
    np.testing.assert_array_equal(class_dice_from_counts([4, 0, 0], [6, 0, 1], [4, 0, 0]), d)
