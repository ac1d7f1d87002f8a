"""params.yaml section ``train`` (model, optimiser, method components)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Strict):
    image_encoder: str = "resnet18"
    image_weights: str | None = None
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = Field(32, ge=8)
    text_weights: str | None = None
    decoder_dim: int = 64


class TrainParams(Strict):
    model: ModelParams = ModelParams()
    epochs: int = Field(4, ge=1)
    max_steps: int | None = None
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    checkpoint_every: int = Field(50, ge=1)
