"""params.yaml sections read by the data stages: ``datasets``, ``preprocess``, ``split``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticParams(Strict):
    # size: qata -> the real QaTa-COV19 split sizes at 224x224 (5716/1429/2113), for benchmarks;
    # the n_* and image_size keys are then ignored.
    size: Literal["qata"] | None = None
    n_train: int = Field(200, ge=1)
    n_val: int = Field(40, ge=1)
    n_test: int = Field(60, ge=0)
    image_size: int = Field(128, ge=32)
    # lesion-like blobs in regions the text does not name (and the mask does not contain)
    max_distractors: int = Field(2, ge=0)
    seed: int = 0


class DatasetParams(Strict):
    kind: Literal["qata", "mosmed", "folder"] = "qata"
    # synthetic | a folder | a .zip/.tar(.gz) archive | an http(s) URL (verified, never fetched).
    # Relative paths are resolved against the current directory (the repository root).
    source: str = "synthetic"
    # pinned sha256 of an archive / URL download; a mismatch is an error
    sha256: str | None = None
    synthetic: SyntheticParams = SyntheticParams()


class PreprocessParams(Strict):
    image_size: int = Field(128, ge=16)
    row_group_size: int = Field(256, ge=1)
    # rows per part-*.parquet file (a multiple of row_group_size keeps row groups full)
    shard_rows: int = Field(4096, ge=1)
    compression: Literal["none", "lz4", "zstd", "snappy"] = "lz4"
    on_invalid: Literal["error", "drop"] = "error"
    # mask pixels > threshold are lesion; a mask with more than max_ambiguous of its pixels in the
    # grey band (32..223) is not a binary mask (e.g. an image saved as mask) and is invalid
    mask_threshold: int = Field(127, ge=0, le=254)
    max_ambiguous: float = Field(0.01, ge=0.0, le=1.0)


class SplitParams(Strict):
    seed: int = 0
