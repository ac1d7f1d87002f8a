"""params.yaml sections read by the data stages: ``datasets``, ``preprocess``, ``split``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticParams(Strict):
    n_train: int = Field(200, ge=1)
    n_val: int = Field(40, ge=1)
    n_test: int = Field(60, ge=1)
    image_size: int = Field(128, ge=32)
    seed: int = 0


class DatasetParams(Strict):
    kind: Literal["qata", "mosmed", "folder"] = "qata"
    # synthetic | a folder | a .zip/.tar(.gz) archive | an http(s) URL (verified, never fetched)
    source: str = "synthetic"
    sha256: str | None = None
    synthetic: SyntheticParams = SyntheticParams()


class PreprocessParams(Strict):
    image_size: int = Field(128, ge=16)
    row_group_size: int = Field(256, ge=1)
    compression: Literal["none", "lz4", "zstd", "snappy"] = "lz4"
    on_invalid: Literal["error", "drop"] = "error"


class SplitParams(Strict):
    seed: int = 0
