"""params.yaml sections ``eval`` and ``report``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)


class ReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_overlays: int = Field(3, ge=0)
