"""Training stage: one readable fit loop; methods are strategy objects (``pipeline_src/train/methods.py``).

    medref train --regime qata_10pct            # via the launcher (local in-process by default)
    .venv/bin/python -c "from pipeline_src.train.train import run; ..."   # the typed entry point below

Reads: shards (train + val), the pseudo-label parquet (text regions + position-word spans), the regime's
split file and ``params.train`` (with the regime's overrides) + ``base.seed``.
Writes: ``models/<regime>/`` atomically through its one writer (``pipeline_src/models/folder.py``: model.pt,
config.json, provenance.json, MODEL.md, live/ = DVCLive) and
resumable checkpoints in ``runs/<regime>/last.pt``.

Determinism: on CPU the same params and inputs give bit-identical weights, and a resumed run ends with the
same weights as an uninterrupted one. Every random draw is a function of (seed, step): the batch order is a
seeded permutation per epoch, and augmentations use a generator seeded per step, so resuming needs only the
step counter, weights and optimiser state (the global RNG states are saved anyway, for any library that
draws from them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline_src import provenance
from pipeline_src.data.shards import decode_images, decode_mask_column, load_manifest, read_table, select_rows
from pipeline_src.errors import MedrefError
from pipeline_src.labels.table import Label, read_labels
from pipeline_src.models import build_model, card, folder
from pipeline_src.models.alignment import alignment_score
from pipeline_src.models.task import from_channels
from pipeline_src.models.text import build_tokenizer
from pipeline_src.models.weights import record as weights_record
from pipeline_src.train import checkpoint as ckpt_io
from pipeline_src.train.methods import METHODS
from pipeline_src.train.preflight import preflight
from pipeline_src.utils.io import output_errors, sha256_json, write_json
from pipeline_src.utils.stage import torch_device

# Keys that do not change the result: a checkpoint written under other values still resumes.
NON_RESULT_KEYS = ("max_steps", "checkpoint_every", "val_max", "compile", "device", "small_labelled")


# ---- data -------------------------------------------------------------------------------------------------------

@dataclass
class Split:
    """One subset held in memory as uint8 tensors (QaTa at 224^2 is ~0.5 GB: fine, and far faster than a
    per-item Dataset on 2 cores)."""

    ids: list[str]
    images: torch.Tensor  # uint8 [N,1,H,W]
    masks: torch.Tensor  # uint8 [N,1,H,W]
    texts: list[str]
    spans: list[list[tuple[int, int]]]
    regions: torch.Tensor  # int64 [N,6]
    known: torch.Tensor  # bool [N]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: list[int], device: torch.device) -> dict:
        t = torch.tensor(idx, dtype=torch.long)
        return {
            "images": self.images[t].to(device).float().div_(255),
            "masks": self.masks[t].to(device).float(),
            "texts": [self.texts[i] for i in idx],
            "spans": [list(self.spans[i]) for i in idx],
            "regions": self.regions[t],
            "known": self.known[t],
        }


def load_split(shards_dir: Path, split: str, ids: list[str] | None, labels: dict[str, Label]) -> Split:
    table = read_table(shards_dir, split, columns=["id", "image", "mask", "height", "width", "text"])
    all_ids = table.column("id").to_pylist()
    if ids is None:
        rows = list(range(len(all_ids)))
    else:
        rows = select_rows(all_ids, ids, f"{shards_dir}/{split}").tolist()  # split-file order: not shard layout
    table = table.take(rows)
    ids_sel = table.column("id").to_pylist()
    texts = [t or "" for t in table.column("text").to_pylist()]
    regions, known, spans = [], [], []
    for k in ids_sel:
        if k not in labels:
            raise MedrefError(f"pseudo-label file has no row for id {k!r} (labels and shards out of step)")
        r, s = labels[k]
        known.append(r is not None)
        regions.append(list(r) if r is not None else [0] * 6)
        spans.append(s)
    images = torch.from_numpy(np.array(decode_images(table), dtype=np.uint8))[:, None]  # copy: Arrow views are read-only
    masks = torch.from_numpy(np.array(decode_mask_column(table), dtype=np.uint8))[:, None]  # bits or class indices
    return Split(ids_sel, images, masks, texts, spans, torch.tensor(regions, dtype=torch.long).reshape(-1, 6),
                 torch.tensor(known, dtype=torch.bool))


def batch_indices(n: int, bs: int, step: int, seed: int, stream: int) -> list[int]:
    """Indices of batch ``step`` from an endless stream of seeded per-epoch permutations of range(n).

    A pure function of its arguments: resuming at any step needs no sampler state."""
    out = []
    pos = step * bs
    while len(out) < bs:
        epoch, off = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + stream * 7_919 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        take = perm[off: off + bs - len(out)]
        out += take
        pos += len(take)
    return out


# ---- schedules (per-step arrays, dinov2 style) --------------------------------------------------------------------

@dataclass
class Schedules:
    lr: np.ndarray
    momentum: np.ndarray
    unsup: np.ndarray


def make_schedules(cfg, total: int, steps_per_epoch: int) -> Schedules:
    """Per-step lr, teacher momentum and unsupervised weight.

    lr: ``official`` = CosineAnnealingLR(T_max = lr_period_epochs, eta_min = lr_min) stepped once per epoch, as
    the official Lightning module does (``configure_optimizers``); ``cosine`` = per step to 0 over the run. Either
    after ``warmup_steps`` of linear warm-up. Momentum: 0 (the teacher copies the student) during burn-in, then
    linear from ema_start to ema_end over ema_ramp_epochs (``_ema_m_now``), so a run of a few epochs has a teacher
    with the official horizon 1 / (1 - m) ~ 100 steps rather than one that never moves."""
    s = np.arange(total, dtype=np.float64)
    warm = max(cfg.warmup_steps, 0)
    if cfg.lr_schedule == "official":
        epoch = np.floor(s / steps_per_epoch)
        shape = cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + np.cos(np.pi * epoch / cfg.lr_period_epochs))
    else:
        shape = cfg.lr * 0.5 * (1 + np.cos(np.pi * np.clip((s - warm) / max(total - warm, 1), 0, 1)))
    lr = np.where(s < warm, cfg.lr * (s + 1) / max(warm, 1), shape)
    ssl = cfg.ssl
    burn = int(round(ssl.burn_in_epochs * steps_per_epoch))
    ramp = int(round(ssl.ramp_epochs * steps_per_epoch))
    unsup = ssl.unsup_weight * np.clip((s - burn + 1) / max(ramp, 1), 0, 1) * (s >= burn)
    ema_ramp = ssl.ema_ramp_epochs * steps_per_epoch
    after = np.clip((s - burn) / ema_ramp, 0, 1) if ema_ramp > 0 else np.ones_like(s)
    mom = ssl.ema_start + (ssl.ema_end - ssl.ema_start) * after
    mom = np.where(s < burn, 0.0, mom)
    return Schedules(lr, mom, unsup)


# ---- setup helpers ------------------------------------------------------------------------------------------------

def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        # CPU: bit-identical weights. (CUDA keeps its fast non-deterministic kernels; bf16 is not bitwise anyway.)
        torch.use_deterministic_algorithms(True)
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    # No weight decay on norms, biases and embeddings (nanoGPT: decay only 2-D+ matmul/conv weights).
    decay, no = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no, "weight_decay": 0.0}]


@torch.no_grad()
def precise_bn(net, splits: list[Split], n_batches: int, bs: int, tokenize, device, autocast) -> None:
    """Recompute BatchNorm running statistics for the final weights (Detectron2's PreciseBN).

    BN's running stats are an EMA over batches seen with *older* weights and start at var = 1; after a short
    run they lag the trained network, and eval-mode predictions shrink (val Dice 0.55 in eval vs 0.74 in train
    mode after the 52-step demo). A cumulative average over ``n_batches`` fixed training batches fixes that."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or n_batches == 0:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was = net.training
    net.train()
    done = 0
    for sp in splits:
        for i in range(0, len(sp), bs):
            if done == n_batches:
                break
            b = sp.batch(list(range(i, min(len(sp), i + bs))), device)
            tokens = tokenize(b["texts"]).to(device) if net.uses_text else None
            with autocast():
                net(b["images"], tokens)
            done += 1
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    net.train(was)


@torch.no_grad()
def validate(net, val: Split, n_max: int, tokenize, device, autocast, bs: int = 32) -> dict:
    """Mean per-image Dice at 0.5 on the first ``n_max`` val images: for a binary model the number ``medref eval``
    reports (``dice``) for the same images with ``min_component_size`` 0. Multi-class: per-class Dice pooled over
    the val slices (eval scores re-stacked 3-D cases instead)."""
    n = min(len(val), n_max)
    if n == 0:
        return {}
    was = net.training
    net.eval()
    rule = None  # the task's validation accumulator, chosen by the head's width
    for i in range(0, n, bs):
        b = val.batch(list(range(i, min(n, i + bs))), device)
        tokens = tokenize(b["texts"]).to(device) if net.uses_text else None
        with autocast():
            logits = net(b["images"], tokens)["logits"].float()
        if rule is None:
            rule = from_channels(logits.shape[1]).validation()
        rule.add(logits, b["masks"])
    net.train(was)
    return rule.result()


@torch.no_grad()
def val_alignment(net, val: Split, n_max: int, tokenize, device) -> dict:
    """Image->text retrieval and region read-out on the val images (``pipeline_src.models.alignment``)."""
    n = min(len(val), n_max)
    if n < 2 or not net.uses_text:
        return {}
    was = net.training
    net.eval()
    b = val.batch(list(range(n)), device)
    out = net(b["images"], tokenize(b["texts"]).to(device))
    net.train(was)
    regions = torch.where(b["known"][:, None], b["regions"], torch.full_like(b["regions"], -1)).numpy()
    score = alignment_score(out["img_emb"].float().cpu().numpy(), out["txt_emb"].float().cpu().numpy(), b["texts"],
                            regions)
    return {f"val_{k}": v for k, v in score.items() if v is not None and k != "n"}  # the curve logs numbers only


# ---- the stage: setup -> fit -> export ----------------------------------------------------------------------------

def run(params, regime: str, shards_dir: Path, labels_file: Path, split_file: Path, out_dir: Path,
        run_dir: Path, resume: bool = True) -> Path:
    """Train ``regime`` and write ``out_dir`` (models/<regime>/). Checks first (``preflight``), then the loop."""
    paths = {"shards_dir": Path(shards_dir), "labels_file": Path(labels_file), "split_file": Path(split_file),
             "run_dir": Path(run_dir)}
    state = setup(params, regime, resume=resume, out_dir=Path(out_dir), **paths)
    fit(state)
    return export(state, params, Path(out_dir))


@dataclass(kw_only=True)
class RunState:
    """What the loop and the export need: data, model, method, optimiser, schedules and the progress so far.
    Built by keyword (kw_only): 21 fields of a few types, where a swapped pair would still run."""

    regime: str
    method_name: str
    cfg: object
    seed: int
    device: torch.device
    autocast: object
    lab: Split
    unl: Split | None
    val: Split | None
    use_unl: bool
    bs_l: int
    bs_u: int
    steps_per_epoch: int
    total: int
    stop: int
    sched: Schedules
    method: object
    opt: torch.optim.Optimizer
    tok: object
    fingerprint: str
    paths: dict
    step: int = 0
    history: list | None = None
    acc: dict | None = None
    elapsed: float = 0.0


def setup(params, regime: str, *, shards_dir: Path, labels_file: Path, split_file: Path, run_dir: Path,
          resume: bool = True, out_dir: Path | None = None) -> RunState:
    """Resolve the config, load the data, build model/method/optimiser, and resume from the run folder's checkpoint."""
    plan = preflight(params, regime, shards_dir=shards_dir, labels_file=labels_file, split_file=split_file,
                     out_dir=out_dir, run_dir=run_dir)
    cfg = plan.cfg
    device = torch.device(torch_device(cfg.device, threads=params.base.cpu_threads,
                                       unavailable="train.device: cuda requested but no CUDA device is available"))
    seed = params.base.seed + params.regime(regime).seed  # a study's seed axis: base.seed + 0, 1, 2, ...
    seed_everything(seed, device)
    lab, unl, val = _load_data(regime, plan, cfg, shards_dir, labels_file)
    Method = METHODS[plan.method]
    steps = _step_plan(cfg, Method, lab, unl)
    sched = make_schedules(cfg, steps["total"], steps["steps_per_epoch"])
    method, opt, tok, autocast = _build(cfg, Method, sched, device)
    state = RunState(regime=regime, method_name=plan.method, cfg=cfg, seed=seed, device=device, autocast=autocast,
                     lab=lab, unl=unl, val=val, **steps, sched=sched, method=method, opt=opt, tok=tok,
                     fingerprint=_fingerprint(cfg, plan, seed, lab, unl),
                     paths={"shards_dir": shards_dir, "labels_file": labels_file, "split_file": split_file,
                            "run_dir": run_dir}, step=0, history=[], acc={})
    if resume:
        _resume(state)
    return state


def _load_data(regime: str, plan, cfg, shards_dir: Path, labels_file: Path) -> tuple[Split, Split | None, Split | None]:
    """The labelled and unlabelled train images of the split, and the val images for the learning curve."""
    labels = read_labels(labels_file)
    lab = load_split(shards_dir, "train", plan.split["labelled"], labels)
    unl = load_split(shards_dir, "train", plan.split["unlabelled"], labels) if plan.split["unlabelled"] else None
    val = load_split(shards_dir, "val", None, labels) if cfg.val_max > 0 else None
    n_unknown = sum(int((~sp.known).sum()) for sp in (lab, unl) if sp is not None)
    if n_unknown:
        n_all = len(lab) + (len(unl) if unl is not None else 0)
        print(f"[train] {regime}: {n_unknown} of {n_all} training texts name no lung position (regions unknown: "
              "they get no ITCL positives and no T-PatchMix partner)", flush=True)
    return lab, unl, val


def _step_plan(cfg, Method, lab: Split, unl: Split | None) -> dict:
    """Batch sizes and the step counts (RunState's keys): one epoch = one pass over the whole training set
    (labelled + unlabelled) at the labelled batch size, so every regime and method of a dataset trains the same
    number of steps."""
    use_unl = Method.needs_unlabelled and unl is not None and len(unl) > 0
    n_train = len(lab) + (len(unl) if unl is not None else 0)
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    return {"use_unl": use_unl,
            "bs_l": min(cfg.batch_size, len(lab)),  # 1 % of a small set can hold fewer images than one batch
            "bs_u": min(cfg.unlabelled_batch_size, len(unl)) if use_unl else 0,
            "steps_per_epoch": steps_per_epoch, "total": total,
            "stop": min(total, cfg.max_steps) if cfg.max_steps else total}


def _build(cfg, Method, sched: Schedules, device: torch.device):
    """The model on its device, the tokenizer, the autocast context, the method around them and its optimiser."""
    model = build_model(cfg.model).to(device)
    tok = build_tokenizer(cfg.model.context_length, cfg.model.text_weights)
    autocast = contextlib.nullcontext
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        def autocast():  # noqa: E306 - bf16 needs no GradScaler
            return torch.autocast("cuda", dtype=torch.bfloat16)
    elif cfg.cpu_bf16:
        def autocast():  # noqa: E306 - train.cpu_bf16 (preflight: native numerics only)
            return torch.autocast("cpu", dtype=torch.bfloat16)
    method = Method(cfg, model, sched, tok, autocast)
    opt = torch.optim.AdamW(param_groups(method.student, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                            foreach=True)  # CPU defaults to the per-tensor loop, ~5x slower here
    if cfg.compile and device.type == "cuda":
        method.student.compile()  # in place: state_dict keys stay unprefixed for checkpoints
    return method, opt, tok, autocast


def _fingerprint(cfg, plan, seed: int, lab: Split, unl: Split | None) -> str:
    """What a checkpoint must match to be resumed: every result key of the config, the weights, method, seed and
    split."""
    return sha256_json({
        "train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NON_RESULT_KEYS},
        # other weights behind the same path: no resume from the old run (key absent without weights files)
        **({"weights": w} if (w := weights_digests(cfg.model)) else {}),
        "method": plan.method, "seed": seed, "split": plan.split.get("digest"),
        "labelled": len(lab), "unlabelled": len(unl) if unl is not None else 0,
    })


def _resume(s: RunState) -> None:
    """Continue from the run folder's checkpoint when one of this fingerprint is there."""
    run_dir = s.paths["run_dir"]
    ckpt = ckpt_io.load_checkpoint(run_dir, s.fingerprint)
    if ckpt is not None:
        s.method.modules.load_state_dict(ckpt["modules"])
        s.opt.load_state_dict(ckpt["optimizer"])
        s.step, s.history, s.acc = ckpt["step"], ckpt["history"], ckpt["acc"]
        ckpt_io.set_rng_state(ckpt["rng"])
        print(f"[train] {s.regime}: resumed from {run_dir / ckpt_io.CHECKPOINT} at step {s.step}/{s.stop}")


def save_checkpoint(s: RunState) -> None:
    path = s.paths["run_dir"] / ckpt_io.CHECKPOINT
    with _output_errors(path, s.regime):
        ckpt_io.save_torch({
            "modules": s.method.modules.state_dict(), "optimizer": s.opt.state_dict(), "step": s.step,
            "history": s.history, "acc": s.acc, "rng": ckpt_io.rng_state(), "fingerprint": s.fingerprint,
            "method": s.method_name, "regime": s.regime, "config": s.cfg.model_dump(mode="json"),
        }, path)


def fit(s: RunState) -> None:
    """The loop: one optimiser step per labelled (+ unlabelled) batch; per-epoch logs, validation, checkpoints."""
    cfg, method, opt, sched = s.cfg, s.method, s.opt, s.sched
    method.train()
    t0 = time.perf_counter()
    bar = tqdm(total=s.stop, initial=s.step, desc=f"train {s.regime} [{s.method_name}]", unit="step",
               disable=os.environ.get("MEDREF_PROGRESS", "1") == "0", dynamic_ncols=True)
    while s.step < s.stop:
        step = s.step
        for group in opt.param_groups:
            group["lr"] = float(sched.lr[step])
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + 104_729 + step)
        bl = s.lab.batch(batch_indices(len(s.lab), s.bs_l, step, s.seed, 0), s.device)
        bu = s.unl.batch(batch_indices(len(s.unl), s.bs_u, step, s.seed, 1), s.device) if s.use_unl else None

        loss, logs = method.loss(step, bl, bu, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{s.regime}: loss is {loss.item()} at step {step} ({logs})")  # dinov2: fail loudly
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in method.student.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)  # logged before any clipping (the official code clips nothing)
        if cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(method.student.parameters(), cfg.grad_clip, norm)
        opt.step()
        method.after_step(step)

        logs = {"loss": loss.detach(), **logs, "grad_norm": norm.detach()}
        for k, v in logs.items():  # per-epoch means (kept in the checkpoint so a resumed epoch averages right)
            total, count = s.acc.get(k, (0.0, 0))
            s.acc[k] = (total + float(v), count + 1)
        s.step = step = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{sched.lr[step - 1]:.2e}")
        if step % s.steps_per_epoch == 0 or step == s.stop:
            row = {"epoch": math.ceil(step / s.steps_per_epoch), "step": step, "lr": float(sched.lr[step - 1])}
            if method.has_teacher:
                row["unsup_weight"] = float(sched.unsup[step - 1])
            row.update({f"train_{k}": total / count for k, (total, count) in s.acc.items()})
            if s.val is not None:
                row.update(validate(method.export(), s.val, cfg.val_max, s.tok, s.device, s.autocast))
                if method.has_teacher:  # the learning curve scores both networks, whichever is exported
                    for name in ("student", "teacher"):
                        v = validate(method.modules[name], s.val, cfg.val_max, s.tok, s.device, s.autocast)
                        row.update({f"val_dice_{name}": v["val_dice"]} if "val_dice" in v else {})
            s.history.append(row)
            s.acc = {}
            bar.write(f"[train] {s.regime} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                        for k, v in row.items()))
        if step % cfg.checkpoint_every == 0 or step == s.stop:
            save_checkpoint(s)
    bar.close()
    s.elapsed = time.perf_counter() - t0


def export(s: RunState, params, out_dir: Path) -> Path:
    """Precise BN, the exported network's validation scores, then models/<regime>/ written atomically."""
    cfg = s.cfg
    net = s.method.export()
    precise_bn(net, [s.lab] + ([s.unl] if s.unl is not None else []), cfg.precise_bn_batches, cfg.batch_size, s.tok,
               s.device, s.autocast)
    if s.val is not None and s.history:
        s.history[-1].update(validate(net, s.val, cfg.val_max, s.tok, s.device, s.autocast))  # the exported model
        s.history[-1].update(val_alignment(net, s.val, cfg.val_max, s.tok, s.device))
        print(f"[train] {s.regime} exported model ({s.method.exported}, precise BN): "
              + " ".join(f"{k}={v:.4g}" for k, v in s.history[-1].items() if k.startswith("val_")))
    config = {"regime": s.regime, "method": s.method_name, "exported": s.method.exported, "seed": s.seed,
              "steps": s.stop, "total_steps": s.total,
              "steps_per_epoch": s.steps_per_epoch, "n_labelled": len(s.lab),
              "n_unlabelled": len(s.unl) if s.unl else 0, "batch_size": s.bs_l, "unlabelled_batch_size": s.bs_u,
              "device": s.device.type, "train": cfg.model_dump(mode="json")}
    p = s.paths
    manifest = load_manifest(p["shards_dir"])
    # How the training images were made: `medref predict` repeats it on a new image (size, intensity rule, the
    # dataset's bit depth, the image size limits).
    pp = manifest.get("params") or {}
    config["input"] = {"image_size": manifest.get("image_size"), "kind": manifest.get("kind"),
                       **{k: v for k, v in pp.items() if k.startswith("intensity")},
                       "bits": (manifest.get("intensity") or {}).get("bits"),
                       **{k: pp[k] for k in ("min_image_side", "max_megapixels") if k in pp}}
    prov = _provenance(params, s.regime, p["shards_dir"], p["labels_file"], p["split_file"], s.step, s.device.type)
    split = json.loads(Path(p["split_file"]).read_text())
    with _output_errors(out_dir, s.regime):
        folder.write(out_dir, state_dict={k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                     model_config=cfg.model.model_dump(mode="json"), method=s.method_name, regime=s.regime,
                     config=config, provenance={**prov, "weights": weights_record(cfg.model)},
                     card=lambda digest: card.render(s.regime, config, prov, digest, manifest, split),
                     live=lambda live_dir: _write_live(live_dir, s.history, config))
    # Wall time is not part of any output (outputs must be byte-identical whichever engine or host ran
    # them); it goes to the run folder and the log.
    write_json(p["run_dir"] / "timing.json", {"train_seconds": round(s.elapsed, 3), "steps": s.step})
    print(f"[train] {s.regime}: {s.step} steps in {s.elapsed:.1f} s")
    return out_dir


def weights_digests(model) -> dict[str, str]:
    return {role: e["sha256"] for role, e in weights_record(model).items()}


def _output_errors(path: Path, regime: str):
    return output_errors(path, rerun=f"`medref train {regime}` (it resumes from its last checkpoint)")


def _provenance(params, regime, shards_dir, labels_file, split_file, steps: int, device: str) -> dict:
    return provenance.stage_block(params, ["base", "train", f"regimes.{regime}"],
                                  {"shards": shards_dir, "labels": labels_file, "split": split_file},
                                  device=device, extra={"steps": steps})


def _write_live(live_dir: Path, history: list[dict], config: dict) -> None:
    """Per-epoch metrics as a DVCLive folder (metrics.json + plots/metrics/*.tsv) for `dvc plots`.

    Replayed from the history at the end (the history lives in the checkpoint), so a resumed run's curves are
    complete and a crashed run never leaves a half-written live/ in models/<regime>/."""
    from unittest import mock

    import dvclive.live
    from dvclive import Live

    # DVCLive signals each step to VS Code through one shared file, .dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED,
    # and removes it with exists-then-remove. Two trainings finishing together in one repo (Snakemake --cores 2)
    # race on it: one of them crashed with FileNotFoundError in the fresh-clone CI run. This is a replay at
    # export, not a live run, so no step signal is wanted: both hooks are off here.
    with mock.patch.object(dvclive.live, "mark_dvclive_step_completed", lambda step: None), \
            mock.patch.object(dvclive.live, "cleanup_dvclive_step_completed", lambda: None), \
            Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        live.log_params({k: v for k, v in config.items() if not isinstance(v, dict)})
        for row in history:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    live.log_metric(k, v)
            live.next_step()
