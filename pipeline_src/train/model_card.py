"""The model card ``models/<regime>/MODEL.md``, written by ``medref train`` beside model.pt.

    medref train qata_10pct        # models/qata_10pct/MODEL.md (method, data, fraction, digests, intended use)
    medref eval qata_10pct         # eval/qata_10pct/MODEL.md: the same card completed with the eval metrics

The model folder is train's DVC output, so eval cannot add its metrics there (DVC would see train's output
changed); it writes the completed card into its own output folder instead
(``pipeline_src/inference/card.py``). Everything here is a function of train's inputs, so the card's bytes are
as deterministic as config.json's (no dates, no host names).
"""

from __future__ import annotations

CARD = "MODEL.md"
# The section eval replaces with its metrics (pipeline_src/inference/card.py finds it by this heading).
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
