"""Report text -> 6-region lesion positions (torch-free, pure Python + ``re``).

    .venv/bin/python -m pipeline_src.labels.text_parser "Bilateral pulmonary infection, two infected areas, ..."

Region order is ``REGIONS``; "left" is IMAGE-left, the way the LViT QaTa/MosMed texts use it.

How it works, and why this way rather than one big regex:

* Tokens are ``[A-Za-z]+|\\d+`` runs with their character offsets into the ORIGINAL text, so spans
  (for PosAug masking) and flips (for a horizontal-flip augmentation) can be applied to the raw string.
* Each token is mapped to a small vocabulary: exactly, else by edit distance (Damerau, one edit; two for
  long words that keep their first and last letter), else by splitting glued words into two vocabulary
  words ("oneinfected", "lowerright", "leflung"). The real corpus' typos ("midlle", "lwoer", "rught",
  "ung", "alll", "lowerl") are all reached this way; the two it cannot reach are in ``_TYPOS``.
* Phrases are runs of level/side/"all" words closed by "lung", "and", punctuation or any other word
  ("upper middle lower left lung", "lower left and lower right lung"). A phrase without a level means the
  whole side ("all left lung", "left lung"); "all" next to explicit levels defers to the levels
  ("all lower left lung"). A phrase without a side takes the side opposite to its sided partner in the
  same clause ("all lung and middle lower right lung" -> the first is left); with no partner it means
  both sides ("upper lung").
* Text with no position phrase is UNKNOWN (``regions is None``), never all-zeros, except an explicit
  negative ("No pulmonary infection, zero infected areas.", MosMed) which is a statement that no
  region is affected and parses to six zeros.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache

REGIONS = ("left-upper", "left-middle", "left-lower", "right-upper", "right-middle", "right-lower")
LEVELS = ("upper", "middle", "lower")
SIDES = ("left", "right")

# canonical word -> (category, value). Categories: level (0/1/2), side ("L"/"R"/"B"), all, lung, and,
# count (int), neg, lat ("bilateral"/"unilateral"), area, other.
_VOCAB: dict[str, tuple[str, object]] = {
    "upper": ("level", 0),
    "higher": ("level", 0),
    "middle": ("level", 1),
    "lower": ("level", 2),
    "left": ("side", "L"),
    "right": ("side", "R"),
    "all": ("all", None),
    "lung": ("lung", None),
    "lungs": ("lung", None),
    "and": ("and", None),
    "infected": ("area", None),
    "area": ("area", None),
    "areas": ("area", None),
    "infection": ("inf", None),
    "pulmonary": ("inf", None),
    "bilateral": ("lat", "bilateral"),
    "unilateral": ("lat", "unilateral"),
    "zero": ("count", 0),
    "one": ("count", 1),
    "two": ("count", 2),
    "three": ("count", 3),
    "four": ("count", 4),
    "five": ("count", 5),
    "six": ("count", 6),
    "seven": ("count", 7),
    "eight": ("count", 8),
    "nine": ("count", 9),
    "ten": ("count", 10),
}
# Matched exactly only: short or common words where fuzzy matching would invent positions.
_EXACT_ONLY: dict[str, tuple[str, object]] = {
    "top": ("level", 0),
    "mid": ("level", 1),
    "bottom": ("level", 2),
    "basal": ("level", 2),
    "both": ("side", "B"),
    "whole": ("all", None),
    "entire": ("all", None),
    "no": ("neg", None),
    "not": ("neg", None),
    "without": ("neg", None),
    # two-letter typos seen in the corpus ("al right lung", "lower ll left lung")
    "al": ("all", None),
    "ll": ("all", None),
}
# Corpus typos beyond the fuzzy rule (two edits that change the last letter).
_TYPOS = {"thrr": "three", "uooer": "upper"}

_TOKEN = re.compile(r"[A-Za-z]+|\d+")
_BOUNDARY = re.compile(r"[,.;:!?()\[\]\n]")
_POSITION_CATS = ("level", "side", "all")


@dataclass(frozen=True)
class Phrase:
    """One position phrase: ``text[start:end]`` names ``regions`` (a 6-tuple of 0/1)."""

    start: int
    end: int
    regions: tuple[int, ...]
    word_spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Parsed:
    regions: tuple[int, ...] | None  # None = the text says nothing about position (unknown)
    spans: list[tuple[int, int]]  # [start, end) of position words (levels, sides, "all") in the original text
    n_areas: int | None  # "two infected areas" -> 2; None when not stated
    phrases: tuple[Phrase, ...] = ()  # which region(s) each phrase names (for T-PatchMix)
    laterality: str | None = None  # "bilateral" / "unilateral" as written, else None
    count_span: tuple[int, int] | None = None  # span of the count word, if any
    side_spans: tuple[tuple[int, int, str], ...] = field(default=())  # (start, end, "L"/"R") for flip_text


def _osa(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment (Damerau) distance, returning ``limit + 1`` once it is exceeded."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


@lru_cache(maxsize=65536)
def _fuzzy(word: str) -> tuple[str, int] | None:
    """Closest canonical word and its edit count, or None (no match, or a tie between meanings)."""
    if word in _VOCAB or word in _EXACT_ONLY:
        return word, 0
    if word in _TYPOS:
        return _TYPOS[word], 1
    if len(word) < 3:
        return None
    best: dict[tuple, tuple[str, int]] = {}
    for cand, meaning in _VOCAB.items():
        limit = 2 if len(word) >= 5 and len(cand) >= 5 and word[0] == cand[0] and word[-1] == cand[-1] else 1
        d = _osa(word, cand, limit)
        if d <= limit and (meaning not in best or d < best[meaning][1]):
            best[meaning] = (cand, d)
    if not best:
        return None
    ranked = sorted(best.values(), key=lambda x: x[1])
    if len(ranked) > 1 and ranked[1][1] == ranked[0][1]:
        return None  # equally close to two different meanings: do not guess
    return ranked[0]


@lru_cache(maxsize=65536)
def _resolve(word: str) -> tuple[tuple[str, int, int], ...]:
    """Token (lower-case) -> ((canonical, start, end), ...) with offsets inside the token; () if unknown."""
    hit = _fuzzy(word)
    if hit is not None and hit[1] == 0:
        return ((hit[0], 0, len(word)),)
    # glued words: a split into two exact words beats a one-edit whole-word match ("oneinfected")
    splits = []
    for i in range(2, len(word) - 1):
        a, b = _fuzzy(word[:i]), _fuzzy(word[i:])
        if a is not None and b is not None and a[1] + b[1] <= 1:
            splits.append((a[1] + b[1], i, a[0], b[0]))
    splits.sort()
    if splits and splits[0][0] == 0:
        _, i, a, b = splits[0]
        return ((a, 0, i), (b, i, len(word)))
    if hit is not None:
        return ((hit[0], 0, len(word)),)
    if splits:
        _, i, a, b = splits[0]
        return ((a, 0, i), (b, i, len(word)))
    return ()


def _meaning(canon: str) -> tuple[str, object]:
    return _VOCAB.get(canon) or _EXACT_ONLY[canon]


@dataclass
class _Acc:
    levels: set = field(default_factory=set)
    sides: list = field(default_factory=list)
    all: bool = False
    lung: bool = False
    negated: bool = False
    words: list = field(default_factory=list)  # (start, end, cat, value)
    start: int = -1
    end: int = -1

    def empty(self) -> bool:
        return not (self.levels or self.sides or self.all)


def _tokens(text: str) -> list[tuple[str, object, int, int, bool]]:
    """(category, value, start, end, boundary_before) for every recognised (sub)word."""
    out = []
    prev_end = 0
    for m in _TOKEN.finditer(text):
        s = m.start()
        boundary = bool(_BOUNDARY.search(text, prev_end, s))
        prev_end = m.end()
        tok = m.group().lower()
        if tok.isdigit():
            out.append(("count", int(tok[:6]), s, m.end(), boundary))
            continue
        parts = _resolve(tok[:40])  # longer "words" are noise; cap the work
        if not parts:
            if len(tok) > 1:  # a stray letter ("middle lower l right lung") is a typo, not a phrase break
                out.append(("other", None, s, m.end(), boundary))
            continue
        for k, (canon, a, b) in enumerate(parts):
            cat, val = _meaning(canon)
            out.append((cat, val, s + a, s + b, boundary and k == 0))
    return out


def parse(text: str) -> Parsed:
    """Parse one report. Never raises for any ``str``; see the module docstring for the rules."""
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, got {type(text).__name__}")
    toks = _tokens(text)

    clauses: list[list[_Acc]] = []
    n_areas = None
    count_span = None
    laterality = None
    negative = False
    cur = _Acc()
    clause: list[_Acc] = []
    clause_neg = False

    def close() -> None:
        nonlocal cur
        if not cur.empty():
            cur.negated = clause_neg
            clause.append(cur)
        cur = _Acc()

    for i, (cat, val, s, e, boundary) in enumerate(toks):
        if boundary:
            close()
            clauses.append(clause)
            clause = []
            clause_neg = False
        if cat in _POSITION_CATS:
            if cur.sides and cat != "side":
                close()  # "upper left lower right lung": a level after a side starts a new phrase
            if cur.start < 0:
                cur.start = s
            cur.end = e
            cur.words.append((s, e, cat, val))
            if cat == "level":
                cur.levels.add(val)
            elif cat == "side":
                cur.sides.append(val)
            else:
                cur.all = True
            continue
        if cat == "lung" and not cur.empty():
            cur.lung = True
            cur.end = e
        close()
        if cat == "count":
            nxt = toks[i + 1][0] if i + 1 < len(toks) else None
            if nxt == "area" and n_areas is None:
                # the number right before "infected"/"area(s)"; "two one infected area" -> 1 (the nearest)
                n_areas, count_span = int(val), (s, e)
        elif cat == "neg":
            clause_neg = True
            nxt = [t[0] for t in toks[i + 1 : i + 3]]
            if "inf" in nxt or "area" in nxt:
                negative = True  # "No pulmonary infection"
        elif cat == "lat" and laterality is None:
            laterality = str(val)
    close()
    clauses.append(clause)
    if n_areas == 0:
        negative = True

    phrases: list[Phrase] = []
    side_spans: list[tuple[int, int, str]] = []
    for cl in clauses:
        sided = {p.sides[-1] for p in cl if p.sides}
        for p in cl:
            for s, e, cat, val in p.words:
                if cat == "side" and val in ("L", "R"):
                    side_spans.append((s, e, val))
            valid = bool(p.sides) or ((p.levels or p.all) and (p.lung or bool(sided)))
            if not valid or p.negated:
                continue
            side = p.sides[-1] if p.sides else None
            if side is None:
                side = {"L": "R", "R": "L"}[next(iter(sided))] if len(sided) == 1 and "B" not in sided else "B"
            levels = p.levels or {0, 1, 2}
            vec = [0] * 6
            for lv in levels:
                if side in ("L", "B"):
                    vec[lv] = 1
                if side in ("R", "B"):
                    vec[3 + lv] = 1
            spans = tuple((s, e) for s, e, _, _ in p.words)
            phrases.append(Phrase(p.start, p.end, tuple(vec), spans))

    if phrases:
        regions: tuple[int, ...] | None = tuple(max(p.regions[k] for p in phrases) for k in range(6))
    elif negative:
        regions = (0,) * 6
    else:
        regions = None
    spans = sorted({sp for p in phrases for sp in p.word_spans})
    return Parsed(regions, spans, n_areas, tuple(phrases), laterality, count_span, tuple(side_spans))


def _swap_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word.capitalize()
    return word


def flip_text(text: str) -> str:
    """Swap left<->right words (keeping their case) for a horizontally flipped image.

    Every recognised side word is swapped, typos and glued forms included ("leff" -> "right",
    "lowerright" -> "lowerleft"), so that ``parse(flip_text(t)).regions == flip_regions(parse(t).regions)``.
    """
    out = []
    last = 0
    for s, e, side in parse(text).side_spans:
        out.append(text[last:s])
        out.append(_swap_case("right" if side == "L" else "left", text[s:e]))
        last = e
    out.append(text[last:])
    return "".join(out)


def flip_regions(regions: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Swap the left and right triples (None stays None)."""
    if regions is None:
        return None
    r = tuple(regions)
    if len(r) != 6:
        raise ValueError(f"a region vector has 6 entries, got {len(r)}")
    return r[3:] + r[:3]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        p = parse(arg)
        print(p.regions, p.n_areas, [arg[s:e] for s, e in p.spans])
