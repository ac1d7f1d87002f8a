"""Cross-modal alignment score: how well the pooled image embedding finds its own report.

The seed paper's falsification test asks whether T-PatchMix degrades image-text alignment; this is the
number to log with and without it. Given L2-normalised embeddings from ``Predictor.embed`` on the evaluation
split (N images, their N texts):

- ``i2t_top1``: image -> text retrieval accuracy over the N texts; a retrieved text counts as correct when it
  is the image's own text *or the same string* (synthetic and real reports repeat verbatim).
- ``i2t_region_exact`` / ``i2t_region_jaccard``: region prediction from the image embedding, read off the
  retrieved text's 6-region vector and compared with the image's own (only images with a known vector).
- ``chance_top1``: the top-1 accuracy of a random retrieval (share of texts equal to the own text), for scale.

    from pipeline_src.models.alignment import alignment_score
    img, txt = predictor.embed(images, texts); alignment_score(img, txt, texts, regions, known)
"""

from __future__ import annotations

import torch


@torch.no_grad()
def alignment_score(img: torch.Tensor, txt: torch.Tensor | None, texts: list[str], regions: torch.Tensor,
                    known: torch.Tensor) -> dict[str, float]:
    if txt is None or len(texts) == 0:
        return {}
    sim = img.float() @ txt.float().T
    top = sim.argmax(1)
    same = torch.tensor([[a == b for b in texts] for a in texts])
    i2t = same[torch.arange(len(texts)), top].float().mean()
    out = {"i2t_top1": float(i2t), "chance_top1": float(same.float().mean(1).mean())}
    k = known & known[top]
    if bool(k.any()):
        r, rp = regions[k].bool(), regions[top][k].bool()
        inter, union = (r & rp).sum(1).float(), (r | rp).sum(1).float()
        out["i2t_region_exact"] = float((r == rp).all(1).float().mean())
        out["i2t_region_jaccard"] = float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())
    return out
