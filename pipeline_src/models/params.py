"""params.yaml section ``train.model``: the network's architecture (read by the models it builds).

It lives with the models, not with training, so that inference (``pipeline_src/inference``) rebuilds an exported
network from ``model.pt``'s ``model_config`` without importing the train package.

    from pipeline_src.models.params import ModelParams; ModelParams.model_validate(blob["model_config"])
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Strict):
    # architecture, from pipeline_src.models.ARCHS; the method may force one (image_only, meddisseg)
    arch: Literal["textguided", "image_only", "meddisseg"] = "textguided"
    image_encoder: str = "resnet18"
    image_weights: str | None = None  # local timm/torchvision state dict; never downloaded
    out_indices: tuple[int, ...] = (1, 2, 3, 4)  # timm features_only stages fed to the decoder (strides 4..32)
    text_width: int = Field(128, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    context_length: int = Field(32, ge=8)
    text_weights: str | None = None  # local checkpoint file or local-dir:<open_clip folder>
    embed_dim: int = Field(128, ge=8)  # shared image/text embedding size (ITCL, alignment score)
    decoder_dim: int = Field(64, ge=8)
    decoder_heads: int = Field(4, ge=1)
    # Med-DisSeg architecture switches (arch: meddisseg only): structure-sensitive attention encoder side
    # outputs, adaptive multi-scale calibration decoder
    ssa: bool = True
    amc: bool = True
    # output channels: 1 = binary (sigmoid); C = softmax over C classes, background included. Set by the train
    # stage from the shards manifest (a volumes dataset's n_classes), saved in model.pt; not a knob to tune
    n_classes: int = Field(1, ge=1)
