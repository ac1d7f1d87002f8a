"""``medref regions``: print the 6-region vector of texts and/or mask PNGs, one JSON line per input.

    medref regions "Unilateral pulmonary infection, one infected area, lower left lung."
    medref regions --texts-file reports.txt --masks data/raw/qata/train/masks/mask_covid_1.png

Output: ``{"input": <text or path>, "regions": [6 ints of 0/1] | null}`` in the order of ``REGIONS``
(left = image-left); null means the text names no position, or the mask is empty.

A mask whose X-ray sits beside it in the usual layout (``.../masks/mask_X.png`` -> ``.../images/X.png``) is
located by the lung-field rule; otherwise by fractions of the image height. The region constants come from
params.yaml when it is present (else the fitted defaults). This module never imports torch: it is a
debugging tool that must start instantly and handle thousands of inputs per call.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline_src.errors import MedrefError
from pipeline_src.labels.text_parser import parse


def _mask_params() -> dict:
    """The ``pseudolabel`` section of ./params.yaml if readable, else {} (the fitted defaults)."""
    f = Path("params.yaml")
    if not f.is_file():
        return {}
    import yaml

    from pipeline_src.labels.params import PseudolabelParams

    section = (yaml.safe_load(f.read_text()) or {}).get("pseudolabel") or {}
    return PseudolabelParams.model_validate(section).model_dump()


def _image_for(mask_path: Path) -> Path | None:
    if mask_path.parent.name.lower() in ("masks", "ground-truths") and mask_path.name.startswith("mask_"):
        for folder in ("images", "Images"):
            cand = mask_path.parent.parent / folder / mask_path.name[len("mask_") :]
            if cand.is_file():
                return cand
    return None


def _load_grey(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as e:
        raise MedrefError(f"{path}: cannot read as an image ({e})") from e


def main(texts: list[str] | None = None, texts_file: str | None = None, masks: list[str] | None = None) -> None:
    out = sys.stdout
    inputs = list(texts or [])
    if texts_file:
        f = Path(texts_file)
        if not f.is_file():
            raise MedrefError(f"{f}: --texts-file not found")
        inputs += [line for line in f.read_text().splitlines() if line.strip()]
    for t in inputs:
        r = parse(t).regions
        out.write(json.dumps({"input": t, "regions": None if r is None else list(r)}) + "\n")
    if masks:
        from pipeline_src.labels.mask_regions import mask_to_regions

        params = _mask_params()
        for m in masks:
            path = Path(m)
            if not path.is_file():
                raise MedrefError(f"{path}: mask file not found")
            mask = _load_grey(path) > 127
            img_path = _image_for(path)
            image = _load_grey(img_path) if img_path is not None else None
            if image is not None and image.shape != mask.shape:
                image = None  # a differently sized X-ray cannot be aligned: fall back to image-height bands
            r = mask_to_regions(mask, image, **params)
            out.write(json.dumps({"input": m, "regions": None if r is None else list(r)}) + "\n")
    out.flush()
