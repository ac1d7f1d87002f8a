"""params.yaml sections read by the data stages: ``datasets``, ``preprocess``, ``split``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline_src.utils.schema import Strict


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


class VolumeParams(Strict):
    """``datasets.<ds>.volumes`` (kind: volumes): labelled 3-D CT, sliced by pipeline_src/data/volumes.py."""

    # synthetic generator (source: synthetic, pipeline_src/data/synthetic_volumes.py); ignored for a real source
    n_cases: int = Field(8, ge=3)
    shape: tuple[int, int, int] = (64, 64, 24)
    seed: int = 0
    # CT window in HU; the Synapse literature (TransUNet, Swin-UNet, Med-DisSeg) uses [-125, 275]
    hu_min: float = -125.0
    hu_max: float = 275.0
    # slice size after resizing; None -> preprocess.image_size
    image_size: int | None = Field(None, ge=8)
    # case-level split: fractions of the cases, each split getting at least one case when there are >= 3
    val_fraction: float = Field(0.125, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> VolumeParams:
        if self.hu_max <= self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must be greater than hu_min ({self.hu_min})")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some training cases (< 1)")
        return self


class ArchiveLimits(Strict):
    """``datasets.<ds>.archive``: refuse an archive before extracting it when its listing exceeds these
    (QaTa-COV19 is ~1 GB in ~9 k files, PNGs compress ~1x; a zip bomb is 1000x and more)."""

    max_unpacked_gib: float = Field(20.0, gt=0)     # total uncompressed size of all members
    max_members: int = Field(200_000, ge=1)
    max_ratio: float = Field(100.0, gt=1)           # total uncompressed size / archive file size


class DatasetParams(Strict):
    # qata | mosmed | folder: 2-D image/mask pairs (binary); volumes: NIfTI CT + label map (multi-class)
    kind: Literal["qata", "mosmed", "folder", "volumes"] = "qata"
    # synthetic | a folder | a .zip/.tar(.gz) archive | an http(s) URL (verified, never fetched).
    # Relative paths are resolved against the current directory (the repository root).
    source: str = "synthetic"
    # pinned sha256 of an archive / URL download; a mismatch is an error
    sha256: str | None = None
    synthetic: SyntheticParams = SyntheticParams()
    volumes: VolumeParams = VolumeParams()  # kind: volumes only
    archive: ArchiveLimits = ArchiveLimits()  # archive / URL sources only


class PreprocessParams(Strict):
    image_size: int = Field(64, ge=16)
    row_group_size: int = Field(256, ge=1)
    # rows per part-*.parquet file (a multiple of row_group_size keeps row groups full)
    shard_rows: int = Field(4096, ge=1)
    compression: Literal["none", "lz4", "zstd", "snappy"] = "lz4"
    on_invalid: Literal["error", "drop"] = "error"
    # mask pixels > threshold are lesion; a mask with more than max_ambiguous of its pixels in the
    # grey band (32..223) is not a binary mask (e.g. an image saved as mask) and is invalid
    mask_threshold: int = Field(127, ge=0, le=254)
    max_ambiguous: float = Field(0.01, ge=0.0, le=1.0)
    # deeper-than-8-bit images -> uint8 (pipeline_src/data/imageio.py): bits = the range the pixels use
    # (0..2**b-1, b = 8/10/12/14/16), minmax = the image's min..max, percentile = intensity_percentiles window
    intensity: Literal["bits", "minmax", "percentile"] = "bits"
    intensity_percentiles: tuple[float, float] = (1.0, 99.0)
    # bits rule: the dataset's bit depth (e.g. 12 for a 12-bit detector in 16-bit files); None = decided from the
    # images once per dataset (DICOM BitsStored, else the depth the dataset's maximum needs), see manifest.json
    bits_stored: int | None = Field(None, ge=8, le=32)
    # images (and masks) smaller than this on a side, or larger than max_megapixels, are invalid pairs, refused
    # from the file's header before decoding (pipeline_src/data/imageio.py Limits)
    min_image_side: int = Field(32, ge=1)
    max_megapixels: float = Field(64.0, gt=0)

    @model_validator(mode="after")
    def _check_percentiles(self) -> PreprocessParams:
        lo, hi = self.intensity_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"intensity_percentiles must be 0 <= lo < hi <= 100, got [{lo}, {hi}]")
        return self


class SplitParams(Strict):
    seed: int = 0
