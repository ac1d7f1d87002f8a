"""Readers for the raw layouts users have, all yielding the same ``Pair`` records.

Used by ``medref download`` (pipeline_src/data/download.py) to normalise any accepted layout to one.

qata:
  - LanGuideMedSeg/SGSeg: ``{train,valid[,test]}/{images,masks}/`` (``X.png`` <-> ``mask_X.png``) +
    ``text/train.csv`` (train + valid rows) and ``text/test.csv``; ``Image,Description``.
  - Kaggle QaTa-COV19-v2: ``{Train Set,Test Set}/{Images,Ground-truths}`` + LViT ``Train_text.csv`` /
    ``Test_text.csv`` (or the original ``*.xlsx``).
  Text keys are the MASK file name (the real one: a JPEG image may have a PNG mask) and match the (lower-case)
  files only case-insensitively. When there is
  no valid folder, LViT's val carve-out applies: the last ``n - int(0.8 n)`` rows of the train text table
  (1429 of 7145) are val.
mosmed (MosMedData+):
  - ``{Train,Val,Test} Set/{Images,Ground-truths}`` or ``frames/`` + ``masks/``, with ``;``-separated
    ``Image;text`` CSVs (``*Train*``, ``*Val*``, ``*Test*``) keyed by the image name; with ``frames/masks`` the
    split of a pair is the CSV its key is in.
folder (Kvasir-SEG, ISIC 2018, BUSI ...):
  - ``images/`` + ``masks/`` (mask named like the image, ``mask_<name>``, ``<stem>_mask``, ``<stem>_segmentation``),
    optionally under ``{train,val,test}/``; optional text CSV (first column image or mask name, second the
    text). Without split folders the split is a hash of the name (10 % val, 20 % test), stable when files
    are added.

Every reader: text keys and file names are compared in Unicode NFC (an NFD file name from macOS matches its NFC
key); a key with two different texts is an error naming both lines (or both files); a text table that is not
UTF-8 is an error naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pipeline_src.errors import MedrefError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The longest report text a table cell may hold. Python's csv module stops at 131 072 characters by default; a
# report is a few sentences, so a longer cell is almost always an unclosed quote that swallowed the lines after it.
MAX_TEXT_CHARS = 1_048_576
# Control characters (Unicode Cc: NUL, ESC, DEL, C1 ...) other than tab / line breaks, which are whitespace
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> tuple[str, int]:
    """``text`` without its control characters (NUL etc., see ``_CONTROL``) and how many were removed: a NUL in a
    report is an export artefact, and tokenizers treat it differently (CLIP's BPE drops it, WordPiece keeps it)."""
    out, n = _CONTROL.subn("", text)
    return out, n


def csv_reader(f, path: Path, **kw):
    """``csv.reader`` over ``f`` that accepts cells up to ``MAX_TEXT_CHARS`` and turns a longer one into one
    MedrefError naming ``path`` and the line (it yields the rows)."""
    csv.field_size_limit(MAX_TEXT_CHARS)  # the module's one global limit: the same value everywhere in medref
    reader = csv.reader(f, **kw)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise MedrefError(f"{path}:{reader.line_num}: {e}: a text cell longer than {MAX_TEXT_CHARS:,} "
                              "characters (medref's limit for a report text); a report is a few sentences, so check "
                              "the quoting on that line (an unclosed quote swallows the lines after it)") from None
        yield reader.line_num, row
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "train set": "train", "val": "val", "valid": "val",
                  "validation": "val", "val set": "val", "test": "test", "testing": "test", "test set": "test"}


@dataclass(frozen=True)
class Pair:
    split: str
    id: str
    image: Path
    mask: Path | None          # None: no mask found (preprocess reports it)
    text: str | None           # None: no text row found (preprocess reports it unless kind=folder)


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def _child(root: Path, *names: str) -> Path | None:
    """First sub-directory of ``root`` whose name matches one of ``names`` case-insensitively."""
    if not root.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for n in names:
        if n.lower() in by_lower:
            return by_lower[n.lower()]
    return None


def nfc(name: str) -> str:
    """Unicode NFC: macOS and some zip tools store file names decomposed (NFD), CSVs usually hold NFC;
    both spellings of one name must meet in the same key."""
    return unicodedata.normalize("NFC", name)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise MedrefError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          "save the text table as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`") from None


def read_text_table(path: Path) -> list[tuple[str, str]]:
    """(key, text) rows of a text table: ``,`` or ``;`` CSV (quoted or not), or xlsx. First two columns.

    Keys are NFC-normalised. A key given twice (case-insensitively) with two different texts is an error naming
    both lines; an exact repeat is kept once."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        import pandas as pd

        df = pd.read_excel(path, dtype=str, keep_default_na=False)
        if df.shape[1] < 2:
            raise MedrefError(f"{path}: expected at least 2 columns (image name, text), found {df.shape[1]}")
        numbered = [(i, [str(k), str(t)]) for i, (k, t) in enumerate(zip(df.iloc[:, 0], df.iloc[:, 1], strict=True),
                                                                     start=2)]
    else:
        f = io.StringIO(_decode(path), newline="")
        header = f.readline()
        if ";" in header:
            # MosMedData+: ';'-separated and NOT quoted, the text holds commas: split on the first ';' only
            numbered = [(i, line.rstrip("\r\n").split(";", 1)) for i, line in enumerate(f, start=2) if line.strip()]
        else:
            numbered = []
            start = 2
            for line_num, r in csv_reader(f, path):
                numbered.append((start, r))
                # line_num counts the physical lines read so far (a quoted text may span several), header excluded
                start = line_num + 2
    out = []
    first: dict[str, tuple[int, str]] = {}
    for i, r in numbered:
        if len(r) < 2:
            raise MedrefError(f"{path}:{i}: expected 'image,text', got {r!r}")
        key, text = nfc(r[0].strip()), r[1]
        if len(text) > MAX_TEXT_CHARS:
            raise MedrefError(f"{path}:{i}: a text of {len(text):,} characters, longer than {MAX_TEXT_CHARS:,} "
                              "(medref's limit for a report text); check that line")
        seen = first.get(key.lower())
        if seen is not None:
            if seen[1] != text:
                raise MedrefError(f"{path}: key {key!r} has two different texts, on lines {seen[0]} and {i}; "
                                  "keep one of them")
            continue
        first[key.lower()] = (i, text)
        out.append((key, text))
    return out


def _lookup(table: dict[str, str], *keys: str) -> str | None:
    for k in keys:
        if nfc(k).lower() in table:
            return table[nfc(k).lower()]
    return None


def _find_mask(mask_dir: Path | None, image: Path, index: dict[str, Path] | None) -> Path | None:
    if mask_dir is None or index is None:
        return None
    stem = nfc(image.stem)
    name = nfc(image.name)
    for cand in (name, f"mask_{name}", f"{stem}_mask", f"{stem}_segmentation", f"mask_{stem}", stem):
        for key in (cand.lower(), Path(cand).stem.lower()):
            if key in index:
                return index[key]
    return None


def _mask_index(mask_dir: Path | None) -> dict[str, Path] | None:
    if mask_dir is None:
        return None
    idx: dict[str, Path] = {}
    for p in _images(mask_dir):
        idx.setdefault(nfc(p.name).lower(), p)
        idx.setdefault(nfc(p.stem).lower(), p)
    return idx


def _find_files(root: Path, *patterns: str) -> list[Path]:
    hits: list[Path] = []
    for pat in patterns:
        hits += [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".csv", ".xlsx")
                 and pat in p.name.lower()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(set(hits))


def read_qata(root: Path) -> list[Pair]:
    tables = {s: _find_files(root, *pats) for s, pats in (("train", ("train",)), ("test", ("test",)))}
    # prefer CSV over xlsx when both exist (the CSVs are the LanGuideMedSeg conversion of the same xlsx)
    texts: dict[str, list[tuple[str, str]]] = {}
    used: dict[str, Path] = {}
    for s, files in tables.items():
        if files:
            files.sort(key=lambda p: (p.suffix.lower() != ".csv", len(p.parts), p.as_posix()))
            texts[s], used[s] = read_text_table(files[0]), files[0]
    split_dirs: dict[str, tuple[Path, Path | None]] = {}
    for split, names in (("train", ("train", "Train Set", "Train Folder")), ("val", ("valid", "val", "Val Set", "Val Folder")),
                         ("test", ("test", "Test Set", "Test Folder"))):
        d = _child(root, *names)
        if d is None:
            continue
        img = _child(d, "images", "img") or d
        msk = _child(d, "masks", "Ground-truths", "labelcol", "ground_truths")
        if img == d and msk is None:
            continue
        split_dirs[split] = (img, msk)
    if "train" not in split_dirs and "test" not in split_dirs:
        raise MedrefError(f"{root}: no QaTa layout found: expected {{train,valid,test}}/{{images,masks}}/ "
                          "(LanGuideMedSeg/SGSeg) or {Train Set,Test Set}/{Images,Ground-truths}/ (Kaggle QaTa-COV19-v2)")
    train_rows = texts.get("train", [])
    # LViT val carve-out (only when there is no valid folder): the last n - int(0.8 n) rows of train text
    cut = int(0.8 * len(train_rows))
    val_keys = {k.lower() for k, _ in train_rows[cut:]} if "val" not in split_dirs else set()
    table = {k.lower(): t for k, t in train_rows}
    for k, t in texts.get("test", []):
        if table.get(k.lower(), t) != t:
            raise MedrefError(f"key {k!r} has two different texts, in {used['train']} and in {used['test']}; "
                              "keep one of them")
        table[k.lower()] = t
    pairs = []
    for split, (img_dir, msk_dir) in split_dirs.items():
        index = _mask_index(msk_dir)
        for im in _images(img_dir):
            mask = _find_mask(msk_dir, im, index)
            # keys are the MASK file's name: look up the real one first (a JPEG image may have a PNG mask)
            keys = ([mask.name] if mask is not None else []) + [f"mask_{im.name}", im.name]
            s = split
            if split == "train" and any(nfc(k).lower() in val_keys for k in keys):
                s = "val"
            pairs.append(Pair(s, nfc(im.stem), im, mask, _lookup(table, *keys)))
    return pairs


def read_mosmed(root: Path) -> list[Pair]:
    texts = {s: _find_files(root, s) for s in ("train", "val", "test")}
    tables: dict[str, dict[str, str]] = {}
    for s, files in texts.items():
        files = [f for f in files if not (s == "val" and "valid" not in f.name.lower() and "val" not in f.name.lower())]
        if files:
            files.sort(key=lambda p: (p.suffix.lower() != ".csv", p.as_posix()))
            tables[s] = {k.lower(): t for k, t in read_text_table(files[0])}
    merged = {k: t for tb in tables.values() for k, t in tb.items()}
    pairs: list[Pair] = []
    found = False
    for split, names in (("train", ("Train Set", "train", "Train Folder")), ("val", ("Val Set", "val", "valid", "Val Folder")),
                         ("test", ("Test Set", "test", "Test Folder"))):
        d = _child(root, *names)
        if d is None:
            continue
        img = _child(d, "Images", "images", "img", "frames")
        msk = _child(d, "Ground-truths", "masks", "labelcol")
        if img is None:
            continue
        found = True
        index = _mask_index(msk)
        for im in _images(img):
            mask = _find_mask(msk, im, index)
            keys = [im.name, f"mask_{im.name}"] + ([mask.name] if mask is not None else [])
            pairs.append(Pair(split, nfc(im.stem), im, mask, _lookup(tables.get(split, merged), *keys)))
    frames = _child(root, "frames", "images")
    if not found and frames is not None:
        msk = _child(root, "masks", "Ground-truths")
        index = _mask_index(msk)
        for im in _images(frames):
            split = next((s for s in SPLITS if nfc(im.name).lower() in tables.get(s, {})), "train")
            pairs.append(Pair(split, nfc(im.stem), im, _find_mask(msk, im, index), _lookup(merged, im.name)))
        found = True
    if not found:
        raise MedrefError(f"{root}: no MosMedData+ layout found: expected {{Train,Val,Test}} Set/{{Images,Ground-truths}}/ "
                          "or frames/ + masks/, with ';'-separated Image;text CSVs")
    return pairs


def _hash_split(name: str) -> str:
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100
    return "test" if h < 20 else "val" if h < 30 else "train"


def read_folder(root: Path) -> list[Pair]:
    csvs = sorted(p for p in root.glob("*.csv")) + sorted(root.glob("*.xlsx"))
    table = {k.lower(): t for k, t in read_text_table(csvs[0])} if csvs else None
    roots: list[tuple[str | None, Path]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name.lower() in _SPLIT_ALIASES and _child(d, "images", "masks"):
            roots.append((_SPLIT_ALIASES[d.name.lower()], d))
    if not roots:
        roots = [(None, root)]
    pairs = []
    for split, base in roots:
        img_dir = _child(base, "images", "image", "imgs", "img")
        msk_dir = _child(base, "masks", "mask", "ground-truths", "ground_truth", "labels")
        if img_dir is None:
            raise MedrefError(f"{base}: kind=folder expects images/ and masks/ sub-folders")
        index = _mask_index(msk_dir)
        for im in _images(img_dir):
            rel = nfc(im.relative_to(img_dir).with_suffix("").as_posix())
            mask = _find_mask(msk_dir, im, index)
            keys = [im.name, f"mask_{im.name}", im.stem] + ([mask.name] if mask is not None else [])
            text = _lookup(table, *keys) if table is not None else ""
            pairs.append(Pair(split or _hash_split(rel), rel.replace("/", "__"), im, mask, text))
    return pairs


READERS = {"qata": read_qata, "mosmed": read_mosmed, "folder": read_folder}


def read_layout(kind: str, root: Path) -> list[Pair]:
    """All pairs under ``root`` for a dataset ``kind``; ids unique (an error names duplicates)."""
    pairs = READERS[kind](root)
    if not pairs:
        raise MedrefError(f"{root}: no images found for kind={kind}")
    seen: dict[str, Path] = {}
    dups = []
    for p in pairs:
        if p.id.lower() in seen:
            dups.append(f"{seen[p.id.lower()]} and {p.image}")
        seen[p.id.lower()] = p.image
    if dups:
        raise MedrefError(f"{root}: {len(dups)} duplicate sample ids (case-insensitive): " + "; ".join(dups[:10]))
    return sorted(pairs, key=lambda p: (SPLITS.index(p.split), p.id))
