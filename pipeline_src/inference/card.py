"""The completed model card: train's ``models/<regime>/MODEL.md`` plus the metrics ``medref eval`` measured.

    medref eval qata_10pct         # eval/qata_10pct/MODEL.md
    medref predict qata_10pct ...  # prints where the card is

Train writes the card into its model folder (``pipeline_src/train/model_card.py``). That folder is train's DVC
output, so eval must not touch it: eval writes the completed card into its own output, ``eval/<regime>/MODEL.md``,
replacing the card's "## Evaluation" section with the eval split's metrics in both Dice conventions (the
per-image mean of LViT, and the global/micro Dice of GuideDecoder, pooled over the split's pixels).
"""

from __future__ import annotations

from pathlib import Path

CARD = "MODEL.md"
EVAL_HEADING = "## Evaluation"  # the heading train's card ends with (train/model_card.py)


def _num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def metrics_section(metrics: dict) -> str:
    """Markdown of the eval metrics: binary models in both Dice/IoU conventions, multi-class per class."""
    p = metrics.get("eval_params") or {}
    lines = [
        EVAL_HEADING,
        f"- split: `{metrics.get('eval_split')}` of {metrics.get('dataset')} (n = {metrics.get('n')})",
        f"- threshold {p.get('threshold')}, min_component_size {p.get('min_component_size')}",
        "",
    ]
    if "per_class" in metrics:  # multi-class volumes: 3-D per case and class
        lines += ["| class | Dice | HD95 (mm) |", "|---|---|---|"]
        lines += [f"| {c.get('class_name', c.get('class_index'))} | {_num(c.get('dice'))} | {_num(c.get('hd95'), 2)} |"
                  for c in metrics["per_class"]]
        lines += ["", f"Mean Dice {_num(metrics.get('mean_dice'))}, pooled Dice {_num(metrics.get('dice_global'))}."]
    else:
        lines += [
            "| metric | per-image mean (LViT) | global / micro (GuideDecoder) |",
            "|---|---|---|",
            f"| Dice | {_num(metrics.get('dice'))} ± {_num(metrics.get('dice_std'))} | {_num(metrics.get('dice_global'))} |",
            f"| IoU | {_num(metrics.get('iou'))} ± {_num(metrics.get('iou_std'))} | {_num(metrics.get('iou_global'))} |",
            f"| sensitivity | {_num(metrics.get('sensitivity'))} | {_num(metrics.get('sensitivity_global'))} |",
            f"| specificity | {_num(metrics.get('specificity'))} | {_num(metrics.get('specificity_global'))} |",
            "",
            f"HD95 {_num(metrics.get('hd95'), 2)} px, ASSD {_num(metrics.get('assd'), 2)} px (per-image means); "
            f"{metrics.get('n_empty_gt')} images with an empty ground truth.",
        ]
    return "\n".join(lines) + "\n"


def complete(model_dir: Path, metrics: dict) -> str | None:
    """Train's card with its evaluation section replaced by ``metrics``; None when the folder has no card
    (a model trained before cards existed)."""
    card = Path(model_dir) / CARD
    if not card.is_file():
        return None
    head = card.read_text().split(f"\n{EVAL_HEADING}", 1)[0].rstrip("\n")
    return f"{head}\n\n{metrics_section(metrics)}"


def where(model_dir: Path, eval_dir: Path | None) -> str:
    """One line for ``medref predict``: where the model's card is, completed or not."""
    card = Path(model_dir) / CARD
    if eval_dir is not None and (Path(eval_dir) / CARD).is_file():
        return f"model card: {Path(eval_dir) / CARD} (with eval metrics); train's card: {card}"
    if card.is_file():
        return f"model card: {card} (no eval metrics here: `medref eval` writes eval/<regime>/{CARD})"
    return f"model card: none in {model_dir} (a model trained before cards existed)"
