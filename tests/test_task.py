"""The task kind (pipeline_src/models/task.py): what binary and multi-class training, inference and eval each do,
and no binary/multi-class branch outside it and the data layer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_src.data.shards import MASK_ENCODING
from pipeline_src.evaluate.evaluate import EVALUATORS
from pipeline_src.models import losses, task
from pipeline_src.models.metrics import class_dice_from_counts, dice_iou_from_counts

PKG = Path(__file__).resolve().parents[1] / "pipeline_src"


def test_the_shards_manifest_and_the_head_choose_the_same_task():
    assert task.from_manifest({"n_classes": 1}) == task.Binary()
    assert task.from_manifest({"mask_encoding": MASK_ENCODING, "n_classes": 4}) == task.MultiClass(4)
    assert task.from_channels(1) == task.Binary() and task.from_channels(4) == task.MultiClass(4)
    assert set(EVALUATORS) == {task.Binary.name, task.MultiClass.name}  # eval has an evaluator for each kind


def test_nonlinearity_and_loss_per_kind():
    g = torch.Generator().manual_seed(0)
    one, four = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    assert torch.equal(task.Binary().probabilities(one), torch.sigmoid(one))
    p = task.MultiClass(4).probabilities(four)
    assert torch.allclose(p.sum(1), torch.ones(2, 8, 8)) and torch.equal(p, torch.softmax(four, 1))
    bits = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    classes = torch.randint(0, 4, (2, 1, 8, 8), generator=g)
    assert torch.equal(task.Binary().loss("dice", one, bits), losses.binary("dice", one, bits))
    assert torch.equal(task.MultiClass(4).loss("dice", four, classes), losses.dice_ce(four, classes))
    assert not task.MultiClass(4).teacher_student_ok and not task.MultiClass(4).flip_ok and not task.MultiClass(4).predict_ok
    assert task.Binary().teacher_student_ok and task.Binary().flip_ok and task.Binary().predict_ok


def test_binary_validation_is_the_mean_per_image_dice_over_batches():
    g = torch.Generator().manual_seed(1)
    logits, masks = torch.randn(5, 1, 6, 6, generator=g), (torch.rand(5, 1, 6, 6, generator=g) > 0.5).float()
    v = task.Binary().validation()
    v.add(logits[:3], masks[:3])
    v.add(logits[3:], masks[3:])
    pred, gt = (torch.sigmoid(logits) > 0.5).numpy(), masks.numpy() > 0
    tp, fp, fn = ((a & b).reshape(5, -1).sum(1) for a, b in ((pred, gt), (pred, ~gt), (~pred, gt)))
    assert v.result() == {"val_dice": float(dice_iou_from_counts(tp, fp, fn)[0].mean())}
    assert task.Binary().validation().result() == {}


def test_class_validation_pools_the_slices_then_means_the_foreground_classes():
    g = torch.Generator().manual_seed(2)
    logits, masks = torch.randn(4, 3, 5, 5, generator=g), torch.randint(0, 3, (4, 1, 5, 5), generator=g)
    v = task.MultiClass(3).validation()
    v.add(logits[:1], masks[:1])
    v.add(logits[1:], masks[1:])
    pred, gt = logits.argmax(1).numpy().ravel(), masks[:, 0].numpy().ravel()
    inter = np.array([((pred == c) & (gt == c)).sum() for c in range(3)])
    d = class_dice_from_counts(inter, np.bincount(pred, minlength=3), np.bincount(gt, minlength=3))[1:]
    assert v.result() == pytest.approx({"val_dice": float(np.nanmean(d))}, abs=0)


# a kind decided outside the task module (the data layer reads the two mask encodings, and may)
KIND_TESTS = re.compile(r"is_class_index\(|\.class_index\b|shape\[1\] *(>|!=) *1\b|n_classes *> *1|mask_encoding")


def test_no_binary_multiclass_branch_outside_the_task_module_and_the_data_layer():
    found = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        if rel.startswith("data/") or rel == "models/task.py":
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if KIND_TESTS.search(code) and not code.lstrip().startswith(("\"", "'", "``")):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "a binary/multi-class decision outside models/task.py:\n" + "\n".join(found)


def test_the_branch_rule_sees_a_branch():
    assert KIND_TESTS.search("if logits.shape[1] > 1:") and KIND_TESTS.search("if dataset.class_index:")
    assert not KIND_TESTS.search("probs[:, 1]")


def test_predict_asks_the_task_whether_it_writes_the_head_s_masks():
    from pathlib import Path

    from pipeline_src.errors import MedrefError
    from pipeline_src.inference import predict

    class Head:
        def __init__(self, channels):
            self.channels = channels

        def predict(self, x, texts, tta=None):
            return np.full((x.shape[0], self.channels, *x.shape[2:]), 0.7, np.float32)

    def source(channels):
        return predict._Source(model_dir=Path("m"), exported=None, regime="r", ep={}, ep_source="", size=8, rule=None,
                               limits=None, predictor=Head(channels), numpy_io=True)

    small = [np.zeros((8, 8), np.uint8)]
    assert predict._probabilities(source(1), small, [""], None).shape == (1, 1, 8, 8)
    with pytest.raises(MedrefError, match="a 9-class model; `medref predict` writes binary masks"):
        predict._probabilities(source(9), small, [""], None)
