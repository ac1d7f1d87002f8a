"""Synthetic chest X-rays with referring text, written in the real datasets' raw layouts.

    python -m pipeline_src.data.synthetic OUT_DIR [--kind qata|mosmed|folder] [--size qata] [--n-train N ...]

Normally called by ``medref download <ds>`` when ``datasets.<ds>.source: synthetic``.

What makes it a useful stand-in for QaTa-COV19 / MosMedData+:
- the SAME raw layout as the real releases, so the same ingestion code runs: ``kind=qata`` writes the
  LanGuideMedSeg/SGSeg layout ``{train,valid,test}/{images,masks}`` with ``mask_<name>.png`` and LViT text
  CSVs ``text/{train,test}.csv`` (``Image,Description``, keyed by the MASK name, with the original upper-case
  ``sub-S…_ses-E…`` keys while the files are lower-case, as in the real data; valid rows are the last rows of
  train.csv); ``kind=mosmed`` writes ``{Train,Val,Test} Set/{Images,Ground-truths}`` plus ``;``-separated
  ``Image;text`` CSVs keyed by the image name; ``kind=folder`` writes ``images/`` + ``masks/`` without text;
- lesions are placed in named lung regions (upper/middle/lower x left/right, "left" = image-left) and the
  text names exactly those regions; the (laterality, left phrase, right phrase) combinations and the
  "N infected areas" counts are drawn from the frequencies measured on the real LViT CSVs (tables below),
  and so is the noise (typos, double spaces, "left and right lung", missing final period, "..");
- distractor blobs that look like lesions are drawn in regions the text does NOT name; they are not in the
  mask, so a model must read the text to tell them apart.

Everything is deterministic from ``seed`` (one RNG per sample, keyed by (seed, split, index)), and nothing
here reads ../shared at run time.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# ---- statistics measured on the real LViT text (dev time; see tools/measure_corpus.py) --------------------------------
# "lat:left:right:count" — lat B(ilateral)/U(nilateral); per side "" (not named), "A" ("all"), or the named
# thirds U(pper) M(iddle) L(ower) ("UML" is spelled out, "A" is written "all"). Measured with tools/measure_corpus.py
# on qata_sample/text/{train,test}.csv (9258 rows) and mosmed_text/*.csv (2729 rows); rows seen < 3 times dropped.
_QATA_JOINT = (
    "B:A:A:2666 B:L:L:1816 U::L:680 U:L::470 B:A:L:366 B:ML:L:284 U:M::211 B:ML:ML:191 U::M:164 B:A:ML:153 "
    "B:M:M:124 B:L:ML:97 B:M:L:97 B:UL:L:97 B:L:A:89 U:ML::84 B:A:UL:74 B:ML:A:71 B:A:UML:69 B:U:L:65 U:U::64 "
    "B:A:UM:56 U:A::56 B:L:UL:51 B:L:M:47 B:UML:L:47 B:UM:UM:46 B:UL:A:44 B:UML:A:44 B:UL:UL:42 B:UML:UML:41 "
    "B:U:U:39 B:M:ML:38 B:UM:A:38 B:A:U:35 B:UML:ML:34 U::ML:33 B:UM:L:30 B:ML:M:28 U::U:25 B:ML:UML:24 B:U:A:24 "
    "U::A:23 B:M:A:22 B:A::21 U::UL:20 B:U:M:18 B:L:UML:17 U:UL::17 U:UM::17 B:L::16 B::L:15 B:A:M:14 B:U:UL:14 "
    "B:U:UM:14 B:L:U:13 U:UML::13 B:UML:UL:12 B:UL:ML:11 B:UM:M:11 B:UM:ML:11 B:M:UL:10 B:ML:UL:10 B:M:UM:9 "
    "B:UM:U:9 U:A:A:9 B::A:8 B:U:ML:8 B:U:UML:8 B:UL:U:8 B:UM:UL:8 U::UML:8 B:M:U:7 B:ML:UM:7 B:UL:UM:7 "
    "B:UL:UML:6 U::UM:5 B::M:4 B::ML:4 B::UL:4 B:M::4 B:M:UML:4 B:ML::4 B:ML:U:4 B:UL:M:4 B:UML:M:4 B:UML:U:4 "
    "B:L:UM:3"
)
_MOSMED_JOINT = (
    "B:M:M:659 U:M::571 U::M:372 U:U::276 B:U:U:220 B:U:M:181 B:M:U:95 U::L:48 B:M:L:35 U:L::35 U::U:34 B:L:M:33 "
    "B:A:U:30 B:A:A:25 B:L:L:23 B:A:M:17 B:M:A:13 B:U:A:6 B:U:L:3 U::A:3"
)
# "N infected areas" word given the number of sides named: {sides: {word: count}}
_QATA_COUNTS = {1: {"one": 1838, "two": 125, "three": 13}, 2: {"two": 6737, "three": 446, "four": 66, "five": 6, "one": 6}}
_MOSMED_COUNTS = {
    1: {"one": 950, "two": 233, "three": 99, "four": 35, "five": 10, "six": 10, "seven": 3},
    2: {"two": 303, "three": 317, "four": 260, "five": 157, "six": 104, "seven": 71, "nine": 77, "eight": 48, "one": 5},
}
# Noise rates per sentence (or per word for typos), measured the same way.
_NOISE = {
    "qata": {"typo_per_word": 0.00084, "double_space": 0.0029, "side_without_lung": 0.0157, "no_period": 0.00043,
             "double_period": 0.0, "spelled_uml": 381 / (381 + 6561)},
    "mosmed": {"typo_per_word": 0.0031, "double_space": 0.0, "side_without_lung": 0.0, "no_period": 0.00073,
               "double_period": 0.0172, "spelled_uml": 0.05},
}
# Typo operations seen in the corpus: deletion (midle, lowe), duplication (mmiddle, uppper), merge with the next
# word (oneinfected, lowerright), substitution (leff, thrr), transposition (lwoer); weights by their counts.
_TYPO_OPS = (("delete", 0.35), ("duplicate", 0.25), ("merge", 0.2), ("substitute", 0.15), ("transpose", 0.05))

THIRDS = ("upper", "middle", "lower")
# qata: the real split sizes (SGSeg/LanGuideMedSeg: train 5716, valid 1429, test 2113; 224x224)
QATA_SIZES = {"train": 5716, "val": 1429, "test": 2113}


def _parse_joint(s: str) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    combos, weights = [], []
    for item in s.split():
        lat, left, right, n = item.split(":")
        combos.append((lat, left, right))
        weights.append(int(n))
    w = np.asarray(weights, dtype=np.float64)
    return combos, w / w.sum()


_JOINT = {"qata": _parse_joint(_QATA_JOINT), "mosmed": _parse_joint(_MOSMED_JOINT)}
_COUNTS = {"qata": _QATA_COUNTS, "mosmed": _MOSMED_COUNTS}


@dataclass(frozen=True)
class Report:
    text: str
    # 6-region multi-hot in REGIONS order (left-upper, left-middle, left-lower, right-upper, right-middle, right-lower)
    regions: tuple[int, ...]


def _side_code_regions(code: str) -> tuple[int, int, int]:
    if code == "A":
        return (1, 1, 1)
    return tuple(int(c in code) for c in "UML")  # type: ignore[return-value]


def _side_phrase(code: str, side: str, rng: np.random.Generator, style: str, with_lung: bool) -> str:
    if code in ("A", "UML"):
        words = "upper middle lower" if rng.random() < _NOISE[style]["spelled_uml"] else "all"
    else:
        words = " ".join(t for t, c in zip(THIRDS, "UML", strict=True) if c in code)
    return f"{words} {side} lung" if with_lung else f"{words} {side}"


def _typo(word: str, nxt: str | None, rng: np.random.Generator) -> tuple[str, bool]:
    """One corpus-style typo; returns (new word, whether it swallowed the next word)."""
    ops, w = zip(*_TYPO_OPS, strict=True)
    op = rng.choice(ops, p=np.asarray(w) / sum(w))
    if op == "merge" and nxt is not None:
        return word + nxt, True
    if len(word) < 3:
        return word, False
    i = int(rng.integers(1, len(word) - 1))
    if op == "delete":
        return word[:i] + word[i + 1 :], False
    if op == "duplicate":
        return word[:i] + word[i] + word[i:], False
    if op == "transpose":
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :], False
    return word[:i] + "qwertyuiopasdfghjklzxcvbnm"[int(rng.integers(26))] + word[i + 1 :], False


def make_report(rng: np.random.Generator, style: str = "qata") -> Report:
    """Sample one report: position combination, count word and noise from the measured tables."""
    combos, p = _JOINT[style]
    lat, left, right = combos[int(rng.choice(len(combos), p=p))]
    noise = _NOISE[style]
    counts = _COUNTS[style][int(bool(left)) + int(bool(right))]
    cw, cn = zip(*counts.items(), strict=True)
    count = cw[int(rng.choice(len(cw), p=np.asarray(cn) / sum(cn)))]
    area = "area" if count == "one" else "areas"
    two_sides = bool(left) and bool(right)
    phrases = []
    if left:
        # "lower left and lower right lung": the first side loses its "lung" in ~1.6 % of the real rows
        phrases.append(_side_phrase(left, "left", rng, style, not (two_sides and rng.random() < noise["side_without_lung"])))
    if right:
        phrases.append(_side_phrase(right, "right", rng, style, True))
    lateral = "Bilateral" if lat == "B" else "Unilateral"
    text = f"{lateral} pulmonary infection, {count} infected {area}, {' and '.join(phrases)}."
    # word-level typos, then sentence-level noise
    words = text.split(" ")
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if rng.random() < noise["typo_per_word"]:
            nxt = words[i + 1] if i + 1 < len(words) else None
            w, merged = _typo(w, nxt, rng)
            i += merged
        out.append(w)
        i += 1
    text = " ".join(out)
    if rng.random() < noise["double_space"]:
        k = int(rng.integers(1, max(2, text.count(" "))))
        idx = [j for j, c in enumerate(text) if c == " "][min(k, text.count(" ")) - 1]
        text = text[:idx] + " " + text[idx:]
    if rng.random() < noise["no_period"]:
        text = text.rstrip(".")
    elif rng.random() < noise["double_period"]:
        text = text + "."
    regions = _side_code_regions(left) + _side_code_regions(right) if left or right else (0,) * 6
    return Report(text=text, regions=tuple(int(r) for r in regions))


# ---- images ---------------------------------------------------------------------------------------------------
def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, rng: np.random.Generator):
    """Irregular soft blob in [0,1]: the max of 3 jittered ellipses (ground-glass opacity look)."""
    f = np.zeros_like(yy)
    for _ in range(3):
        oy, ox = rng.normal(0, 0.25) * ry, rng.normal(0, 0.25) * rx
        sy, sx = ry * rng.uniform(0.6, 1.0), rx * rng.uniform(0.6, 1.0)
        d2 = ((yy - cy - oy) / sy) ** 2 + ((xx - cx - ox) / sx) ** 2
        f = np.maximum(f, 1.0 - d2)
    return np.clip(f, 0.0, 1.0)


def make_sample(rng: np.random.Generator, size: int, regions: tuple[int, ...], max_distractors: int):
    """(image uint8 [S,S], mask uint8 {0,255} [S,S]) with lesions in ``regions`` and distractors elsewhere."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size), 0.08, np.float32)
    body = ((yy - 0.55 * s) / (0.55 * s)) ** 2 + ((xx - 0.5 * s) / (0.47 * s)) ** 2 < 1.0
    img[body] = 0.55
    cy = 0.5 * s + rng.normal(0, 0.02) * s
    b = 0.31 * s * (1 + rng.normal(0, 0.05))
    lungs, bands = [], []
    for cx0 in (0.3, 0.7):  # the first lung is image-left = "left" in the corpus
        cx = (cx0 + rng.normal(0, 0.01)) * s
        a = 0.14 * s * (1 + rng.normal(0, 0.05))
        # narrower apex than base: the half-width grows from top to bottom
        width = a * (0.7 + 0.3 * np.clip((yy - (cy - b)) / (2 * b), 0, 1))
        lung = ((yy - cy) / b) ** 2 + ((xx - cx) / width) ** 2 < 1.0
        lungs.append((lung, cx, a))
        img[lung] = 0.22 + 0.1 * (yy[lung] - cy) / b
        bands.append([(cy - b + k * 2 * b / 3, cy - b + (k + 1) * 2 * b / 3) for k in range(3)])
    lung_any = lungs[0][0] | lungs[1][0]
    # ribs: faint curved stripes over the lung fields
    img += 0.05 * lung_any * (np.sin((yy + 0.02 * (xx - 0.5 * s) ** 2 / s) * (2 * np.pi / (0.09 * s))) > 0.3)
    mask = np.zeros((size, size), bool)
    opacity = np.zeros((size, size), np.float32)

    def lesion(side: int, third: int) -> np.ndarray:
        lung, cx, a = lungs[side]
        y0, y1 = bands[side][third]
        h = y1 - y0
        ry = h * rng.uniform(0.25, 0.45)
        ly = (y0 + y1) / 2 + rng.uniform(-1, 1) * (h / 2 - ry)
        rx = a * rng.uniform(0.35, 0.7)
        lx = cx + rng.uniform(-1, 1) * (a * 0.75 - rx) * 0.8
        f = _blob(yy, xx, ly, lx, ry, rx, rng) * lung
        # keep the lesion inside its named third so mask regions and text agree
        f *= (yy >= y0) & (yy < y1)
        return f

    for k, on in enumerate(regions):
        if on:
            f = lesion(k // 3, k % 3)
            mask |= f > 0.15
            opacity = np.maximum(opacity, f)
    free = [k for k, on in enumerate(regions) if not on]
    n_d = int(rng.integers(0, max_distractors + 1)) if free else 0
    for k in rng.permutation(free)[:n_d]:
        f = lesion(int(k) // 3, int(k) % 3)
        f[mask] = 0  # a distractor never overlaps a real lesion
        opacity = np.maximum(opacity, f)  # looks the same, but is not in the mask
    img += 0.3 * np.sqrt(opacity)
    img += rng.normal(0, 0.025, img.shape).astype(np.float32)
    image = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return image, (mask.astype(np.uint8) * 255)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # compress_level=1: ~3x faster than the default and still deterministic bytes
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _names(kind: str, split: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(file name, text key as the real CSVs spell it) per sample."""
    out = []
    for i in range(n):
        tag = f"{seed}{'tvs'[('train', 'val', 'test').index(split)]}{i:05d}"
        if kind == "qata":
            if i % 2 == 0:
                name = f"covid_{tag}.png"
                key = f"mask_{name}"
            else:
                # the real sub-S…/ses-E… names: files lower-case, CSV keys keep the upper case
                name = f"sub-s{tag}_ses-e{i:05d}_run-1_bp-chest_vp-ap_dx.png"
                key = "mask_" + name.replace("sub-s", "sub-S").replace("ses-e", "ses-E")
        elif kind == "mosmed":
            name = f"{('Jun', 'Morozov', 'bjorke')[i % 3]}_{tag}.png"
            key = name
        else:
            name = f"case_{tag}.png"
            key = name
        out.append((name, key))
    return out


def split_sizes(n_train: int, n_val: int, n_test: int, size: str | None) -> dict[str, int]:
    return dict(QATA_SIZES) if size == "qata" else {"train": n_train, "val": n_val, "test": n_test}


def generate(out_dir: Path, kind: str = "qata", *, n_train: int = 200, n_val: int = 40, n_test: int = 60,
             image_size: int = 128, seed: int = 0, max_distractors: int = 2, size: str | None = None,
             progress: bool = True) -> Path:
    """Write a synthetic dataset in ``kind``'s real raw layout under ``out_dir``; returns ``out_dir``."""
    from tqdm import tqdm

    if size == "qata":
        image_size = 224
    sizes = split_sizes(n_train, n_val, n_test, size)
    style = "mosmed" if kind == "mosmed" else "qata"
    out_dir = Path(out_dir)
    texts: dict[str, list[tuple[str, str]]] = {}
    for si, (split, n) in enumerate(sizes.items()):
        if kind == "qata":
            img_dir = out_dir / {"train": "train", "val": "valid", "test": "test"}[split] / "images"
            mask_dir = img_dir.parent / "masks"
        elif kind == "mosmed":
            img_dir = out_dir / f"{split.capitalize()} Set" / "Images"
            mask_dir = img_dir.parent / "Ground-truths"
        else:
            img_dir, mask_dir = out_dir / "images", out_dir / "masks"
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        rows = texts.setdefault(split, [])
        for i, (name, key) in enumerate(tqdm(_names(kind, split, n, seed), desc=f"synthetic {kind}/{split}",
                                             disable=not progress or n < 500)):
            rng = np.random.default_rng([seed, si, i])
            rep = make_report(rng, style)
            image, mask = make_sample(rng, image_size, rep.regions, max_distractors)
            (img_dir / name).write_bytes(_png(image))
            (mask_dir / (f"mask_{name}" if kind == "qata" else name)).write_bytes(_png(mask))
            rows.append((key, rep.text))
    if kind == "qata":
        # LViT: train.csv = train + valid (valid = its last rows), test.csv = test
        _write_csv(out_dir / "text" / "train.csv", texts["train"] + texts["val"], ",", ("Image", "Description"))
        _write_csv(out_dir / "text" / "test.csv", texts["test"], ",", ("Image", "Description"))
    elif kind == "mosmed":
        for split, fname in (("train", "Train_text_MosMedData+.csv"), ("val", "Val_text_MosMedData+.csv"),
                             ("test", "Test_text_MosMedData+.csv")):
            _write_csv(out_dir / fname, texts[split], ";", ("Image", "text"))
    return out_dir


def _write_csv(path: Path, rows: list[tuple[str, str]], sep: str, header: tuple[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        if sep == ",":
            # as the real LViT CSVs: every Description double-quoted (it contains commas)
            f.write(",".join(header) + "\n")
            for k, t in rows:
                f.write(f'{k},"{t}"\n')
        else:
            # MosMedData+: ';'-separated, no quoting
            f.write(";".join(header) + "\n")
            for k, t in rows:
                f.write(f"{k};{t}\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--kind", default="qata", choices=("qata", "mosmed", "folder"))
    ap.add_argument("--size", choices=("qata",), default=None, help="qata: 5716/1429/2113 pairs at 224x224")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    generate(a.out_dir, a.kind, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, image_size=a.image_size,
             seed=a.seed, size=a.size)


if __name__ == "__main__":
    main()
