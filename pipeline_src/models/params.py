"""params.yaml ``train.model``: the architecture of a segmentation model (``pipeline_src.models.ARCHS``).

It lives with the models phase because a saved model folder carries it (``model.pt``'s ``model_config``): loading a
model for inference needs this schema and nothing of training. ``train.params.TrainParams`` nests it as ``model``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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

    @model_validator(mode="after")
    def _consistent(self) -> ModelParams:
        # Checked here, not deep inside torch (an AssertionError / IndexError there named nothing the user set).
        if not self.out_indices:
            raise ValueError("out_indices: at least one encoder stage must feed the decoder, e.g. [1, 2, 3, 4]")
        if any(i < 0 for i in self.out_indices) or list(self.out_indices) != sorted(set(self.out_indices)):
            raise ValueError(f"out_indices: {list(self.out_indices)} must be distinct stage indices >= 0, shallow "
                             "to deep (increasing)")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_heads: {self.decoder_heads} does not divide decoder_dim {self.decoder_dim} "
                             "(cross-attention splits the channels evenly over the heads)")
        own_tower = not (self.text_weights or "").startswith("local-dir:")  # a local-dir tower brings its own sizes
        if own_tower and self.text_width % self.text_heads:
            raise ValueError(f"text_heads: {self.text_heads} does not divide text_width {self.text_width}")
        return self
