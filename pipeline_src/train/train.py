"""Training stage: one readable fit loop; methods are strategy objects (``pipeline_src/train/methods.py``).

    medref train --regime qata_10pct            # via the launcher (local in-process by default)
    .venv/bin/python -c "from pipeline_src.train.train import run; ..."   # the typed entry point below

Reads: shards (train + val), the pseudo-label parquet (text regions + position-word spans), the regime's
split file and ``params.train`` (with the regime's overrides) + ``base.seed``.
Writes: ``models/<regime>/`` atomically (model.pt, config.json, provenance.json, live/ = DVCLive) and
resumable checkpoints in ``runs/<regime>/last.pt``.

Determinism: on CPU the same params and inputs give bit-identical weights, and a resumed run ends with the
same weights as an uninterrupted one. Every random draw is a function of (seed, step): the batch order is a
seeded permutation per epoch, and augmentations use a generator seeded per step, so resuming needs only the
step counter, weights and optimiser state (the global RNG states are saved anyway, for any library that
draws from them).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline_src.errors import MedrefError
from pipeline_src.labels.table import Label, read_labels
from pipeline_src.models import build_model
from pipeline_src.models.metrics import dice_iou_from_counts
from pipeline_src.models.text import build_tokenizer
from pipeline_src.train import checkpoint as ckpt_io
from pipeline_src.train.methods import METHODS
from pipeline_src.utils.io import atomic_dir, sha256_file, sha256_json, write_json

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
    from pipeline_src.data.dataset import decode_images, decode_masks, read_table, select_rows

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
    if (table.schema.metadata or {}).get(b"medref.mask_encoding") == b"class_index":
        from pipeline_src.data.volumes import decode_class_masks  # volumes: class indices, not bits

        masks = torch.from_numpy(np.array(decode_class_masks(table), dtype=np.uint8))[:, None]
    else:
        masks = torch.from_numpy(np.array(decode_masks(table), dtype=np.uint8))[:, None]
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
    s = np.arange(total, dtype=np.float64)
    warm = max(cfg.warmup_steps, 0)
    cos = 0.5 * (1 + np.cos(np.pi * np.clip((s - warm) / max(total - warm, 1), 0, 1)))
    lr = cfg.lr * np.where(s < warm, (s + 1) / max(warm, 1), cos)
    ssl = cfg.ssl
    burn = int(round(ssl.burn_in_epochs * steps_per_epoch))
    ramp = int(round(ssl.ramp_epochs * steps_per_epoch))
    unsup = ssl.unsup_weight * np.clip((s - burn + 1) / max(ramp, 1), 0, 1) * (s >= burn)
    # teacher momentum: 0 (= copy the student) during burn-in, then cosine 0.99 -> 0.999 (dinov2's ramp)
    after = np.clip((s - burn) / max(total - burn - 1, 1), 0, 1)
    mom = ssl.ema_end - (ssl.ema_end - ssl.ema_start) * 0.5 * (1 + np.cos(np.pi * after))
    mom = np.where(s < burn, 0.0, mom)
    return Schedules(lr, mom, unsup)


# ---- setup helpers ------------------------------------------------------------------------------------------------

def pick_device(cfg) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise MedrefError("train.device: cuda requested but no CUDA device is available")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


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
    dices = []
    inter_c = den_c = 0  # multi-class: per-class sums over the val slices
    for i in range(0, n, bs):
        b = val.batch(list(range(i, min(n, i + bs))), device)
        tokens = tokenize(b["texts"]).to(device) if net.uses_text else None
        with autocast():
            logits = net(b["images"], tokens)["logits"].float()
        if logits.shape[1] > 1:
            c = logits.shape[1]
            pred = torch.nn.functional.one_hot(logits.argmax(1), c).flatten(0, 2)
            gt = torch.nn.functional.one_hot(b["masks"][:, 0].long(), c).flatten(0, 2)
            inter_c = inter_c + (pred * gt).sum(0)
            den_c = den_c + pred.sum(0) + gt.sum(0)
            continue
        # eval's rule: sigmoid probability > 0.5, then per-image counts -> Dice (models.metrics)
        pred = torch.sigmoid(logits) > 0.5
        gt = b["masks"] > 0
        tp = (pred & gt).flatten(1).sum(1)
        fp = (pred & ~gt).flatten(1).sum(1)
        fn = (~pred & gt).flatten(1).sum(1)
        dices.append(dice_iou_from_counts(tp.cpu().numpy(), fp.cpu().numpy(), fn.cpu().numpy())[0])
    net.train(was)
    if not dices:  # multi-class: mean over foreground classes present (prediction or truth) of the slice Dice
        d = (2 * inter_c / den_c.clamp_min(1))[1:][den_c[1:] > 0]
        return {"val_dice": float(d.float().mean())} if len(d) else {}
    return {"val_dice": float(np.concatenate(dices).mean())}


@torch.no_grad()
def val_alignment(net, val: Split, n_max: int, tokenize, device) -> dict:
    """Image->text retrieval and region read-out on the val images (``pipeline_src.models.alignment``)."""
    from pipeline_src.models.alignment import alignment_score

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


# ---- the stage ----------------------------------------------------------------------------------------------------

def run(params, regime: str, shards_dir: Path, labels_file: Path, split_file: Path, out_dir: Path,
        run_dir: Path, resume: bool = True) -> Path:
    import json

    shards_dir, labels_file, split_file = Path(shards_dir), Path(labels_file), Path(split_file)
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    cfg = params.train_for(regime)
    torch.set_num_threads(params.base.cpu_threads)  # see base.cpu_threads: bit-identical weights across engines
    method_name = params.regime(regime).method
    if method_name not in METHODS:
        raise MedrefError(f"params.yaml: regimes.{regime}.method: {method_name!r} has no training method")
    Method = METHODS[method_name]
    if Method.arch is not None and Method.arch != cfg.model.arch:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"arch": Method.arch})})
    # multi-class (volumes): the head has one channel per class of the shards (background included)
    from pipeline_src.data.dataset import is_class_index, load_manifest

    manifest = load_manifest(shards_dir)
    n_classes = int(manifest["n_classes"]) if is_class_index(manifest) else 1
    if n_classes > 1:
        if Method.needs_unlabelled or Method.has_teacher:
            raise MedrefError(f"params.yaml: regimes.{regime}.method: {method_name!r} is binary-only (sigmoid "
                              f"pseudo-labels); a multi-class dataset ({n_classes} classes) needs a supervised method")
        if cfg.augment.flip_p > 0:
            raise MedrefError(f"params.yaml: regimes.{regime}.train.augment.flip_p must be 0 for a multi-class volumes "
                              "dataset: a horizontal flip swaps left/right organs (kidneys, liver/spleen) but not "
                              "their labels")
    if cfg.model.n_classes != n_classes:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"n_classes": n_classes})})
    seed = params.base.seed
    device = pick_device(cfg)
    seed_everything(seed, device)

    # -- data --
    if not split_file.is_file():
        raise MedrefError(f"{split_file}: split file not found (run `medref split` for {regime})")
    split = json.loads(split_file.read_text())
    labels = read_labels(labels_file)
    lab = load_split(shards_dir, "train", split["labelled"], labels)
    unl = load_split(shards_dir, "train", split["unlabelled"], labels) if split["unlabelled"] else None
    val = load_split(shards_dir, "val", None, labels) if cfg.val_max > 0 else None
    if len(lab) == 0:
        raise MedrefError(f"{split_file}: no labelled images")
    use_unl = Method.needs_unlabelled and unl is not None and len(unl) > 0
    bs_l = min(cfg.batch_size, len(lab))  # 1 % of a small set can hold fewer images than one batch
    bs_u = min(cfg.unlabelled_batch_size, len(unl)) if use_unl else 0
    # One epoch = one pass over the whole training set (labelled + unlabelled) at the labelled batch size,
    # so every regime and method of a dataset trains the same number of steps.
    n_train = len(lab) + (len(unl) if unl is not None else 0)
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    stop = min(total, cfg.max_steps) if cfg.max_steps else total
    sched = make_schedules(cfg, total, steps_per_epoch)

    # -- model, method, optimiser --
    model = build_model(cfg.model).to(device)
    tok = build_tokenizer(cfg.model.context_length, cfg.model.text_weights)
    autocast = contextlib.nullcontext
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        def autocast():  # noqa: E306 - bf16 needs no GradScaler
            return torch.autocast("cuda", dtype=torch.bfloat16)
    method = Method(cfg, model, sched, tok, autocast)
    opt = torch.optim.AdamW(param_groups(method.student, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    fit_model = method.student
    if cfg.compile and device.type == "cuda":
        # Compile the student's forward in place; state_dict keys stay unprefixed for checkpoints.
        fit_model.compile()

    fingerprint = sha256_json({
        "train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NON_RESULT_KEYS},
        "method": method_name, "seed": seed, "split": split.get("digest"),
        "labelled": len(lab), "unlabelled": len(unl) if unl is not None else 0,
    })

    # -- resume --
    step, history, acc = 0, [], {}
    state = ckpt_io.load_checkpoint(run_dir, fingerprint) if resume else None
    if state is not None:
        method.modules.load_state_dict(state["modules"])
        opt.load_state_dict(state["optimizer"])
        step, history, acc = state["step"], state["history"], state["acc"]
        ckpt_io.set_rng_state(state["rng"])
        print(f"[train] {regime}: resumed from {run_dir / ckpt_io.CHECKPOINT} at step {step}/{stop}")

    def save_checkpoint() -> None:
        ckpt_io.save_torch({
            "modules": method.modules.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "history": history, "acc": acc, "rng": ckpt_io.rng_state(), "fingerprint": fingerprint,
            "method": method_name, "regime": regime, "config": cfg.model_dump(mode="json"),
        }, run_dir / ckpt_io.CHECKPOINT)

    # -- the loop --
    method.train()
    t0 = time.perf_counter()
    bar = tqdm(total=stop, initial=step, desc=f"train {regime} [{method_name}]", unit="step",
               disable=os.environ.get("MEDREF_PROGRESS", "1") == "0", dynamic_ncols=True)
    while step < stop:
        for group in opt.param_groups:
            group["lr"] = float(sched.lr[step])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 104_729 + step)
        bl = lab.batch(batch_indices(len(lab), bs_l, step, seed, 0), device)
        bu = unl.batch(batch_indices(len(unl), bs_u, step, seed, 1), device) if use_unl else None

        loss, logs = method.loss(step, bl, bu, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{regime}: loss is {loss.item()} at step {step} ({logs})")  # dinov2: fail loudly
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(method.student.parameters(), cfg.grad_clip)
        opt.step()
        method.after_step(step)

        logs = {"loss": loss.detach(), **logs}
        for k, v in logs.items():  # per-epoch means (kept in the checkpoint so a resumed epoch averages right)
            s, c = acc.get(k, (0.0, 0))
            acc[k] = (s + float(v), c + 1)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{sched.lr[step - 1]:.2e}")
        if step % steps_per_epoch == 0 or step == stop:
            row = {"epoch": math.ceil(step / steps_per_epoch), "step": step, "lr": float(sched.lr[step - 1])}
            if method.has_teacher:
                row["unsup_weight"] = float(sched.unsup[step - 1])
            row.update({f"train_{k}": s / c for k, (s, c) in acc.items()})
            if val is not None:
                row.update(validate(method.export(), val, cfg.val_max, tok, device, autocast))
            history.append(row)
            acc = {}
            bar.write(f"[train] {regime} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in row.items()))
        if step % cfg.checkpoint_every == 0 or step == stop:
            save_checkpoint()
    bar.close()
    elapsed = time.perf_counter() - t0

    # -- outputs (atomic) --
    net = method.export()
    precise_bn(net, [lab] + ([unl] if unl is not None else []), cfg.precise_bn_batches, cfg.batch_size, tok, device,
               autocast)
    if val is not None and history:
        history[-1].update(validate(net, val, cfg.val_max, tok, device, autocast))  # the exported model's score
        history[-1].update(val_alignment(net, val, cfg.val_max, tok, device))
        print(f"[train] {regime} exported model ({'EMA teacher' if method.has_teacher else 'student'}, precise BN): "
              + " ".join(f"{k}={v:.4g}" for k, v in history[-1].items() if k.startswith("val_")))
    mcfg = cfg.model.model_dump(mode="json")
    config = {"regime": regime, "method": method_name, "seed": seed, "steps": stop, "total_steps": total,
              "steps_per_epoch": steps_per_epoch, "n_labelled": len(lab), "n_unlabelled": len(unl) if unl else 0,
              "batch_size": bs_l, "unlabelled_batch_size": bs_u, "device": device.type,
              "train": cfg.model_dump(mode="json")}
    with atomic_dir(out_dir) as tmp:
        sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        ckpt_io.save_torch({"state_dict": sd, "model_config": mcfg, "method": method_name, "regime": regime},
                           tmp / "model.pt")
        write_json(tmp / "config.json", config)
        # model_sha256: load_predictor checks it, so a modified/truncated model.pt is caught before use
        write_json(tmp / "provenance.json", {"model_sha256": sha256_file(tmp / "model.pt"), **_provenance(
                   params, regime, shards_dir, labels_file, split_file, step)})
        _write_live(tmp / "live", history, config)
    # Wall time is not part of any output (outputs must be byte-identical whichever engine or host ran
    # them); it goes to the run folder and the log.
    write_json(run_dir / "timing.json", {"train_seconds": round(elapsed, 3), "steps": step})
    print(f"[train] {regime}: {step} steps in {elapsed:.1f} s")
    return out_dir


def _provenance(params, regime, shards_dir, labels_file, split_file, steps: int) -> dict:
    from pipeline_src import provenance

    raw = params.model_dump(mode="json")
    block = provenance.block(raw, ["base", "train", f"regimes.{regime}"],
                             {"shards": shards_dir, "labels": labels_file, "split": split_file})
    block["steps"] = steps
    return block


def _write_live(live_dir: Path, history: list[dict], config: dict) -> None:
    """Per-epoch metrics as a DVCLive folder (metrics.json + plots/metrics/*.tsv) for `dvc plots`.

    Replayed from the history at the end (the history lives in the checkpoint), so a resumed run's curves are
    complete and a crashed run never leaves a half-written live/ in models/<regime>/."""
    from dvclive import Live

    with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        live.log_params({k: v for k, v in config.items() if not isinstance(v, dict)})
        for row in history:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    live.log_metric(k, v)
            live.next_step()
