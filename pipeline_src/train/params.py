"""params.yaml section ``train`` (model, optimiser, method components).

Defaults here are the small demo values (fast on 2 CPU cores); params.yaml documents the paper's
value next to each key where it differs. Every semi-supervised component can be switched off on
its own (``train.posaug.enabled=false`` ...), so an ablation is a regime override or
``dvc exp run -S train.tpatchmix.enabled=false``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline_src.models.params import ModelParams
from pipeline_src.utils.schema import Strict


class SSLParams(Strict):
    """Teacher-student schedule (semi_medref, mean_teacher, cutmix_ssl). docs/FIDELITY.md gives each official value."""

    # teacher momentum: linear ema_start -> ema_end over ema_ramp_epochs after burn-in (official: 0.99 -> 0.999
    # over 20 epochs, wrapper_semi.py::_ema_m_now); during burn-in the teacher is a copy of the student
    ema_start: float = Field(0.99, ge=0, le=1)
    ema_end: float = Field(0.999, ge=0, le=1)
    ema_ramp_epochs: float = Field(20, ge=0)
    burn_in_epochs: float = Field(1, ge=0)  # supervised only; paper 5
    ramp_epochs: float = Field(1, ge=0)  # unsupervised weight 0 -> unsup_weight; paper 15
    unsup_weight: float = Field(0.3, ge=0)
    confidence: float = Field(0.55, ge=0.5, le=1)
    # pseudo-label rule: hard = target 1[p >= confidence] on every pixel (official _threshold_target); masked =
    # target 1[p > 0.5], pixels with max(p, 1-p) < confidence ignored (medref's earlier rule)
    pseudo_label: Literal["hard", "masked"] = "hard"
    # teacher BN for pseudo-labels: batch statistics of the unlabelled batch, or its (EMA) running stats
    teacher_bn: Literal["batch", "running"] = "batch"
    # the network saved to models/<run>/ and evaluated: the student (official: validation_step/test_step and
    # evaluate_semi.py --weights run self.student) or the EMA teacher
    export: Literal["student", "teacher"] = "student"


class AugmentParams(Strict):
    flip_p: float = Field(0.5, ge=0, le=1)  # horizontal flip of every training view
    flip_text: bool = True  # swap left/right words and region vectors with the flip (False = the naive bug)
    noise_std: float = Field(0.05, ge=0)  # strong view: Gaussian noise
    jitter: float = Field(0.2, ge=0)  # strong view: brightness/contrast jitter amplitude
    cutmix_area: float = Field(0.25, gt=0, le=1)  # cutmix_ssl: box area as a fraction of the image


class PosAugParams(Strict):
    enabled: bool = True
    p: float = Field(0.5, ge=0, le=1)  # per text
    # which student reports: unlabelled only (official: dataset_semi.py::QaTaSemiUnlabeled; labelled reports stay
    # whole) or labelled + unlabelled (medref's earlier scope)
    scope: Literal["unlabelled", "both"] = "unlabelled"
    mode: Literal["unknown", "neutral", "either"] = "either"
    unknown_token: str = "unknown"
    neutral_phrase: str = "a region of the lung"


class TPatchMixParams(Strict):
    """T-PatchMix as wrapper_semi.py::_build_xpatchmix_batch (mode pos) and pos_aug.py do it."""

    enabled: bool = True
    block: int = Field(16, ge=1)
    p: float = Field(0.08, ge=0, le=1)  # per sample: the chance that it gets one block inside its own phrase region
    # a block is kept when the teacher's mean lesion probability inside it, on the partner, is >= ssl.confidence.
    # The official code pastes the image before that gate, so a rejected block stays in the image while target and
    # text stay a's (true = official); false also keeps the rejected block out of the image
    paste_rejected: bool = True


class ITCLParams(Strict):
    enabled: bool = True
    tau: float = Field(0.07, gt=0)
    weight_labelled: float = Field(0.02, ge=0)
    weight_unlabelled: float = Field(0.10, ge=0)  # times the (ramped) unsupervised weight
    # unlabelled ITCL on a separate student pass over the weak view and original report (official), or on the
    # strong / mixed / PosAug'd pass the unsupervised loss already ran (medref's earlier, cheaper choice)
    unlabelled_view: Literal["weak", "strong"] = "weak"


class DispersiveParams(Strict):
    """Med-DisSeg dispersive loss on one encoder stage (off while weight = 0), for any method."""

    weight: float = Field(0.0, ge=0)  # paper / official: 0.2-0.25
    stage: int = -2  # index into the model's ``feats`` list (-2 = stride-16 stage with the default out_indices)
    variant: Literal["infonce_l2", "infonce_cos", "hinge", "covariance"] = "infonce_l2"
    tau: float = Field(0.5, gt=0)
    eps: float = Field(1.0, gt=0)  # hinge margin
    # D for infonce_l2 and hinge: official = ||z_i - z_j|| (Med-DisSeg code, with log(mean + 1e-8)); disploss =
    # ||z_i - z_j||^2 / d (Wang & He's DispLoss code). docs/FIDELITY.md: the measured reason for the default
    distance: Literal["official", "disploss"] = "disploss"
    include_diagonal: bool = False  # E over i != j (Eq. 2 and the official code)


class TrainParams(Strict):
    model: ModelParams = ModelParams()
    epochs: int = Field(2, ge=1)  # one epoch = one pass over the whole training set (labelled + unlabelled)
    max_steps: int | None = Field(None, ge=1)  # debug runs: stop early (schedules still follow epochs)
    batch_size: int = Field(16, ge=1)  # labelled images per step; paper 32
    unlabelled_batch_size: int = Field(16, ge=1)  # unlabelled images per step (teacher-student methods); paper 32
    lr: float = Field(3e-4, gt=0)
    # official: CosineAnnealingLR(T_max=200, eta_min=1e-6) stepped once per epoch (train_semi.py, wrapper_semi.py::
    # configure_optimizers), so lr is ~1.5e-4 after the paper's 100 epochs; cosine: per step to 0 over the run
    lr_schedule: Literal["official", "cosine"] = "official"
    lr_period_epochs: float = Field(200, gt=0)  # official schedule's T_max
    lr_min: float = Field(1e-6, ge=0)  # official schedule's eta_min
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)  # official: none; the pre-clip norm is logged either way
    # binary loss on logits, supervised and unsupervised: dice = soft Dice per image (MONAI DiceLoss; the official
    # DiceCELoss with one channel computes Dice only, docs/FIDELITY.md); dice_bce = that + BCE
    loss: Literal["dice", "dice_bce"] = "dice"
    checkpoint_every: int = Field(50, ge=1)  # steps; plus one at the end
    # a labelled set smaller than batch_size: "error" (checked by `medref train` before any work) or "cap" the
    # labelled batch at the set size (tiny synthetic demo regimes: 1 % of 200 images = 2). Not a result key.
    small_labelled: Literal["error", "cap"] = "cap"
    precise_bn_batches: int = Field(8, ge=0)  # recompute BN running stats on the final weights (0 = off)
    val_max: int = Field(64, ge=0)  # validation images scored per epoch (0 = none)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile on CUDA
    # bf16 autocast on CPU (README "CPU training variants"): other bits than fp32, so a result param; native
    # numerics only (portable caps the ISA at AVX2, which has no bf16 kernels: measured ~10x slower)
    cpu_bf16: bool = False
    ssl: SSLParams = SSLParams()
    augment: AugmentParams = AugmentParams()
    posaug: PosAugParams = PosAugParams()
    tpatchmix: TPatchMixParams = TPatchMixParams()
    itcl: ITCLParams = ITCLParams()
    dispersive: DispersiveParams = DispersiveParams()


class PretrainTextParams(Strict):
    """params.yaml ``pretrain_text``: the MLM text encoder of ``medref pretrain_text`` (train/pretrain_text.py)."""

    datasets: tuple[str, ...] = ("qata",)  # datasets with report texts to pretrain on (the stage's foreach)
    vocab: str | None = None  # a WordPiece vocab.txt (e.g. CXR-BERT's); null = built from the train texts
    vocab_size: int = Field(2000, ge=16)  # built vocabulary: at most this many entries
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    max_length: int = Field(32, ge=8)  # tokens per text (>= train.model.context_length to load it there)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)  # AdamW, linear warm-up (10 % of steps) then linear decay
    weight_decay: float = Field(0.01, ge=0)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    seed: int = 0
