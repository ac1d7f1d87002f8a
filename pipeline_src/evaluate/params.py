"""params.yaml section ``eval``."""

from __future__ import annotations

from pydantic import Field

from pipeline_src.inference.params import PostprocessParams


class EvalParams(PostprocessParams):
    """Inference's decision keys (threshold, batch_size, min_component_size: PostprocessParams) and eval's own."""

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
