"""params.yaml sections ``eval`` and ``report``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.5, gt=0, lt=1)  # probability -> mask
    batch_size: int = Field(32, ge=1)
    # post-processing: drop 8-connected predicted components smaller than this many pixels (0 = off)
    min_component_size: int = Field(0, ge=0)
    # normalised surface Dice: boundary points within this many pixels count as matched
    nsd_tolerance: float = Field(2.0, gt=0)
    # image->text retrieval score when the predictor has .embed (text-guided models)
    alignment: bool = True
    # feature dispersion (Med-DisSeg's probe) of this encoder stage's pooled features over the whole eval split;
    # -2 is the stage train.dispersive.stage regularises by default (stride 16); null = not measured
    dispersion_stage: int | None = -2
    # overlays saved per kind (best / median / worst) in eval/<regime>/overlays/
    overlays_per_kind: int = Field(1, ge=0)
    # text-guided models: Dice again with each image's text replaced by another image's (a derangement seeded by
    # text_reliance_seed) and with left/right swapped in the text, beside the true-text Dice
    text_reliance: bool = True
    text_reliance_seed: int = 0


class ReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # overlay figures shown per regime in reports/ (taken best, median, worst, then the next rank)
    n_overlays: int = Field(3, ge=0)
