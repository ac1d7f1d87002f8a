"""Dev-time tool: refit the mask -> region constants of params.yaml's ``pseudolabel`` section.

    PYTHONPATH=. .venv/bin/python tools/fit_mask_regions.py ../shared/data/qata_sample

Grid search on the real QaTa TRAIN sample only (exact 6-region match with the parsed LViT text); the valid split
is reported, never fitted. Not part of the runtime package: no stage runs it; it explains where the constants in
params.yaml came from, and prints new ones to paste there.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from pipeline_src.labels.mask_regions import agreement, fit, load_qata_sample, mask_to_regions
from pipeline_src.labels.text_parser import parse


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: tools/fit_mask_regions.py <qata_sample folder>")
    _, im_tr, m_tr, t_tr = load_qata_sample(argv[0], "train")
    _, im_va, m_va, t_va = load_qata_sample(argv[0], "valid")
    r_tr, r_va = [parse(t).regions for t in t_tr], [parse(t).regions for t in t_va]
    # the lung-field detector's percentile is chosen on train too (best train exact match), never on valid
    fits = {dp: fit(m_tr, r_tr, im_tr, dark_percentile=dp) for dp in (10.0, 15.0, 20.0)}
    dark = max(fits, key=lambda dp: (fits[dp]["train"]["exact"], -dp))
    with_image = fits[dark]
    without = fit(m_tr, r_tr, None)
    params = {"dark_percentile": dark,
              **{k: with_image[k] for k in ("band_upper", "band_lower", "min_region_fraction")},
              **{k: without[k] for k in ("image_band_upper", "image_band_lower")}}
    # the image-less fit may pick its own threshold; report it, but one threshold is shipped (the lung-field one)
    out = {"params": params, "train_lung_field": with_image["train"], "train_image_bands": without["train"],
           "image_bands_threshold": without["min_region_fraction"]}
    for name, ims in (("valid_lung_field", im_va), ("valid_image_bands", None)):
        pred = [mask_to_regions(m, None if ims is None else ims[i], **params) for i, m in enumerate(m_va)]
        ok = [i for i, r in enumerate(r_va) if r is not None and pred[i] is not None]
        out[name] = agreement(np.array([pred[i] for i in ok]), np.array([r_va[i] for i in ok])).as_dict()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
