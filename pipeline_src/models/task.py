"""The task kind: a binary lesion mask, or class indices (multi-class volumes). The one place the two differ.

    task = from_manifest(manifest)       # the shards decide (manifest mask_encoding / n_classes)
    task = from_channels(logits.shape[1])  # a trained network's head decides (predictor, exported graphs)
    task.probabilities(logits); task.loss(cfg.loss, logits, masks); v = task.validation(); v.add(...); v.result()

nnU-Net's LabelManager plays this part there. A task carries what training, inference and evaluation each need to
know about the kind: the head's width, the nonlinearity (sigmoid or softmax), the supervised loss, the training
validation rule (an accumulator: ``add`` per batch, ``result`` at the end), the methods it can train and the
augmentation it forbids, and ``name``, by which eval picks its evaluator (``evaluate.EVALUATORS``). The data layer
keeps its own branch where the raw layouts really differ (volumes are read case by case; masks are stored as bits
or as class indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline_src.data.shards import is_class_index
from pipeline_src.models.metrics import class_dice_from_counts, dice_iou_from_counts

if TYPE_CHECKING:
    import torch

BINARY, CLASS_INDEX = "binary", "class_index"


@dataclass(frozen=True)
class Binary:
    """One foreground channel: sigmoid, the train params' binary loss, per-image Dice at 0.5."""

    name = BINARY
    n_classes = 1
    teacher_student_ok = True  # the teacher-student methods pseudo-label with the sigmoid
    flip_ok = True
    predict_ok = True  # `medref predict` writes its masks (binary PNGs)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(logits.float())

    def loss(self, name: str, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # imported here: torch's import cost (losses imports torch; this module's top does not)
        from pipeline_src.models import losses

        return losses.binary(name, logits, masks)

    def validation(self) -> BinaryValidation:
        return BinaryValidation()


class BinaryValidation:
    """Mean per-image Dice at 0.5: for a binary model the number ``medref eval`` reports (``dice``) for the same
    images with ``min_component_size`` 0 (eval's rule: sigmoid probability > 0.5, per-image counts -> Dice)."""

    def __init__(self):
        self.dices: list[np.ndarray] = []

    def add(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        import torch

        pred = torch.sigmoid(logits) > 0.5
        gt = masks > 0
        tp = (pred & gt).flatten(1).sum(1)
        fp = (pred & ~gt).flatten(1).sum(1)
        fn = (~pred & gt).flatten(1).sum(1)
        self.dices.append(dice_iou_from_counts(tp.cpu().numpy(), fp.cpu().numpy(), fn.cpu().numpy())[0])

    def result(self) -> dict:
        return {"val_dice": float(np.concatenate(self.dices).mean())} if self.dices else {}


@dataclass(frozen=True)
class MultiClass:
    """Class indices 0..n_classes-1 (0 = background): softmax, Dice + CE, per-class Dice pooled over the slices."""

    n_classes: int
    name = CLASS_INDEX
    teacher_student_ok = False  # no sigmoid pseudo-labels for a softmax head
    flip_ok = False  # a horizontal flip swaps left/right organs (kidneys, liver/spleen) but not their labels
    predict_ok = False  # `medref predict` writes binary masks; volume models are scored by `medref eval`

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits.float(), 1)

    def loss(self, name: str, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # imported here: torch's import cost (losses imports torch; this module's top does not)
        from pipeline_src.models import losses

        return losses.dice_ce(logits, masks)  # masks hold class indices; the binary loss name does not apply

    def validation(self) -> ClassValidation:
        return ClassValidation(self.n_classes)


class ClassValidation:
    """Mean over the foreground classes present (prediction or truth) of the Dice pooled over the val slices (eval
    scores re-stacked 3-D cases instead)."""

    def __init__(self, n_classes: int):
        self.c = n_classes
        self.inter = self.pred = self.gt = 0

    def add(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        import torch

        pred = torch.nn.functional.one_hot(logits.argmax(1), self.c).flatten(0, 2)
        gt = torch.nn.functional.one_hot(masks[:, 0].long(), self.c).flatten(0, 2)
        self.inter = self.inter + (pred * gt).sum(0)
        self.pred, self.gt = self.pred + pred.sum(0), self.gt + gt.sum(0)

    def result(self) -> dict:
        if isinstance(self.inter, int):
            return {}
        d = class_dice_from_counts(self.inter.cpu().numpy(), self.pred.cpu().numpy(), self.gt.cpu().numpy())[1:]
        return {"val_dice": float(np.nanmean(d))} if np.isfinite(d).any() else {}


Task = Binary | MultiClass


def from_channels(n_classes: int) -> Task:
    """The task of a head with ``n_classes`` output channels (1 = binary)."""
    return MultiClass(int(n_classes)) if n_classes > 1 else Binary()


def from_manifest(manifest: dict) -> Task:
    """The task of a shards folder: class indices when its manifest says ``mask_encoding: class_index``."""
    return from_channels(int(manifest["n_classes"])) if is_class_index(manifest) else Binary()
