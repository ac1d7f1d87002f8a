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


def load_image_weights(body: nn.Module, path: Path) -> None:
    """Load a local timm/torchvision state dict into a features_only model (classifier keys dropped)."""
    if not path.is_file():
        raise MedrefError(f"train.model.image_weights: {path} is not a file")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
    own = body.state_dict()
    picked = {}
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if k in own and own[k].shape != v.shape and v.ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1:
            v = v.sum(dim=1, keepdim=True)  # RGB stem -> grey stem, as timm's adapt_input_conv does
        if k in own and own[k].shape == v.shape:
            picked[k] = v
    if not picked:
        raise MedrefError(f"train.model.image_weights: {path}: no tensor matches the encoder's parameter names")
    body.load_state_dict(picked, strict=False)
