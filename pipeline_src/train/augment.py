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

from pipeline_src.labels.text_parser import flip_regions, flip_text, parse


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
MAX_PHRASES = 8  # coins drawn per text for PosAug (a fixed count keeps the generator's stream independent of texts)


def _phrases(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and _GAP.fullmatch(text[merged[-1][1]:s]):
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def posaug_text(text: str, spans: list[tuple[int, int]], replacement: str | list[str | None]) -> str:
    """Replace position phrases (runs of position words) by ``replacement``; other words are kept.

    ``replacement``: one string for every phrase, or one entry per phrase (None keeps that phrase). A neutral
    replacement that already says "lung" swallows the phrase's own "lung" ("upper left lung" -> "a region of the
    lung", not "a region of the lung lung")."""
    phrases = _phrases(text, spans)
    reps = replacement if isinstance(replacement, list) else [replacement] * len(phrases)
    out, last = [], 0
    for (s, e), rep in zip(phrases, reps, strict=False):
        if rep is None:
            continue
        out.append(text[last:s])
        out.append(rep)
        last = e
        if "lung" in rep and (m := _LUNG.match(text, e)):
            last = m.end()
    out.append(text[last:])
    return "".join(out)


def posaug(batch: dict, gen: torch.Generator, cfg) -> dict:
    """PosAug on the student's view: each position phrase, with probability ``cfg.p``, is replaced by an
    unknown-position token or a neutral phrase (a coin per phrase for ``either``), so the student must also find
    the lesion from the image. As ``utils/pos_aug.py::pos_token_dropout`` (one draw per phrase, mode ``mix``)."""
    n = len(batch["texts"])
    do, coin = _rand(gen, n * MAX_PHRASES) < cfg.p, _rand(gen, n * MAX_PHRASES) < 0.5
    do, coin = do.view(n, MAX_PHRASES), coin.view(n, MAX_PHRASES)
    texts = list(batch["texts"])
    for i in range(n):
        phrases = _phrases(texts[i], batch["spans"][i]) if batch["spans"][i] else []
        if not phrases:
            continue
        reps: list[str | None] = []
        for k in range(len(phrases)):
            if k >= MAX_PHRASES or not bool(do[i, k]):
                reps.append(None)
                continue
            neutral = cfg.mode == "neutral" or (cfg.mode == "either" and bool(coin[i, k]))
            reps.append(cfg.neutral_phrase if neutral else cfg.unknown_token)
        if any(r is not None for r in reps):
            texts[i] = posaug_text(texts[i], batch["spans"][i], reps)
    # The region vector stays: it describes the image (the ITCL targets), not the (masked) wording.
    spans = [s if t == o else parse(t).spans for t, o, s in zip(texts, batch["texts"], batch["spans"], strict=True)]
    return {**batch, "texts": texts, "spans": spans}


# ---- region geometry -------------------------------------------------------------------------------------------

def region_masks(h: int, w: int) -> torch.Tensor:
    """[6,H,W] boolean masks of the 6 regions: image halves (left = image-left) x thirds of the height."""
    m = torch.zeros(6, h, w, dtype=torch.bool)
    rows = [0, h // 3, (2 * h) // 3, h]
    for side, (c0, c1) in enumerate(((0, w // 2), (w // 2, w))):
        for lv in range(3):
            m[3 * side + lv, rows[lv]:rows[lv + 1], c0:c1] = True
    return m


# ---- T-PatchMix ------------------------------------------------------------------------------------------------
# The rules of the official code (wrapper_semi.py::_build_xpatchmix_batch, mode "pos"; utils/pos_aug.py), each
# tested on a hand-built batch in tests/test_tpatchmix.py:
#   1. a's position phrase is the first "<levels> <left|right> lung" of a's student report (after PosAug); a text
#      without one, or a partner whose phrase names the other lung, gets no patch;
#   2. with probability p per sample, ONE block x block square (clipped to the region) at a uniform place inside
#      a's own phrase region (its side's half x the span of its levels' thirds);
#   3. the block is kept only if the teacher's mean lesion probability on the partner inside it is >= the
#      confidence threshold;
#   4. target = 1[(1 - M) p_a + M p_b >= 0.5];
#   5. a kept block rewrites a's phrase to "pa and pb" (pa, pb canonical), keeping the rest of a's report; equal
#      phrases leave a's report as it was.

_LEVEL_WORDS = ("upper", "middle", "lower")
POS_PHRASE = re.compile(r"\b((?:upper|middle|lower)(?:\s+(?:upper|middle|lower)){0,2})\s+(left|right)\s+lung\b",
                        re.IGNORECASE)


def pos_phrase(text: str) -> str | None:
    """The first position phrase of ``text``, canonical ("Lower  LEFT lung" -> "lower left lung"), or None."""
    m = POS_PHRASE.search(text or "")
    if not m:
        return None
    levels = set(m.group(1).lower().split())
    return " ".join([v for v in _LEVEL_WORDS if v in levels] + [m.group(2).lower(), "lung"])


def phrase_region(phrase: str, h: int, w: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a canonical phrase: its side's half (left = image-left) x the rows from its highest to
    its lowest named third (``pos_phrase_to_region`` with margin 0)."""
    toks = phrase.split()
    x0, x1 = (0, w // 2) if "left" in toks else (w // 2, w)
    rows = {"upper": (0, h // 3), "middle": (h // 3, (2 * h) // 3), "lower": ((2 * h) // 3, h)}
    segs = [rows[v] for v in _LEVEL_WORDS if v in toks]
    return min(s[0] for s in segs), max(s[1] for s in segs), x0, x1


def mix_text(a: str, b: str) -> str:
    """a's report with its first phrase rewritten to "pa and pb" (``span_mix_dual``)."""
    pa, pb = pos_phrase(a), pos_phrase(b)
    if pa and pb:
        return a if pa == pb else POS_PHRASE.sub(f"{pa} and {pb}", a, count=1)
    return a if pa or not pb else b


def tpatchmix(batch: dict, probs: torch.Tensor, gen: torch.Generator, block: int, p: float, threshold: float,
              paste_rejected: bool = True) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text-guided cross-sample patch mixing of an unlabelled batch (the rules above).

    ``batch``: the student's view (its texts after PosAug); ``probs``: the teacher's probabilities on the weak
    view [B,1,H,W]. Returns (mixed batch, mixed probabilities (1 - M) p_a + M p_b, kept-block mask M [B,1,H,W],
    candidate-block mask before the gate). The caller thresholds the mixed probabilities (rule 4)."""
    x = batch["images"]
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=gen)
    draw = _rand(gen, b) < p
    where = _rand(gen, 2 * b).view(b, 2)
    cand = torch.zeros(b, 1, h, w, device=x.device)
    for i in range(b):
        j = int(perm[i])
        pa, pb = pos_phrase(batch["texts"][i]), pos_phrase(batch["texts"][j])
        if not bool(draw[i]) or pa is None:
            continue
        if pb is not None and ("left" in pa.split()) != ("left" in pb.split()):
            continue  # the partner's lesion is in the other lung
        y0, y1, x0, x1 = phrase_region(pa, h, w)
        bh, bw = min(block, y1 - y0), min(block, x1 - x0)
        top = y0 + int(float(where[i, 0]) * (y1 - y0 - bh + 1))
        left = x0 + int(float(where[i, 1]) * (x1 - x0 - bw + 1))
        cand[i, 0, top:top + bh, left:left + bw] = 1.0
    src = perm.to(x.device)
    area = cand.sum(dim=(2, 3), keepdim=True)
    lesion = (probs[src] * cand).sum(dim=(2, 3), keepdim=True) / (area + 1e-6)
    kept = cand * (lesion >= threshold).float()
    paste = cand if paste_rejected else kept
    texts, spans, regions = list(batch["texts"]), list(batch["spans"]), batch["regions"].clone()
    for i in torch.nonzero(kept.flatten(1).sum(1) > 0).flatten().tolist():
        j = int(perm[i])
        mixed_text = mix_text(batch["texts"][i], batch["texts"][j])
        if mixed_text != texts[i]:
            texts[i], spans[i] = mixed_text, parse(mixed_text).spans
        regions[i] = batch["regions"][i] | batch["regions"][j]
    mixed = {**batch, "images": x * (1 - paste) + x[src] * paste, "texts": texts, "spans": spans,
             "regions": regions}
    return mixed, probs * (1 - kept) + probs[src] * kept, kept, cand


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
