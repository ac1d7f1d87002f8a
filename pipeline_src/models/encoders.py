"""Image encoders: a timm backbone with ``features_only=True`` (multi-scale feature maps).

Offline by design: ``pretrained=False`` always; ImageNet/user weights come from a local file
(``train.model.image_weights``), loaded into the timm model before the feature wrapper is built.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from pipeline_src.errors import MedrefError


class ImageEncoder(nn.Module):
    """timm backbone -> list of feature maps (shallow to deep) plus their channels/strides."""

    def __init__(self, name: str, weights: str | None = None, out_indices: tuple[int, ...] = (1, 2, 3, 4)):
        super().__init__()
        try:
            # in_chans=1: X-ray / CT slices are grey; timm sums RGB stem weights when loading 3-ch weights.
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
            load_image_weights(self.body, Path(weights))
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


# A weights file must fill at least this share of the model's tensors (parameters and BN running stats;
# num_batches_tracked is left out, older checkpoints lack it). Below it the file is for another architecture
# (a resnet50 state dict fills 77 of the 100 of a resnet18 by name and shape) and training would start mostly random.
MIN_MATCHED_FRACTION = 0.9


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A local ``torch.save``d state dict (``state_dict`` / ``model`` wrappers unwrapped); anything else is a
    MedrefError naming ``key`` and the file. weights_only: a weights file never runs pickled code."""
    if not path.is_file():
        raise MedrefError(f"{key}: {path} is not a file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError ...: all mean "not a weights file"
        # torch's own message advises weights_only=False, which would run arbitrary code: not repeated here
        raise MedrefError(f"{key}: {path} is not a readable PyTorch weights file ({type(e).__name__}); expected "
                          "a .pt/.pth saved with torch.save(model.state_dict())") from None
    if isinstance(sd, dict):
        sd = sd.get("state_dict", sd.get("model", sd))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MedrefError(f"{key}: {path} holds a {type(sd).__name__}, not a state dict of tensors")
    return sd


def check_matched(picked: dict, own: dict, path: Path, key: str, what: str) -> None:
    """Refuse a partial load below MIN_MATCHED_FRACTION of ``own``'s tensors; log the counts above it."""
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    n = sum(k in picked for k in counted)
    if n < MIN_MATCHED_FRACTION * len(counted):
        raise MedrefError(f"{key}: {path}: only {n} of the {what}'s {len(counted)} tensors match by name and shape "
                          f"(at least {MIN_MATCHED_FRACTION:.0%} needed): the file is for another architecture "
                          "or size; use weights saved from the same model")
    print(f"[model] {key}: {path}: loaded {n}/{len(counted)} {what} tensors", flush=True)


def load_image_weights(body: nn.Module, path: Path) -> None:
    """Load a local timm/torchvision state dict into a features_only model (classifier keys dropped)."""
    key = "train.model.image_weights"
    sd = read_state_dict(path, key)
    own = body.state_dict()
    picked = {}
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if k in own and own[k].shape != v.shape and v.ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1:
            v = v.sum(dim=1, keepdim=True)  # RGB stem -> grey stem, as timm's adapt_input_conv does
        if k in own and own[k].shape == v.shape:
            picked[k] = v
    check_matched(picked, own, path, key, "encoder")
    body.load_state_dict(picked, strict=False)
