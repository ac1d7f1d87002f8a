"""Cross-modal alignment score: how well the pooled image embedding finds its own report.

The seed paper's falsification test asks whether T-PatchMix degrades image-text alignment; this is the
number to log with and without it. One function, used by ``medref eval`` (``metrics/<regime>.json``
``alignment``) and by training validation (the ``val_``-prefixed keys), so both report the same thing.
Given pooled embeddings (from ``Predictor.embed`` or the model's ``img_emb``/``txt_emb``) of N images and their
N texts, nearest text by cosine:

- ``top1``: image -> text retrieval accuracy over the N texts; a retrieved text counts as correct when it is
  the image's own text *or the same string* (synthetic and real reports repeat verbatim); ``top1_chance``: the
  accuracy of a random retrieval (share of texts equal to the own text), for scale.
- ``region_agreement``: the retrieved text names the same 6-region set as the image's own text (images and
  retrieved texts with a known vector only); ``region_agreement_chance`` likewise for a random pair;
  ``region_jaccard``: the mean Jaccard overlap of the two region sets (both empty = 1).

    from pipeline_src.models.alignment import alignment_score
    img, txt = predictor.embed(images, texts); alignment_score(img.numpy(), txt.numpy(), texts, regions)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def alignment_score(img: np.ndarray, txt: np.ndarray, texts: Sequence[str], regions: np.ndarray | None) -> dict:
    """``regions``: int [N,6] (1 named, 0 not; a row with -1 is unknown) or None. Region keys are None when no
    image/retrieved pair has known regions."""
    img = np.asarray(img, dtype=np.float64)
    txt = np.asarray(txt, dtype=np.float64)
    img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
    nn = np.argmax(img @ txt.T, axis=1)
    t = np.asarray(list(texts), dtype=object)
    same_text = t[:, None] == t[None, :]
    out = {
        "n": len(t),
        "top1": float(np.mean(t[nn] == t)),
        "top1_chance": float(same_text.mean()),
        "region_agreement": None,
        "region_agreement_chance": None,
        "region_jaccard": None,
    }
    if regions is not None:
        regions = np.asarray(regions, dtype=np.int64)
        known = ~(regions < 0).any(axis=1)
        sel = known & known[nn]
        if sel.any():
            same = (regions[:, None, :] == regions[None, :, :]).all(axis=2)
            out["region_agreement"] = float(np.mean(same[np.arange(len(t)), nn][sel]))
            out["region_agreement_chance"] = float(same[np.ix_(known, known)].mean())
            r, rp = regions[sel] > 0, regions[nn][sel] > 0
            inter, union = (r & rp).sum(1), (r | rp).sum(1)
            out["region_jaccard"] = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    return out
