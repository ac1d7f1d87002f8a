"""The decision keys inference applies to a probability map: eval's, so that predict gives eval's masks.

They stay flat in params.yaml's ``eval`` section (``EvalParams`` extends this model): a nested
``eval.postprocess`` block would break every params.yaml and metrics file written so far, and change no result.
"""

from __future__ import annotations

from pydantic import Field

from pipeline_src.utils.schema import Strict


class PostprocessParams(Strict):
    threshold: float = Field(0.5, gt=0, lt=1)  # probability -> mask
    batch_size: int = Field(32, ge=1)
    # post-processing: drop 8-connected predicted components smaller than this many pixels (0 = off)
    min_component_size: int = Field(0, ge=0)
