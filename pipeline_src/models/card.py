"""The model card: ``models/<regime>/MODEL.md`` (train), completed with the eval metrics in ``eval/<regime>/MODEL.md``.

    medref train qata_10pct        # models/qata_10pct/MODEL.md (method, data, fraction, digests, intended use)
    medref eval qata_10pct         # eval/qata_10pct/MODEL.md: the same card completed with the eval metrics
    medref predict qata_10pct ...  # prints where the card is

``render`` is the card from what train knows; the model folder's writer (``pipeline_src/models/folder.py``) puts
it beside model.pt. Everything in it is a function of train's inputs, so the card's bytes are as deterministic as
config.json's (no dates, no host names). The model folder is train's DVC output, so eval cannot add its metrics
there (DVC would see train's output changed): ``complete`` replaces the card's "## Evaluation" section with the
eval split's metrics, in both Dice conventions (the per-image mean of LViT, and the global/micro Dice of
GuideDecoder, pooled over the split's pixels), and eval writes that into its own output folder.
"""

from __future__ import annotations

from pathlib import Path

from pipeline_src.models.folder import CARD, ModelFolder

# The section eval replaces with its metrics (``complete`` finds it by this heading).
EVAL_HEADING = "## Evaluation"

INTENDED_USE = """\
Research on text-guided (referring) segmentation of lesions in 2-D medical images: reproducing and comparing
label-efficient training methods, and segmenting new images *of the kind it was trained on* together with a
report sentence in the training corpus' style (for QaTa-COV19: a chest X-ray and an LViT-style sentence that
names the infected lung regions, "left" meaning image-left)."""

NOT_VALIDATED = """\
- Clinical use of any kind: diagnosis, triage, treatment decisions, or reading without a radiologist.
- Images from other modalities, scanners, sites, views (lateral films), paediatric patients, or other diseases
  than the training data's; images preprocessed differently from the training shards (size, intensity rule).
- Report texts in another style or language, or that name positions with another left/right convention.
- Calibrated probabilities: the threshold is the eval params' choice, not a validated operating point.
- Any data set other than the evaluation split named in the completed card (eval/<regime>/MODEL.md)."""


def _line(key: str, value) -> str:
    return f"- {key}: {value if value not in (None, '') else 'n/a'}"


def render(regime: str, config: dict, provenance: dict, model_sha256: str, manifest: dict, split: dict) -> str:
    """The card's markdown from what train knows: its config.json, provenance.json, the shards manifest and
    the split file."""
    model = config.get("train", {}).get("model", {})
    git = provenance.get("git") or {}
    uses_text = model.get("arch") != "image_only" and config.get("method") != "image_only"
    text_tower = (model.get("text_weights") or f"own CLIP-style tower (width {model.get('text_width')}, "
                  f"{model.get('text_layers')} layers)") if uses_text else "none (image-only)"
    lines = [
        f"# Model card: {regime}",
        "",
        "## Model",
        _line("method", config.get("method")),
        _line("exported network", {"student": "the student", "teacher": "the EMA teacher"}.get(
            config.get("exported"), config.get("exported"))),
        _line("architecture", model.get("arch")),
        _line("decoder", model.get("decoder") if model.get("arch") != "meddisseg" else None),
        _line("image encoder", model.get("image_encoder")),
        _line("text tower", text_tower),
        _line("context length", model.get("context_length") if uses_text else None),
        _line("classes", model.get("n_classes", 1)),
        _line("training steps", f"{config.get('steps')} of {config.get('total_steps')}"),
        _line("seed", config.get("seed")),
        _line("model.pt sha256", model_sha256),
        _line("params digest (base, train, regime)", provenance.get("params_digest")),
        _line("git commit", f"{git.get('commit')}{' (dirty)' if git.get('dirty') else ''}"),
        "",
        "## Data",
        _line("dataset", split.get("dataset") or manifest.get("dataset")),
        _line("layout", manifest.get("kind")),
        _line("input size", f"{manifest.get('image_size')}x{manifest.get('image_size')} grey"),
        _line("labelled fraction", split.get("fraction")),
        _line("labelled / unlabelled training images", f"{config.get('n_labelled')} / {config.get('n_unlabelled')}"),
        _line("shards digest", (provenance.get("inputs") or {}).get("shards")),
        _line("split digest", (provenance.get("inputs") or {}).get("split")),
        "",
        "## Intended use",
        INTENDED_USE,
        "",
        "## NOT validated for",
        NOT_VALIDATED,
        "",
        EVAL_HEADING,
        f"Not evaluated in this folder. `medref eval {regime}` writes this card completed with the metrics on the "
        f"evaluation split to eval/{regime}/{CARD}.",
        "",
    ]
    return "\n".join(lines)


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
    card = ModelFolder(model_dir).card()
    if card is None:
        return None
    head = card.split(f"\n{EVAL_HEADING}", 1)[0].rstrip("\n")
    return f"{head}\n\n{metrics_section(metrics)}"


def where(model_dir: Path, eval_dir: Path | None) -> str:
    """One line for ``medref predict``: where the model's card is, completed or not."""
    card = ModelFolder(model_dir).card_file
    if eval_dir is not None and (Path(eval_dir) / CARD).is_file():
        return f"model card: {Path(eval_dir) / CARD} (with eval metrics); train's card: {card}"
    if card.is_file():
        return f"model card: {card} (no eval metrics here: `medref eval` writes eval/<regime>/{CARD})"
    return f"model card: none in {model_dir} (a model trained before cards existed)"
