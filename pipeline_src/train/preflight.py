"""Everything about a training run that can be checked before any work starts (or any SLURM job is submitted).

    medref train qata_10pct          # launcher.launch() calls preflight() first, on the login node

``preflight`` reads only params, the shards manifest and the split file (no images, no model), and returns the
resolved :class:`Plan` that ``train.run`` then trains: the train config with the method's forced architecture and
the class count of the shards filled in. Every check that can fail is here, so a bad config fails in a second on
the caller's machine instead of minutes later inside a queued GPU job:

- the regime's method is a registered training method;
- the shards exist; a multi-class (volumes) dataset gets a supervised method and no horizontal flip;
- the timm image encoder exists and has the stages ``out_indices`` names, and the shards' image size leaves its
  deepest stage at least 2 x 2 (and lines up with the decoder's skip connections);
- local weight files/folders named in params exist (nothing is downloaded);
- the split file exists and was written for THIS regime's fraction, split seed and shards (a split file from
  another fraction or from shards since rebuilt would silently train on the wrong labelled set);
- the pseudo-label file exists;
- the labelled set fills one batch, unless ``train.small_labelled: cap``;
- ``--out`` (models/<regime>) and ``--run-dir`` (runs/<regime>) can be written: no dangling symlink or file in
  the way, not a read-only filesystem, not a folder without write permission (``io.check_writable``), so a run
  does not find out at export, after the whole training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline_src.data.shards import load_manifest
from pipeline_src.data.splits import labelled_selection
from pipeline_src.errors import MedrefError
from pipeline_src.models.task import from_manifest
from pipeline_src.models.weights import weight_paths
from pipeline_src.utils.io import check_writable


@dataclass(frozen=True)
class Plan:
    regime: str
    method: str
    cfg: object  # TrainParams, resolved (method's arch, n_classes of the shards)
    split: dict  # the split file's contents
    n_classes: int


def preflight(params, regime: str, *, shards_dir: Path, labels_file: Path, split_file: Path,
              params_file: Path | str | None = None, out_dir: Path | None = None,
              run_dir: Path | None = None) -> Plan:
    """Check the run and return what to train; raise one MedrefError naming the file or key otherwise."""
    # imported here: torch's import cost (the methods import torch; this module's top does not)
    from pipeline_src.train.methods import METHODS

    src = str(params_file or "params.yaml")
    shards_dir, labels_file, split_file = Path(shards_dir), Path(labels_file), Path(split_file)
    r = params.regime(regime)
    cfg = params.train_for(regime)
    if r.method not in METHODS:
        raise MedrefError(f"{src}: {params.run_key(regime, 'method')}: {r.method!r} has no training method")
    Method = METHODS[r.method]
    if cfg.cpu_bf16 and params.base.cpu_numerics == "portable":
        raise MedrefError(f"{src}: {params.run_key(regime, 'train.cpu_bf16')}: true needs base.cpu_numerics: native "
                          "(portable caps the CPU kernels at AVX2, which has no bf16 ones: ~10x slower, not faster)")
    model = cfg.model
    if Method.arch is not None and Method.arch != model.arch:
        model = model.model_copy(update={"arch": Method.arch})

    manifest = load_manifest(shards_dir)
    task = from_manifest(manifest)
    n_classes = task.n_classes
    if not task.teacher_student_ok and (Method.needs_unlabelled or Method.has_teacher):
        raise MedrefError(f"{src}: {params.run_key(regime, 'method')}: {r.method!r} is binary-only (sigmoid pseudo-labels); "
                          f"a multi-class dataset ({n_classes} classes) needs a supervised method")
    if not task.flip_ok and cfg.augment.flip_p > 0:
        raise MedrefError(f"{src}: {params.run_key(regime, 'train.augment.flip_p')} must be 0 for a multi-class volumes "
                          "dataset: a horizontal flip swaps left/right organs (kidneys, liver/spleen) but not "
                          "their labels")
    model = model.model_copy(update={"n_classes": n_classes})

    _check_encoder(model, int(manifest.get("image_size") or 0), str(shards_dir / "manifest.json"))
    # imported here: timm's and torch's import cost (models.encoders imports both; this module's top does not)
    from pipeline_src.models.encoders import resolve_image_norm

    try:  # every weights file/folder exists locally (hf: / hf-hub: resolved from the cache, never downloaded)
        weight_paths(model)
        # saved in model.pt resolved: a predictor rebuilds the model without the weights files
        model = model.model_copy(update={"image_norm": resolve_image_norm(model.image_norm, model.image_weights)})
    except MedrefError as e:  # name the key to edit: the regime's override when it sets it
        msg = str(e)
        for key in ("image_weights", "text_weights"):
            msg = msg.replace(f"train.model.{key}:", f"{params.run_key(regime, 'train.model.' + key)}:", 1)
        raise MedrefError(f"{src}: {msg}") from e

    # The labelled count first (a params problem), from the split file or, before it exists, by the split's rule.
    if split_file.is_file():
        split = _read_split(split_file, regime)
        n = len(split["labelled"])
    else:
        split, n = None, len(labelled_selection(shards_dir, r.fraction, params.split.seed)["labelled"])
    if n == 0:
        raise MedrefError(f"{split_file}: no labelled images")
    if cfg.small_labelled == "error" and n < cfg.batch_size:
        raise MedrefError(
            f"{src}: {params.run_key(regime, 'fraction')}: {r.fraction} gives {n} labelled image(s), fewer than "
            f"{params.run_key(regime, 'train.batch_size')} = {cfg.batch_size}; lower the batch size, raise the fraction, "
            "or set train.small_labelled: cap")
    if split is None:
        split = _read_split(split_file, regime)  # names the missing file
    recorded = {"fraction": split.get("fraction"), "seed": split.get("seed"), "shards": split.get("shards_digest")}
    wanted = {"fraction": r.fraction, "seed": params.split.seed, "shards": manifest.get("digest")}
    for what, key in (("fraction", params.run_key(regime, "fraction")), ("seed", "split.seed"),
                      ("shards", str(shards_dir / "manifest.json"))):
        if recorded[what] != wanted[what]:
            raise MedrefError(
                f"{split_file}: written for {what} {recorded[what]!r}, but {key} is {wanted[what]!r}: the split is "
                f"stale; re-run `medref split {r.split}` (or `dvc repro split@{r.split}`)")
    if not labels_file.is_file():
        raise MedrefError(f"{labels_file}: pseudo-label file not found (run `medref pseudolabel {r.dataset}` first)")
    for out in (run_dir, out_dir):
        if out is not None:
            check_writable(out, rerun=f"`medref train {regime}`")
    return Plan(regime, r.method, cfg.model_copy(update={"model": model}), split, n_classes)


def _check_encoder(model, image_size: int = 0, manifest: str = "manifest.json") -> None:
    """Build the image encoder on torch's meta device (no memory, no weights, well under a second): an unknown timm
    name or stage indices it does not have fail here, on the submitting host, not inside the job. Its feature maps
    for one ``image_size`` image (meta tensors: shapes only) must be at least 2 x 2 at the deepest stage (BatchNorm
    needs more than one value per channel in training), and, for the U-Net-like decoders that add each upsampled
    stage to the one above it, must halve exactly from stage to stage."""
    import torch

    # imported here: timm's import cost (models.encoders imports timm; this module's top does not)
    from pipeline_src.models.encoders import ImageEncoder

    with torch.device("meta"):
        enc = ImageEncoder(model.image_encoder, None, tuple(model.out_indices))
        if image_size <= 0:
            return
        sides = [f.shape[-1] for f in enc.eval()(torch.empty(1, 1, image_size, image_size))]
    stride = max(enc.strides)
    need = max(2 * stride, -(-image_size // stride) * stride)
    deepest = f"{model.image_encoder} out_indices {list(model.out_indices)}: its deepest stage has stride {stride}"
    if min(sides) < 2:
        raise MedrefError(f"{manifest}: image_size {image_size} (preprocess.image_size) is too small for {deepest}, "
                          f"which leaves a {sides[-1]}x{sides[-1]} feature map (training's BatchNorm needs at least "
                          f"2x2); use preprocess.image_size >= {need} and re-run preprocess")
    ratios = [enc.strides[i + 1] // enc.strides[i] for i in range(len(sides) - 1)]
    if model.arch != "meddisseg" and any(sides[i] != sides[i + 1] * r for i, r in enumerate(ratios)):
        raise MedrefError(f"{manifest}: image_size {image_size} (preprocess.image_size) is not a multiple of the "
                          f"stride {stride} of {deepest}: its feature maps are {sides} pixels wide and the decoder's "
                          f"skip connections would not line up; use a multiple of {stride} (e.g. {need}) and re-run "
                          "preprocess")


def _read_split(split_file: Path, regime: str) -> dict:
    if not split_file.is_file():
        raise MedrefError(f"{split_file}: split file not found (run `medref split {regime}` first)")
    try:
        split = json.loads(split_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise MedrefError(f"{split_file}: not a valid split file ({e}); re-run `medref split {regime}`") from e
    if not isinstance(split, dict) or not isinstance(split.get("labelled"), list):
        raise MedrefError(f"{split_file}: not a split file (no 'labelled' list); re-run `medref split {regime}`")
    return split
