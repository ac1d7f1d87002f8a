"""Training methods as small strategy classes over the one loop in ``train.py``.

A method owns ``modules`` (an ``nn.ModuleDict``: ``student`` and, for teacher-student methods, a frozen
``teacher``), computes ``loss(step, labelled, unlabelled, gen) -> (loss, logs)`` and updates the teacher in
``after_step(step)``. ``export()`` is the network saved for prediction and evaluated: the student, as the official
Semi-MedRef code tests it (``wrapper_semi.py::validation_step/test_step``), or the EMA teacher with
``train.ssl.export: teacher``.

Registry: ``METHODS`` below (explicit, no folder scanning). Names must match ``pipeline_src.params.METHODS``.

Extension points for Med-DisSeg (the dispersive-loss paper): ``train.dispersive.weight > 0`` adds the dispersive loss on
``feats[train.dispersive.stage]`` of the student's labelled forward pass for *any* method; the ``meddisseg``
method is the supervised loss on the ``meddisseg`` architecture (``pipeline_src.models.ARCHS``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from pipeline_src.models import losses
from pipeline_src.models.task import from_channels
from pipeline_src.train import augment


class Supervised:
    """Text-guided supervised baseline: Dice + BCE on the labelled batch (flipped with its text)."""

    arch: str | None = None  # architecture forced by the method (None: train.model.arch)
    needs_unlabelled = False
    has_teacher = False

    def __init__(self, cfg, model: nn.Module, sched, tokenize: Callable, autocast=nullcontext):
        self.cfg, self.sched, self.tokenize, self.autocast = cfg, sched, tokenize, autocast
        self.modules = nn.ModuleDict({"student": model})
        self.task = from_channels(cfg.model.n_classes)  # the head's width: preflight set it from the shards
        if self.has_teacher:
            teacher = copy.deepcopy(model)
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.modules["teacher"] = teacher

    # -- helpers shared by the methods --
    @property
    def student(self) -> nn.Module:
        return self.modules["student"]

    def forward(self, net: nn.Module, images: torch.Tensor, texts: list[str]) -> dict:
        tokens = self.tokenize(texts).to(images.device) if net.uses_text else None
        with self.autocast():
            out = net(images, tokens)
        out["logits"] = out["logits"].float()
        return out

    def weak(self, batch: dict, gen: torch.Generator) -> dict:
        a = self.cfg.augment
        return augment.hflip(batch, gen, a.flip_p, a.flip_text)

    def supervised_loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = self.task.loss(self.cfg.loss, out["logits"], batch["masks"])
        logs = {"loss_sup": loss.detach()}
        d = self.cfg.dispersive
        if d.weight > 0:
            disp = losses.dispersive(out["feats"][d.stage].float(), d)
            loss = loss + d.weight * disp
            logs["loss_disp"] = disp.detach()
        return loss, logs

    # -- the strategy interface --
    def loss(self, step: int, lab: dict, unl: dict | None, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        lab = self.weak(lab, gen)
        out = self.forward(self.student, lab["images"], lab["texts"])
        return self.supervised_loss(out, lab)

    def train(self) -> None:
        self.modules.train()
        if self.has_teacher:
            self.modules["teacher"].eval()  # dinov2: the teacher never runs in train mode (BN stats frozen)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        pass

    @property
    def exported(self) -> str:
        """Which network ``export`` returns: "student" or "teacher"."""
        return "teacher" if self.has_teacher and self.cfg.ssl.export == "teacher" else "student"

    def export(self) -> nn.Module:
        return self.modules[self.exported]


class ImageOnly(Supervised):
    """Same loss and decoder, no text: the baseline text guidance has to beat."""

    arch = "image_only"


class MedDisSeg(Supervised):
    """Supervised loss on the Med-DisSeg architecture (plus ``train.dispersive`` when its weight > 0)."""

    arch = "meddisseg"


class MeanTeacher(Supervised):
    """EMA teacher gives hard pseudo-masks on the weak view; the student sees a strong photometric view.
    Burn-in: supervised only and the teacher copies the student (Unbiased-Teacher style), so the teacher starts
    from the burnt-in weights instead of a random-init average."""

    needs_unlabelled = True
    has_teacher = True

    def pseudo(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return losses.pseudo_label(probs, self.cfg.ssl.pseudo_label, self.cfg.ssl.confidence)

    def strong(self, unl: dict, probs: torch.Tensor, gen: torch.Generator):
        """Student view of the unlabelled batch -> (batch, binary target, pixel weight or None, logs)."""
        a = self.cfg.augment
        target, weight = self.pseudo(probs)
        return {**unl, "images": augment.intensity(unl["images"], gen, a.noise_std, a.jitter)}, target, weight, {}

    def unsup_loss(self, step: int, unl: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict, dict, dict, dict]:
        unl = self.weak(unl, gen)
        teacher = self.modules["teacher"]
        with torch.no_grad(), (batch_stats(teacher) if self.cfg.ssl.teacher_bn == "batch" else nullcontext()):
            probs = torch.sigmoid(self.forward(teacher, unl["images"], unl["texts"])["logits"])
        view, target, weight, logs = self.strong(unl, probs, gen)
        out = self.forward(self.student, view["images"], view["texts"])
        loss = losses.binary(self.cfg.loss, out["logits"], target, weight)
        logs = {"loss_unsup": loss.detach(), "pseudo_fg": target.mean(), **logs}
        return loss, logs, out, view, unl

    def loss(self, step, lab, unl, gen):
        loss, logs = super().loss(step, lab, unl, gen)
        w = float(self.sched.unsup[step])
        if w > 0 and unl is not None:  # burn-in: no unlabelled forward at all (saves time)
            lu, logs_u, *_ = self.unsup_loss(step, unl, gen)
            loss = loss + w * lu
            logs.update(logs_u)
        return loss, logs

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = float(self.sched.momentum[step])
        student, teacher = self.student, self.modules["teacher"]
        ema_update(teacher, student, m)


@contextmanager
def batch_stats(net: nn.Module):
    """Normalise with the batch's own statistics (BN in train mode, momentum 0 so running stats stay put).

    Why: the EMA teacher inherits BN running stats that start at var = 1 and lag the weights; in short runs
    (the demo's ~40 steps) an eval-mode teacher predicts empty masks with high confidence, and the student is
    then trained towards nothing. Batch statistics of the unlabelled batch do not have that lag."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in bns]
    for m in bns:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (tr, mom) in zip(bns, saved, strict=True):
            m.train(tr)
            m.momentum = mom


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """teacher <- m * teacher + (1 - m) * student over the state dict: parameters and float buffers (BN running
    stats); integer buffers (num_batches_tracked) are copied. Non-persistent buffers (the text tower's -inf
    causal mask) are left alone: 0 * -inf would turn them into NaN. Frozen parameters (a frozen text tower) are
    skipped: they are equal in both, and m * x + (1 - m) * x is not x in floating point, so averaging them would
    drift the frozen weights (and cost a pass over, e.g., BERT-base's 110 M weights per step)."""
    t, s = teacher.state_dict(), student.state_dict()
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    floats = [k for k, v in t.items() if v.dtype.is_floating_point and k not in frozen]
    if m == 0.0:  # burn-in: an exact copy
        torch._foreach_copy_([t[k] for k in floats], [s[k] for k in floats])
    else:
        torch._foreach_mul_([t[k] for k in floats], m)
        torch._foreach_add_([t[k] for k in floats], [s[k] for k in floats], alpha=1 - m)
    for k, v in t.items():
        if not v.dtype.is_floating_point:
            v.copy_(s[k])


class CutMixSSL(MeanTeacher):
    """Mean teacher whose strong view is plain CutMix of the images; the text is left as it was (a's text now
    describes a picture that also holds b's lesion: the incoherence Semi-MedRef's T-PatchMix fixes)."""

    def strong(self, unl, probs, gen):
        a = self.cfg.augment
        src, m = augment.cutmix(unl["images"], gen, a.cutmix_area)
        images = unl["images"] * (1 - m) + unl["images"][src] * m
        images = augment.intensity(images, gen, a.noise_std, a.jitter)
        target, weight = self.pseudo(probs)  # thresholding commutes with the box mix
        target = target * (1 - m) + target[src] * m
        if weight is not None:
            weight = weight * (1 - m) + weight[src] * m
        return {**unl, "images": images}, target, weight, {}


class SemiMedRef(MeanTeacher):
    """Semi-MedRef: mean teacher + PosAug + T-PatchMix + ITCL, with a text-aware flip (see ``augment``).

    As the official code (engine/wrapper_semi.py, utils/dataset_semi.py): labelled = weak view with its report
    whole (supervised loss + labelled ITCL); unlabelled student = weak view + PosAug'd report + T-PatchMix +
    photometric noise, trained towards the teacher's hard pseudo-mask; unlabelled ITCL on a separate student pass
    over the weak view and its original report. docs/FIDELITY.md lists every rule and its source."""

    def itcl(self, out: dict, batch: dict) -> torch.Tensor:
        c = self.cfg.itcl
        return losses.itcl(out["img_emb"].float(), out["txt_emb"].float(), batch["regions"].to(out["img_emb"].device),
                           batch["known"].to(out["img_emb"].device), c.tau)

    def posaug(self, batch: dict, gen: torch.Generator) -> dict:
        return augment.posaug(batch, gen, self.cfg.posaug) if self.cfg.posaug.enabled else batch

    def strong(self, unl, probs, gen):
        a, t, ssl = self.cfg.augment, self.cfg.tpatchmix, self.cfg.ssl
        view = self.posaug(unl, gen)
        logs = {}
        if t.enabled:
            view, mixed, kept, _ = augment.tpatchmix(view, probs, gen, t.block, t.p, ssl.confidence,
                                                     t.paste_rejected)
            logs["patched"] = (kept.flatten(1).sum(1) > 0).float().mean()
            if ssl.pseudo_label == "hard":
                target, weight = (mixed >= 0.5).float(), None  # rule 4: the mixed probabilities at 0.5
            else:
                target, w = self.pseudo(mixed)
                weight = w * (1 - kept) + kept
        else:
            target, weight = self.pseudo(probs)
        view = {**view, "images": augment.intensity(view["images"], gen, a.noise_std, a.jitter)}
        return view, target, weight, logs

    def loss(self, step, lab, unl, gen):
        lab = self.weak(lab, gen)
        if self.cfg.posaug.scope == "both":
            lab = self.posaug(lab, gen)
        out = self.forward(self.student, lab["images"], lab["texts"])
        loss, logs = self.supervised_loss(out, lab)
        use_itcl = self.cfg.itcl.enabled and self.student.uses_text
        if use_itcl and self.cfg.itcl.weight_labelled > 0 and len(lab["texts"]) > 1:
            li = self.itcl(out, lab)
            loss = loss + self.cfg.itcl.weight_labelled * li
            logs["loss_itcl_l"] = li.detach()
        w = float(self.sched.unsup[step])
        if w > 0 and unl is not None:
            lu, logs_u, out_u, view, weak = self.unsup_loss(step, unl, gen)
            loss = loss + w * lu
            logs.update(logs_u)
            if use_itcl and self.cfg.itcl.weight_unlabelled > 0 and len(weak["texts"]) > 1:
                if self.cfg.itcl.unlabelled_view == "weak":
                    out_u, view = self.forward(self.student, weak["images"], weak["texts"]), weak
                li = self.itcl(out_u, view)
                loss = loss + self.cfg.itcl.weight_unlabelled * w * li
                logs["loss_itcl_u"] = li.detach()
        return loss, logs


# Explicit registry; keep in step with pipeline_src.params.METHODS (a test checks).
METHODS: dict[str, type[Supervised]] = {
    "supervised": Supervised,
    "image_only": ImageOnly,
    "semi_medref": SemiMedRef,
    "mean_teacher": MeanTeacher,
    "cutmix_ssl": CutMixSSL,
    "meddisseg": MedDisSeg,
}
