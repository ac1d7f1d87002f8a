"""params.yaml section ``report``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # overlay figures shown per regime in reports/ (taken best, median, worst, then the next rank)
    n_overlays: int = Field(3, ge=0)
