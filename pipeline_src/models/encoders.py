"""Image encoders: a timm backbone with ``features_only=True`` (multi-scale feature maps).

Offline by design: ``pretrained=False`` always; ImageNet/user weights come from local files
(``train.model.image_weights``), loaded into the timm model before the feature wrapper is built:

- a file: ``.pth`` / ``.pt`` / ``.bin`` (``torch.save``d state dict, read with ``weights_only``) or ``.safetensors``;
- a folder holding a timm hub snapshot (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``);
- ``hf-hub:timm/<name>`` (e.g. ``hf-hub:timm/convnext_tiny.fb_in22k``): that snapshot, found in the local Hugging Face
  cache (``HF_HUB_CACHE``); nothing is downloaded, a missing snapshot is an error naming the cache folder.

RGB stems are adapted to the grey input with timm's ``adapt_input_conv`` (the RGB kernels summed, as if the grey
image were repeated to 3 channels). ``train.model.image_norm`` picks the input normalisation; ``auto`` reads the
weights' pretrained config (a hub snapshot's ``config.json``): ImageNet mean/std there -> ``imagenet``.

    .venv/bin/python -m pytest -q tests/test_encoders_hf.py
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from torch import nn

from pipeline_src.errors import MedrefError

IMAGE_KEY = "train.model.image_weights"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a hub snapshot holds, preferred first
# Grey input, one stem channel: the RGB kernels are summed, so one mean/std applies to the grey value. ImageNet's
# per-channel values differ by under 0.08 in mean and 0.005 in std; their channel mean is used.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMS = {"centre": (0.5, 0.25), "imagenet": (sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3)}


class ImageEncoder(nn.Module):
    """timm backbone -> list of feature maps (shallow to deep) plus their channels/strides."""

    def __init__(self, name: str, weights: str | None = None, out_indices: tuple[int, ...] = (1, 2, 3, 4),
                 allow_partial: bool = False):
        super().__init__()
        try:
            # in_chans=1: X-ray / CT slices are grey; 3-channel stem weights are adapted when loading.
            self.body = timm.create_model(
                name, features_only=True, pretrained=False, in_chans=1, out_indices=tuple(out_indices)
            )
        except Exception as e:  # timm raises RuntimeError/KeyError for unknown names, IndexError for bad indices
            if timm.is_model(name):  # the name is fine: the stage indices are what timm could not use
                n = len(timm.create_model(name, features_only=True, pretrained=False, in_chans=1).feature_info)
                raise MedrefError(f"train.model.out_indices: {list(out_indices)} do not exist in {name!r}, which has "
                                  f"{n} feature stages (valid indices 0..{n - 1})") from e
            raise MedrefError(f"train.model.image_encoder: cannot build timm model {name!r}: {e}") from e
        if weights:
            _check_architecture(name, weights)
            load_image_weights(self.body, image_weights_file(weights), allow_partial)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def normalise(images: torch.Tensor, norm: str) -> torch.Tensor:
    """[0,1] grey -> the encoder's input scale (``norm`` resolved: centre | imagenet)."""
    mean, std = NORMS[norm]
    return (images - mean) / std


# A weights file must fill at least this share of the model's tensors (parameters and BN running stats;
# num_batches_tracked is left out, older checkpoints lack it). Below it the file is for another architecture
# (a resnet50 state dict fills 77 of the 100 of a resnet18 by name and shape) and training would start mostly random.
MIN_MATCHED_FRACTION = 0.9


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A local state dict: ``.safetensors`` through safetensors, anything else through ``torch.load`` with
    weights_only (a weights file never runs pickled code; ``state_dict`` / ``model`` wrappers unwrapped). Anything
    else is a MedrefError naming ``key`` and the file."""
    if not path.is_file():
        raise MedrefError(f"{key}: {path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise MedrefError(f"{key}: {path} is not a readable safetensors file ({e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError ...: all mean "not a weights file"
        # torch's own message advises weights_only=False, which would run arbitrary code: not repeated here
        raise MedrefError(f"{key}: {path} is not a readable PyTorch weights file ({type(e).__name__}); expected "
                          "a .pt/.pth/.bin saved with torch.save(model.state_dict()) or a .safetensors file") from None
    if isinstance(sd, dict):
        sd = sd.get("state_dict", sd.get("model", sd))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MedrefError(f"{key}: {path} holds a {type(sd).__name__}, not a state dict of tensors")
    return sd


def check_matched(picked: dict, own: dict, path: Path, key: str, what: str, allow_partial: bool = False) -> None:
    """Refuse a partial load below MIN_MATCHED_FRACTION of ``own``'s tensors (unless ``allow_partial``); log the
    counts either way, so a user sees what a file filled."""
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    n = sum(k in picked for k in counted)
    if n < MIN_MATCHED_FRACTION * len(counted) and not allow_partial:
        raise MedrefError(f"{key}: {path}: only {n} of the {what}'s {len(counted)} tensors match by name and shape "
                          f"(at least {MIN_MATCHED_FRACTION:.0%} needed): the file is for another architecture "
                          "or size; use weights saved from the same model (or set train.model.allow_partial_weights)")
    print(f"[model] {key}: {path}: loaded {n}/{len(counted)} {what} tensors", flush=True)


def load_image_weights(body: nn.Module, path: Path, allow_partial: bool = False) -> None:
    """Load a local timm/torchvision state dict into a features_only model (classifier keys dropped)."""
    sd = read_state_dict(path, IMAGE_KEY)
    own = body.state_dict()
    picked = {}
    for k, v in sd.items():
        k = _feature_key(k.removeprefix("module."), own)
        if k in own and own[k].shape != v.shape and v.ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1:
            v = timm.models.adapt_input_conv(1, v)  # RGB stem -> grey stem (timm sums the RGB kernels)
        if k in own and own[k].shape == v.shape:
            picked[k] = v
    check_matched(picked, own, path, IMAGE_KEY, "encoder", allow_partial)
    body.load_state_dict(picked, strict=False)


def _feature_key(k: str, own: dict) -> str:
    """A full-model key as the features_only wrapper names it. Models whose feature config flattens sequential
    children (ConvNeXt, EfficientNet ...) join the first two name parts: ``stem.0.weight`` -> ``stem_0.weight``,
    ``stages.1.blocks.0.x`` -> ``stages_1.blocks.0.x`` (timm's ``_module_list``)."""
    if k in own:
        return k
    parts = k.split(".")
    return ".".join([f"{parts[0]}_{parts[1]}", *parts[2:]]) if len(parts) > 2 else k


# ---- where the weights are -----------------------------------------------------------------------------------

def hub_snapshot(repo_id: str, files: tuple[str, ...], key: str, any_of: tuple[str, ...] = ()) -> Path:
    """The local Hugging Face cache snapshot of ``repo_id`` holding every one of ``files`` and one of ``any_of``.

    Offline: only the cache (``huggingface_hub.constants.HF_HUB_CACHE``, i.e. ``HF_HUB_CACHE`` / ``HF_HOME``) is
    read. What is missing is named with the folder it was looked for in."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = Path(constants.HF_HUB_CACHE)
    where = cache / f"models--{repo_id.replace('/', '--')}"
    if "/" not in repo_id or not repo_id.split("/")[1]:
        raise MedrefError(f"{key}: {repo_id!r} is not a hub repo id (expected <owner>/<name>)")
    if not where.is_dir():
        raise MedrefError(f"{key}: {repo_id} is not in the local Hugging Face cache: {where} does not exist (nothing "
                          f"is downloaded; put the snapshot there, set HF_HUB_CACHE, or name a local folder)")

    def cached(name: str) -> Path | None:
        got = try_to_load_from_cache(repo_id, name, cache_dir=cache)
        return Path(got) if isinstance(got, str) else None

    found = {f: cached(f) for f in (*files, *any_of)}
    missing = [f for f in files if found[f] is None]
    if any_of and not any(found[f] for f in any_of):
        missing.append(" or ".join(any_of))
    if missing:
        raise MedrefError(f"{key}: the cached snapshot of {repo_id} under {where}/snapshots lacks {', '.join(missing)} "
                          "(nothing is downloaded; copy those files into the snapshot or name a local folder)")
    return next(p for p in found.values() if p is not None).parent


def image_weights_path(weights: str) -> Path:
    """The local file or hub-snapshot folder that ``train.model.image_weights`` names (checked to exist)."""
    if weights.startswith("hf-hub:"):
        return hub_snapshot(weights.removeprefix("hf-hub:"), (), IMAGE_KEY, any_of=WEIGHT_FILES)
    path = Path(weights)
    if not path.exists():
        raise MedrefError(f"{IMAGE_KEY}: file {path} not found (local weights only; nothing is downloaded)")
    return path


def image_weights_file(weights: str) -> Path:
    """The weights file itself: ``image_weights_path``, or the weights file inside a snapshot folder."""
    path = image_weights_path(weights)
    if path.is_dir():
        files = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
        if not files:
            raise MedrefError(f"{IMAGE_KEY}: {path} is a folder without {' or '.join(WEIGHT_FILES)} (a timm hub "
                              "snapshot holds config.json and one of them)")
        return files[0]
    return path


def _check_architecture(name: str, weights: str) -> None:
    """A hub snapshot names its timm architecture (config.json ``architecture``): another one than
    ``train.model.image_encoder`` is a mistake to name before any tensor is compared."""
    path = image_weights_path(weights)
    cfg_file = path / "config.json"
    if not path.is_dir() or not cfg_file.is_file():
        return
    try:
        arch = json.loads(cfg_file.read_text()).get("architecture")
    except ValueError as e:
        raise MedrefError(f"{IMAGE_KEY}: {cfg_file} is not valid JSON ({e})") from e
    if arch and arch != name:
        raise MedrefError(f"{IMAGE_KEY}: {weights} holds timm {arch!r} weights ({cfg_file}), but "
                          f"train.model.image_encoder is {name!r}; set image_encoder: {arch}")


def resolve_image_norm(norm: str, weights: str | None) -> str:
    """``auto`` -> ``imagenet`` when the weights' pretrained config (a snapshot's config.json) states ImageNet's
    mean/std, else ``centre`` (the random-init default); other values pass through."""
    if norm != "auto":
        return norm
    if not weights:
        return "centre"
    path = image_weights_path(weights)
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file is None or not cfg_file.is_file():
        return "centre"
    try:
        cfg = json.loads(cfg_file.read_text()).get("pretrained_cfg", {})
    except ValueError as e:
        raise MedrefError(f"{IMAGE_KEY}: {cfg_file} is not valid JSON ({e})") from e
    mean, std = cfg.get("mean"), cfg.get("std")
    same = mean is not None and std is not None and all(
        abs(a - b) < 1e-3 for a, b in zip((*mean, *std), (*IMAGENET_MEAN, *IMAGENET_STD), strict=False))
    return "imagenet" if same else "centre"
