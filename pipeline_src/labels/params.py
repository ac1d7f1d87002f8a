"""params.yaml section ``pseudolabel`` (read by ``medref pseudolabel`` and ``medref regions``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline_src.utils.schema import Strict


class PseudolabelParams(Strict):
    # Fitted on the real QaTa TRAIN sample only by
    #   PYTHONPATH=. .venv/bin/python tools/fit_mask_regions.py ../shared/data/qata_sample
    # (grid search for the exact 6-region match with the parsed text); see mask_regions.py for the rule.
    # a region counts when it holds at least this share of its side's lesion pixels
    min_region_fraction: float = Field(0.05, ge=0.0, le=1.0)
    # upper/middle and middle/lower cuts as fractions of each side's lung-field height (image given)
    band_upper: float = Field(0.28, gt=0.0, lt=1.0)
    band_lower: float = Field(0.34, gt=0.0, lt=1.0)
    # the same cuts as fractions of the image height, used when no image is available
    image_band_upper: float = Field(0.30, gt=0.0, lt=1.0)
    image_band_lower: float = Field(0.34, gt=0.0, lt=1.0)
    # lung-field detector (not fitted): darkest share of the central image region, smoothing at 224^2,
    # and the lung-field pixels a row needs to count as inside the lung
    dark_percentile: float = Field(15.0, gt=0.0, lt=100.0)
    smooth_sigma: float = Field(2.0, ge=0.0)
    min_lung_row_pixels: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> PseudolabelParams:
        if not self.band_upper <= self.band_lower:
            raise ValueError("pseudolabel.band_upper must be <= band_lower")
        if not self.image_band_upper <= self.image_band_lower:
            raise ValueError("pseudolabel.image_band_upper must be <= image_band_lower")
        return self
