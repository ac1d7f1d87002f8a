"""Training augmentations, text-aware where the text names positions.

All randomness comes from the ``torch.Generator`` passed in (seeded per step by the loop), so a
resumed run draws exactly the same augmentations as an uninterrupted one.

A batch is a plain dict: ``images`` [B,1,H,W] float in [0,1], ``masks`` [B,1,H,W] (labelled only),
``texts`` list[str], ``spans`` list[list[(start, end)]] (position words, from the pseudo-label stage),
``regions`` LongTensor[B,6] (0/1; rows with ``known`` False are unknown), ``known`` BoolTensor[B].
Region order is ``pipeline_src.labels.text_parser.REGIONS``: (left-upper, left-middle, left-lower,
right-upper, right-middle, right-lower), "left" = image-left.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from pipeline_src.labels.text_parser import flip_regions, flip_text, parse
from pipeline_src.models.text import JoinedText


def _rand(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=gen)


# ---- horizontal flip -------------------------------------------------------------------------------------------

def hflip(batch: dict, gen: torch.Generator, p: float, flip_text_too: bool = True) -> dict:
    """Flip each sample with probability p. With ``flip_text_too`` the text's left/right words and the region
    vector are swapped with the pixels; without it (an ablation) the text keeps naming the wrong side."""
    if p <= 0:
        return batch
    do = _rand(gen, len(batch["texts"])) < p
    if not bool(do.any()):
        return batch
    out = dict(batch)
    sel = do.view(-1, 1, 1, 1).to(batch["images"].device)
    out["images"] = torch.where(sel, batch["images"].flip(-1), batch["images"])
    if "masks" in batch:
        out["masks"] = torch.where(sel, batch["masks"].flip(-1), batch["masks"])
    if flip_text_too:
        texts, spans, regions = list(batch["texts"]), list(batch["spans"]), batch["regions"].clone()
        for i in torch.nonzero(do).flatten().tolist():
            texts[i] = flip_text(texts[i])
            spans[i] = parse(texts[i]).spans  # "left"/"right" differ in length: the old spans are stale
            regions[i] = torch.tensor(flip_regions(tuple(regions[i].tolist())))
        out.update(texts=texts, spans=spans, regions=regions)
    return out


# ---- PosAug ----------------------------------------------------------------------------------------------------

_GAP = re.compile(r"[\s-]*")  # position words separated only by blanks form one phrase ("lower  right")
_LUNG = re.compile(r"\s+lungs?\b", re.IGNORECASE)


def _phrases(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and _GAP.fullmatch(text[merged[-1][1]:s]):
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def posaug_text(text: str, spans: list[tuple[int, int]], replacement: str) -> str:
    """Replace every position phrase (runs of position words) by ``replacement``; other words are kept.

    A neutral replacement that already says "lung" swallows the phrase's own "lung" ("upper left lung" ->
    "a region of the lung", not "a region of the lung lung")."""
    out, last = [], 0
    for s, e in _phrases(text, spans):
        out.append(text[last:s])
        out.append(replacement)
        last = e
        if "lung" in replacement and (m := _LUNG.match(text, e)):
            last = m.end()
    out.append(text[last:])
    return "".join(out)


def posaug(batch: dict, gen: torch.Generator, cfg) -> dict:
    """PosAug on the student's view: with probability ``cfg.p`` a text loses its position words, replaced by an
    unknown-position token or a neutral phrase, so the student must also find the lesion from the image."""
    n = len(batch["texts"])
    do, coin = _rand(gen, n) < cfg.p, _rand(gen, n) < 0.5
    texts = list(batch["texts"])
    for i in range(n):
        if do[i] and batch["spans"][i]:
            neutral = cfg.mode == "neutral" or (cfg.mode == "either" and bool(coin[i]))
            texts[i] = posaug_text(texts[i], batch["spans"][i], cfg.neutral_phrase if neutral else cfg.unknown_token)
    # The region vector stays: it describes the image (the ITCL targets), not the (masked) wording.
    return {**batch, "texts": texts, "spans": [[] if t != o else s for t, o, s in zip(texts, batch["texts"],
                                                                                    batch["spans"], strict=True)]}


# ---- region geometry -------------------------------------------------------------------------------------------

def region_masks(h: int, w: int) -> torch.Tensor:
    """[6,H,W] boolean masks of the 6 regions: image halves (left = image-left) x thirds of the height."""
    m = torch.zeros(6, h, w, dtype=torch.bool)
    rows = [0, h // 3, (2 * h) // 3, h]
    for side, (c0, c1) in enumerate(((0, w // 2), (w // 2, w))):
        for lv in range(3):
            m[3 * side + lv, rows[lv]:rows[lv + 1], c0:c1] = True
    return m


def _sides(r: torch.Tensor) -> set[str]:
    return {s for s, part in (("L", r[:3]), ("R", r[3:])) if bool(part.any())}


def compatible(ra: torch.Tensor, ka: bool, rb: torch.Tensor, kb: bool) -> bool:
    """Can b's lesion be pasted into a with the text "{a} and {b}"? Only when both positions are known, b names
    something, and b adds no lung side that a's text leaves clean (an opposite-lung contradiction: a says
    "left lung", b would put lesion in the right). Negative texts (all zeros) never receive patches."""
    if not (ka and kb) or not bool(rb.any()) or not bool(ra.any()):
        return False
    return _sides(rb) <= _sides(ra)


# ---- T-PatchMix ------------------------------------------------------------------------------------------------

def tpatchmix(batch: dict, probs: torch.Tensor, conf: torch.Tensor, gen: torch.Generator, block: int,
              p: float) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text-guided cross-sample patch mixing on an unlabelled batch.

    For each sample a, a partner b = perm[a]; if their regions are ``compatible``, 16x16 blocks (each with
    probability p) that lie inside b's named regions *and* where the teacher is confident on b are copied from
    b into a. The teacher's target (``probs``) and confidence weight are mixed with the same pixel mask, the
    text becomes "{a} and {b}" and the region vector the union.

    Returns (mixed batch, target probs, weight, paste mask [B,1,H,W]).
    """
    x = batch["images"]
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=gen)
    gh, gw = -(-h // block), -(-w // block)
    blocks = (torch.rand(b, 1, gh, gw, generator=gen) < p).float()
    blocks = F.interpolate(blocks, scale_factor=block, mode="nearest")[..., :h, :w].bool().to(x.device)
    regions_px = region_masks(h, w).to(x.device)
    paste = torch.zeros(b, 1, h, w, dtype=torch.bool, device=x.device)
    texts, spans, regions, known = list(batch["texts"]), list(batch["spans"]), batch["regions"].clone(), batch["known"]
    for i in range(b):
        j = int(perm[i])
        if j == i or not compatible(batch["regions"][i], bool(known[i]), batch["regions"][j], bool(known[j])):
            continue
        inside = regions_px[batch["regions"][j].bool().to(x.device)].any(0)  # [H,W] union of b's named regions
        m = blocks[i, 0] & inside & conf[j, 0].bool()
        if not bool(m.any()):
            continue
        paste[i, 0] = m
        texts[i] = JoinedText(texts[i], batch["texts"][j])  # "{a} and {b}", shortened by a tokenizer that needs to
        spans[i] = []
        regions[i] = batch["regions"][i] | batch["regions"][j]
    pf = paste.float()
    src = perm.to(x.device)
    mixed = {**batch, "images": x * (1 - pf) + x[src] * pf, "texts": texts, "spans": spans, "regions": regions}
    target = probs * (1 - pf) + probs[src] * pf
    weight = conf * (1 - pf) + pf  # pasted pixels were chosen where the teacher is confident on b
    return mixed, target, weight, paste


# ---- generic SSL perturbations (mean_teacher, cutmix_ssl) --------------------------------------------------------

def intensity(x: torch.Tensor, gen: torch.Generator, noise_std: float, jitter: float) -> torch.Tensor:
    """Strong photometric view: per-image contrast/brightness jitter plus Gaussian noise."""
    b = x.shape[0]
    c = 1 + jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    br = jitter * 0.5 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    n = noise_std * torch.randn(x.shape, generator=gen)
    return (x * c.to(x) + br.to(x) + n.to(x)).clamp(0, 1)


def cutmix(x: torch.Tensor, gen: torch.Generator, area: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain CutMix: one box (``area`` of the image) from a permuted partner. Returns (partner index, box mask).
    The text is deliberately left alone: this is the text-incoherent baseline Semi-MedRef improves on."""
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=gen)
    bh, bw = max(1, round(h * area**0.5)), max(1, round(w * area**0.5))
    ys = torch.randint(0, h - bh + 1, (b,), generator=gen)
    xs = torch.randint(0, w - bw + 1, (b,), generator=gen)
    m = torch.zeros(b, 1, h, w, device=x.device)
    for i in range(b):
        m[i, :, ys[i]:ys[i] + bh, xs[i]:xs[i] + bw] = 1
    return perm.to(x.device), m
