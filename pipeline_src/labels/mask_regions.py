"""Lesion mask (+ the X-ray) -> the 6 lung regions of ``text_parser.REGIONS``.

    medref pseudolabel qata        # uses mask_to_regions on every shard row
    PYTHONPATH=. .venv/bin/python tools/fit_mask_regions.py ../shared/data/qata_sample   # refit the constants

The rule, and why:

* Side = image half (column < W/2 is "left", the way the LViT texts use it). Side agreement with the text is
  already 97-99 % with this, so there is nothing to gain from a lung-field split.
* Upper/middle/lower are NOT fixed bands of the image: a fixed-thirds rule matches the text's exact 6-region
  vector on only ~20-30 % of the real sample, because the lungs sit at different heights and sizes from one
  film to the next. Instead, for each side we estimate the lung field's own vertical extent: lungs are the
  darkest large structures inside the body on a chest X-ray, so the lung field is the union of
  (a) the pixels darker than the ``dark_percentile`` of the central image region (smoothed, and only
  components that do not touch the image border: the black background/collimation outside the body does)
  and (b) the lesion itself (opacities are bright, so an infected lung is not dark where it is infected).
  The side's extent [top, bottom) is the first/last row with >= ``min_lung_row_pixels`` lung-field pixels,
  and it is cut at ``top + band_upper*h`` and ``top + band_lower*h``.
* A region counts when it holds >= ``min_region_fraction`` of that side's lesion pixels (so a lesion that only
  grazes a band is not "named").

The three numbers (band_upper, band_lower, min_region_fraction) are fitted by ``fit`` on the TRAIN split only
(grid search for the exact 6-region match with the parsed LViT text) and read from params.yaml
(``pseudolabel``). Without an image (``image=None``) the bands are fractions of the image height instead
(``image_band_upper/lower``, fitted the same way): worse, but still a usable answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline_src.data.imageio import IntensityRule, read_grey, read_mask
from pipeline_src.labels.params import PseudolabelParams

# The constants live once, in params.yaml's ``pseudolabel`` section; PseudolabelParams' defaults equal it
# (tests/test_params_defaults.py), so a caller that passes no params gets the same values the pipeline uses.
DEFAULTS = PseudolabelParams().model_dump()


def lung_field(image: np.ndarray, mask: np.ndarray | None = None, *, dark_percentile: float,
               smooth_sigma: float) -> np.ndarray:
    """bool [H,W]: dark, enclosed structures of the X-ray (the aerated lung) united with the lesion."""
    from scipy import ndimage as ndi  # scipy is torch-free; imported lazily to keep `medref regions` start-up fast

    h, w = image.shape
    sigma = smooth_sigma * h / 224.0  # the constants were fitted at 224^2
    im = ndi.gaussian_filter(image.astype(np.float32), sigma)
    t = np.percentile(im[h // 8 : h * 7 // 8, w // 8 : w * 7 // 8], dark_percentile)
    lab, _ = ndi.label(im < t)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    field = ~np.isin(lab, border)  # label 0 (not dark) is on the border in any real film
    if mask is not None:
        field |= mask.astype(bool)
    return field


def _profiles(mask: np.ndarray, image: np.ndarray | None, **kw) -> tuple[np.ndarray, np.ndarray | None]:
    """Row profiles [2, H] of lesion pixels per side, and of lung-field pixels per side (None without image)."""
    m = mask.astype(bool)
    w = m.shape[1]
    les = np.stack([m[:, : w // 2].sum(1), m[:, w // 2 :].sum(1)])
    if image is None:
        return les, None
    f = lung_field(image, m, dark_percentile=kw["dark_percentile"], smooth_sigma=kw["smooth_sigma"])
    return les, np.stack([f[:, : w // 2].sum(1), f[:, w // 2 :].sum(1)])


def _extent(rows: np.ndarray, min_pixels: float) -> tuple[int, int]:
    idx = np.nonzero(rows >= min_pixels)[0]
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, len(rows))


def _regions(les: np.ndarray, lung: np.ndarray | None, a: float, b: float, thr: float, min_px: float) -> list[int]:
    h = les.shape[1]
    out = []
    for s in range(2):
        top, bot = _extent(lung[s], min_px) if lung is not None else (0, h)
        cut1 = int(np.clip(round(top + a * (bot - top)), 0, h))
        cut2 = int(np.clip(round(top + b * (bot - top)), cut1, h))
        tot = les[s].sum()
        bands = (les[s, :cut1].sum(), les[s, cut1:cut2].sum(), les[s, cut2:].sum())
        out += [int(tot > 0 and band >= thr * tot) for band in bands]
    return out


def mask_to_regions(mask: np.ndarray, image: np.ndarray | None = None, **params) -> tuple[int, ...] | None:
    """6-tuple of 0/1 (``REGIONS`` order), or None for an empty mask (nothing to locate).

    ``params`` override ``DEFAULTS`` (pass ``PseudolabelParams.model_dump()``).
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"mask_to_regions: unknown parameter(s) {sorted(unknown)}")
    p = {**DEFAULTS, **params}
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H,W], got shape {mask.shape}")
    if image is not None and np.asarray(image).shape != mask.shape:
        raise ValueError(f"image shape {np.asarray(image).shape} != mask shape {mask.shape}")
    if not mask.any():
        return None
    les, lung = _profiles(mask, None if image is None else np.asarray(image), **p)
    if lung is None:
        a, b = p["image_band_upper"], p["image_band_lower"]
    else:
        a, b = p["band_upper"], p["band_lower"]
    min_px = p["min_lung_row_pixels"] * mask.shape[1] / 224.0
    return tuple(_regions(les, lung, a, b, p["min_region_fraction"], min_px))


# ---- agreement and fitting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    n: int
    side: float  # both sides' "any region" flags equal
    exact: float  # all 6 equal
    precision: tuple[float, ...]  # per region: mask says yes and text says yes / mask says yes
    recall: tuple[float, ...]  # per region: ... / text says yes

    def as_dict(self) -> dict:
        r = lambda x: round(float(x), 4)  # noqa: E731
        return {"n": self.n, "side": r(self.side), "exact": r(self.exact),
                "precision": [r(x) for x in self.precision], "recall": [r(x) for x in self.recall]}


def agreement(pred: np.ndarray, ref: np.ndarray) -> Agreement:
    """Agreement of ``pred`` [N,6] (mask) with ``ref`` [N,6] (text); rows must already be the known pairs."""
    pred = np.asarray(pred, dtype=np.int64).reshape(-1, 6)
    ref = np.asarray(ref, dtype=np.int64).reshape(-1, 6)
    n = len(pred)
    if n == 0:
        nan = float("nan")
        return Agreement(0, nan, nan, (nan,) * 6, (nan,) * 6)
    side_p = np.stack([pred[:, :3].max(1), pred[:, 3:].max(1)], 1)
    side_r = np.stack([ref[:, :3].max(1), ref[:, 3:].max(1)], 1)
    tp = (pred & ref).sum(0)
    prec = tuple(float(t / p) if p else float("nan") for t, p in zip(tp, pred.sum(0), strict=True))
    rec = tuple(float(t / r) if r else float("nan") for t, r in zip(tp, ref.sum(0), strict=True))
    return Agreement(n, float((side_p == side_r).all(1).mean()), float((pred == ref).all(1).mean()), prec, rec)


def fit(masks: np.ndarray, text_regions: list, images: np.ndarray | None = None, **fixed) -> dict:
    """Grid-search the band cuts and the region threshold for the exact match with the text (TRAIN data only!).

    ``masks`` [N,H,W], ``text_regions`` N entries (6-tuples or None; None rows are skipped), ``images`` [N,H,W]
    or None (then the image-height bands are fitted). Returns the best params and its train agreement.
    """
    p = {**DEFAULTS, **fixed}
    keep = [i for i, r in enumerate(text_regions) if r is not None and np.asarray(masks[i]).any()]
    ref = np.array([text_regions[i] for i in keep], dtype=np.int64).reshape(-1, 6)
    profs = [_profiles(masks[i], None if images is None else images[i], **p) for i in keep]
    min_px = p["min_lung_row_pixels"] * masks.shape[2] / 224.0
    h = masks.shape[1]
    # vectorised form of _regions over all samples: cumulative lesion rows per side, lung extents per side
    cum = np.zeros((len(profs), 2, h + 1))
    ext = np.zeros((len(profs), 2, 2), dtype=np.int64)
    for k, (les, lung) in enumerate(profs):
        cum[k, :, 1:] = np.cumsum(les, 1)
        for s in range(2):
            ext[k, s] = _extent(lung[s], min_px) if lung is not None else (0, h)
    rows = np.arange(len(profs))
    best = None
    for thr in (0.02, 0.05, 0.1, 0.15, 0.2):
        for a in np.arange(0.10, 0.50, 0.02):
            for b in np.arange(a + 0.04, 0.80, 0.02):
                pred = np.zeros((len(profs), 6), dtype=np.int64)
                for s in range(2):
                    top, bot = ext[:, s, 0], ext[:, s, 1]
                    # np.round is half-to-even like round() in _regions, so fit and apply agree exactly
                    cut1 = np.clip(np.round(top + a * (bot - top)), 0, h).astype(np.int64)
                    cut2 = np.maximum(np.clip(np.round(top + b * (bot - top)), 0, h).astype(np.int64), cut1)
                    c = cum[:, s]
                    tot = c[:, -1]
                    bands = (c[rows, cut1], c[rows, cut2] - c[rows, cut1], tot - c[rows, cut2])
                    for j in range(3):
                        pred[:, 3 * s + j] = (tot > 0) & (bands[j] >= thr * tot)
                exact = float((pred == ref).all(1).mean())
                if best is None or exact > best[0] + 1e-12:  # first best in grid order: deterministic
                    best = (exact, round(float(a), 2), round(float(b), 2), thr, pred)
    exact, a, b, thr, pred = best
    keys = ("band_upper", "band_lower") if images is not None else ("image_band_upper", "image_band_lower")
    return {keys[0]: a, keys[1]: b, "min_region_fraction": thr, "train": agreement(pred, ref).as_dict()}


def load_qata_sample(root, split: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(names, images, masks, texts) of ``<root>/{split}/{images,masks}`` + ``<root>/text/train.csv`` (real sample)."""
    import csv
    from pathlib import Path

    root = Path(root)
    with open(root / "text" / "train.csv", newline="") as f:
        texts = {row["Image"].lower(): row["Description"] for row in csv.DictReader(f)}
    names = sorted(p.name for p in (root / split / "images").glob("*.png"))
    images = np.stack([read_grey((root / split / "images" / n).read_bytes(), "image", IntensityRule()) for n in names])
    masks = np.stack([read_mask((root / split / "masks" / f"mask_{n}").read_bytes()) > 127 for n in names])
    return names, images, masks.astype(np.uint8), [texts[f"mask_{n}".lower()] for n in names]
