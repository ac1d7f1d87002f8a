"""params.yaml section ``pseudolabel``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PseudolabelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # a region counts as named by the mask when it holds at least this share of its side's lesion pixels
    min_region_fraction: float = Field(0.05, ge=0.0, le=1.0)
