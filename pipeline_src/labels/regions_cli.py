"""``medref regions``: print the 6-region vector of texts and/or mask PNGs, one JSON line per input.

    medref regions "Unilateral pulmonary infection, one infected area, lower left lung."
    medref regions --texts-file reports.txt --masks data/raw/qata/train/masks/mask_covid_1.png
    cut -f2 reports.tsv | medref regions --texts-file -

Output: ``{"input": <text or path>, "regions": [6 ints of 0/1] | null}`` in the order of ``REGIONS``
(left = image-left); null means the text names no position, or the mask is empty.

A mask whose X-ray sits beside it in the usual layout (``.../masks/mask_X.png`` -> ``.../images/X.png``) is
located by the lung-field rule; otherwise by fractions of the image height. The region constants come from
the ``pseudolabel`` section of ``--params`` (default params.yaml; without that file, the fitted defaults), which
the CLI reads and hands down. This module never imports torch: it is a
debugging tool that must start instantly and handle thousands of inputs per call.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline_src.data.imageio import IntensityRule, read_grey, read_mask
from pipeline_src.errors import MedrefError
from pipeline_src.labels.mask_regions import mask_to_regions
from pipeline_src.labels.text_parser import parse


def _read_texts(texts_file: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file, or of standard input for ``-``."""
    name = "<standard input>" if texts_file == "-" else texts_file
    if texts_file == "-":
        data = sys.stdin.buffer.read()
    else:
        f = Path(texts_file)
        if not f.is_file():
            raise MedrefError(f"{f}: --texts-file not found")
        data = f.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MedrefError(f"{name}: --texts-file is not UTF-8 text (byte {e.start}); give one report per line") from e
    if "\0" in text:
        raise MedrefError(f"{name}: --texts-file holds NUL bytes (a binary file?); give one report per line")
    return [line for line in text.splitlines() if line.strip()]


def _image_for(mask_path: Path) -> Path | None:
    if mask_path.parent.name.lower() in ("masks", "ground-truths") and mask_path.name.startswith("mask_"):
        for folder in ("images", "Images"):
            cand = mask_path.parent.parent / folder / mask_path.name[len("mask_") :]
            if cand.is_file():
                return cand
    return None


def _load_grey(path: Path, mask: bool = False):
    """A mask ({0, 255} scale, label masks included) or an image (uint8 grey) through the one pixel decoder
    (pipeline_src/data/imageio.py), as preprocess reads them."""
    try:
        data = path.read_bytes()
        return read_mask(data, name=str(path)) if mask else read_grey(data, "image", IntensityRule(), name=str(path))
    except (OSError, ValueError) as e:
        raise MedrefError(f"{path}: cannot read as an {'mask' if mask else 'image'} ({e})") from e


def main(
    texts: list[str] | None = None,
    texts_file: str | None = None,
    masks: list[str] | None = None,
    region_params: Callable[[], dict] | None = None,
) -> None:
    """``region_params``: returns the validated ``pseudolabel`` section as keyword arguments of ``mask_to_regions``
    ({} for the fitted defaults); called only when masks are given (the CLI reads --params or ./params.yaml)."""
    if not texts and not texts_file and not masks:
        raise MedrefError("nothing to label: give report texts, --texts-file FILE (- for standard input) "
                          "or --masks PNG ...")
    out = sys.stdout
    inputs = list(texts or [])
    if texts_file:
        inputs += _read_texts(texts_file)
    for t in inputs:
        r = parse(t).regions
        out.write(json.dumps({"input": t, "regions": None if r is None else list(r)}, allow_nan=False) + "\n")
    if masks:
        params = region_params() if region_params is not None else {}
        for m in masks:
            path = Path(m)
            if not path.is_file():
                raise MedrefError(f"{path}: mask file not found")
            mask = _load_grey(path, mask=True) > 127
            img_path = _image_for(path)
            image = _load_grey(img_path) if img_path is not None else None
            if image is not None and image.shape != mask.shape:
                image = None  # a differently sized X-ray cannot be aligned: fall back to image-height bands
            r = mask_to_regions(mask, image, **params)
            out.write(json.dumps({"input": m, "regions": None if r is None else list(r)}, allow_nan=False) + "\n")
    out.flush()
