"""params.yaml section ``report``."""

from __future__ import annotations

from pydantic import Field

from pipeline_src.utils.schema import Strict


class ReportParams(Strict):
    # overlay figures shown per regime in reports/ (taken best, median, worst, then the next rank)
    n_overlays: int = Field(3, ge=0)
