"""Figures for eval@<regime> and the report (matplotlib, Agg backend: no display on cluster nodes)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

# Fixed metadata so the same figure gives the same bytes (matplotlib otherwise stamps its version/date).
_PNG_META = {"Software": None}
# one marker per published method, the same in every panel
_PUB_MARKERS = {"LViT-T": "D", "GuideDecoder": "s", "U-Net": "v"}


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata=_PNG_META)
    plt.close(fig)


def dice_histogram(dice: np.ndarray, dice_global: float | None, path: Path, title: str) -> None:
    """Distribution of per-image Dice with both conventions marked: the gap between them is the point."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(np.asarray(dice, dtype=float), bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    if len(dice):
        ax.axvline(float(np.mean(dice)), color="k", ls="-", label=f"per-image mean {np.mean(dice):.3f}")
    if dice_global is not None:
        ax.axvline(dice_global, color="#c44e52", ls="--", label=f"global {dice_global:.3f}")
    ax.set_xlabel("Dice per image")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, text: str, title: str, path: Path) -> None:
    """Image | ground truth | prediction, with the report text: what a reader needs to judge one sample."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
    panels = (("image", None, None), ("ground truth", gt, (0.1, 0.8, 0.2)), ("prediction", pred, (0.9, 0.2, 0.2)))
    for ax, (name, mask, colour) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255 if image.max() > 1 else 1)
        if mask is not None:
            rgba = np.zeros((*mask.shape, 4))
            rgba[mask > 0] = (*colour, 0.45)
            ax.imshow(rgba)
            if mask.any() and mask.min() != mask.max():
                ax.contour(mask > 0, levels=[0.5], colors=[colour], linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title + "\n" + "\n".join(textwrap.wrap(text or "(no text)", 110)), fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def dice_vs_fraction(rows: Sequence[dict], published: Sequence[dict], path: Path, metric: str = "dice") -> None:
    """One panel per dataset: per-image (solid) and global (dashed) Dice vs label fraction, one colour per
    method; published numbers drawn as hollow markers at their fraction and labelled as published."""
    datasets = sorted({r["dataset"] for r in rows} | {p["dataset"] for p in published if _any_ds(rows, p)})
    if not datasets:
        datasets = ["(no results)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    methods = sorted({r["method"] for r in rows})
    colour = {m: cmap(i % 10) for i, m in enumerate(methods)}
    for ax, ds in zip(axes[0], datasets, strict=True):
        for m in methods:
            pts = sorted((r for r in rows if r["dataset"] == ds and r["method"] == m), key=lambda r: r["fraction"])
            if not pts:
                continue
            x = [100 * r["fraction"] for r in pts]
            ax.plot(x, [r[metric] for r in pts], "o-", color=colour[m], label=f"{m} (per-image)")
            ax.plot(x, [r[f"{metric}_global"] for r in pts], "s--", color=colour[m], alpha=0.7, label=f"{m} (global)")
        # published numbers: hollow, black, one marker per paper method, so they never look like our runs
        for p in (q for q in published if q["dataset"] == ds):
            for conv in ("per_image", "global"):
                v = p.get(f"{metric}_{conv}")
                if v is None:
                    continue
                ax.scatter(
                    [100 * p["fraction"]],
                    [v],
                    marker=_PUB_MARKERS.get(p["method"], "P"),
                    facecolors="none",
                    edgecolors="black",
                    s=60,
                    zorder=3,
                    label=f"published, not ours: {p['method']} ({conv.replace('_', '-')})",
                )
        ax.set_xscale("log")
        ticks = [1, 5, 10, 25, 50, 100]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlim(0.7, 140)
        ax.set_xlabel("labelled fraction of training masks (%)")
        ax.set_ylabel(f"{metric.capitalize()} (%)")
        ax.set_ylim(0, 100)
        ax.set_title(ds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def _any_ds(rows: Sequence[dict], p: dict) -> bool:
    return any(r["dataset"] == p["dataset"] for r in rows)


def learning_curves(series: dict[str, list[tuple[float, float]]], path: Path, title: str,
                    teacher_student: bool = False) -> None:
    """Loss (left) and validation Dice (right) per epoch for one run, from its DVCLive log.

    ``series`` maps a DVCLive metric name to its (step, value) points. The loss panel draws ``train_loss`` and its
    parts (``train_loss_*``); the Dice panel draws ``val_dice`` (the exported network) and, for a teacher-student
    run, ``val_dice_student`` and ``val_dice_teacher`` beside it, so the two networks are read off one axis. A run
    whose log lacks a key simply has no line for it; a panel with nothing to draw says so, and so does the Dice panel
    of a ``teacher_student`` run whose log has no student/teacher keys."""
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.2))
    losses = ["train_loss"] + sorted(k for k in series if k.startswith("train_loss_"))
    dice = (("val_dice", "exported network", "-", 2.2, "#4c72b0"),
            ("val_dice_student", "student", "--", 1.4, "#dd8452"),
            ("val_dice_teacher", "teacher (EMA)", ":", 1.8, "#55a868"))  # fmt: skip
    cmap = plt.get_cmap("tab10")
    for i, k in enumerate(k for k in losses if series.get(k)):
        x, y = zip(*series[k], strict=True)
        ax_loss.plot(x, y, "o-" if k == "train_loss" else "o--", ms=3, lw=2 if k == "train_loss" else 1,
                     color=cmap(i % 10), label=k.removeprefix("train_"))
    for k, label, ls, lw, colour in dice:
        if series.get(k):
            x, y = zip(*series[k], strict=True)
            ax_dice.plot(x, y, marker="o", ms=3, ls=ls, lw=lw, color=colour, label=label)
    for ax, ylabel in ((ax_loss, "training loss"), (ax_dice, "validation Dice")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "not in this run's log", ha="center", va="center", transform=ax.transAxes, color="0.4")
    if teacher_student and not (series.get("val_dice_student") or series.get("val_dice_teacher")):
        ax_dice.text(0.5, 0.04, "no student/teacher Dice in this log", ha="center", va="bottom",
                     transform=ax_dice.transAxes, fontsize=8, color="0.4")
    ax_dice.set_ylim(0, 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
