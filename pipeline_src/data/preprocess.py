"""preprocess@<dataset>: validate raw pairs and write deterministic Parquet shards + manifest.json.

    medref preprocess qata          # data/raw/qata/ -> data/shards/qata/{train,val,test}/part-*.parquet

Reads the normalised raw layout written by ``medref download`` (pairs.csv). Params: ``preprocess.*``.

Layout choice (measured, see bench/bench_data.py): images as raw uint8 ``fixed_size_binary(H*W)`` and masks
bit-packed ``fixed_size_binary(ceil(H*W/8))``, lz4. A whole row group then decodes to one contiguous buffer
that numpy views without copying (~30x faster than decoding PNGs; PNG-in-Parquet would keep the decode cost,
zstd is ~2.5x slower to read than lz4 for ~10 % smaller files).

Determinism: rows sorted by id within a split, fixed row-group and shard sizes, no timestamps or
host-dependent metadata, pinned pyarrow -> the same inputs give the same bytes.
Streaming: pairs are decoded ``row_group_size`` at a time and written row group by row group, so memory does
not grow with the dataset. Output is built in a temp dir and renamed into place (atomic).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline_src.data.download import read_pairs
from pipeline_src.data.imageio import (
    IntensityRule,
    Limits,
    decide_bits,
    decode,
    image_bits,
    read_grey,
    read_mask,
    surely_8bit,
)
from pipeline_src.data.layouts import SPLITS, clean_text
from pipeline_src.data.shards import SplitWriter, schema
from pipeline_src.data.volumes import write_volume_shards
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import atomic_dir, output_errors, sha256_file, sha256_json, write_json

# Mask pixels in this grey band are neither clearly background nor lesion.
AMBIGUOUS_LO, AMBIGUOUS_HI = 32, 223
STRING_COLUMNS = ["id", "split", "text", "source_image", "source_mask", "image_sha256", "mask_sha256"]


def _log(msg: str) -> None:
    print(f"[preprocess] {msg}", flush=True)


DEFAULT_RULE = IntensityRule()


def intensity_rule(pp, bits: int | None = None) -> IntensityRule:
    """The grey rule of ``preprocess.intensity`` (pipeline_src/data/imageio.py), for deeper-than-8-bit images;
    ``bits``: the dataset's bit depth (``dataset_bits``)."""
    return IntensityRule(pp.intensity, tuple(pp.intensity_percentiles), bits if pp.intensity == "bits" else None)


def limits(pp) -> Limits:
    return Limits(pp.min_image_side, pp.max_megapixels)


def dataset_bits(raw_dir: Path, rows: list[dict], pp, pool) -> tuple[int | None, str]:
    """The dataset's bit depth for the bits rule, decided once before any image is mapped (``imageio.decide_bits``):
    ``preprocess.bits_stored``, else the largest depth over the images. 8-bit files are recognised from their
    header and not decoded here. A file that cannot be read or decoded counts for nothing here: ``load_pair``
    reports it, with its reason, as an invalid pair."""
    if pp.intensity != "bits":
        return None, f"none: preprocess.intensity {pp.intensity} scales each image by its own values"
    if pp.bits_stored is not None:
        return decide_bits([], pp.bits_stored)
    lim = limits(pp)

    def depth(r: dict) -> int | None:
        try:
            data = (raw_dir / r["image"]).read_bytes()
            return None if surely_8bit(data) else image_bits(decode(data, "image", limits=lim))
        except (OSError, ValueError):
            return None  # reported by load_pair

    return decide_bits(pool.map(depth, rows))


def load_pair(raw_dir: Path, row: dict, size: int, threshold: int, max_ambiguous: float,
              rule: IntensityRule = DEFAULT_RULE, lim: Limits | None = None):
    """Decode, validate and resize one pair -> (image bytes, packed mask bytes, image sha, mask sha) or a reason.

    Images of any depth go through ``imageio.read_grey`` (deep images by the dataset's depth, per ``rule``); masks
    through ``imageio.read_mask`` ({0, 1} masks read as {0, 255}); both within the size limits ``lim``."""
    try:
        if not row["mask"]:
            return "no mask file found for this image"
        ib = (raw_dir / row["image"]).read_bytes()
        mb = (raw_dir / row["mask"]).read_bytes()
        img = read_grey(ib, "image", rule, name=row.get("source_image") or row["image"], limits=lim)
        m = read_mask(mb, "mask", name=row.get("source_mask") or row["mask"], limits=lim)
        if img.shape != m.shape:
            return f"size mismatch: image {img.shape[1]}x{img.shape[0]} but mask {m.shape[1]}x{m.shape[0]}"
        amb = float(((m >= AMBIGUOUS_LO) & (m <= AMBIGUOUS_HI)).mean())
        if amb > max_ambiguous:
            return (f"mask not binary: {amb:.1%} of pixels are grey ({AMBIGUOUS_LO}..{AMBIGUOUS_HI}); "
                    f"expected {{0,255}} or {{0,1}} (allowed {max_ambiguous:.1%})")
        fg = m > threshold
        if img.shape != (size, size):
            # bilinear for the image, nearest for the mask (keeps it binary)
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
            fg = np.asarray(Image.fromarray(fg.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127
        return (img.tobytes(), np.packbits(fg.ravel()).tobytes(),
                hashlib.sha256(ib).hexdigest(), hashlib.sha256(mb).hexdigest())
    except ValueError as e:
        return str(e)
    except OSError as e:
        return f"unreadable file: {e}"


def empty_masks(tmp: Path, splits_out: dict[str, dict]) -> dict[str, dict]:
    """Per split, the written rows whose mask is all background, when the split's other masks are not
    (a lesion dataset with a few blank masks usually means an export problem): {split: {count, ids}}."""
    out = {}
    for split, info in splits_out.items():
        ids, n_rows = [], 0
        for sh in info["shards"]:
            t = pq.read_table(tmp / sh["path"], columns=["id", "mask"])
            for id_, mk in zip(t["id"].to_pylist(), t["mask"].to_pylist(), strict=True):
                if not any(mk):
                    ids.append(id_)
            n_rows += t.num_rows
        if ids and len(ids) < n_rows:
            out[split] = {"count": len(ids), "ids": ids}
    return out


def _chunk_table(recs: list[tuple[dict, tuple]], sch: pa.Schema, size: int) -> pa.Table:
    n = len(recs)
    img_buf = pa.py_buffer(b"".join(r[1][0] for r in recs))
    msk_buf = pa.py_buffer(b"".join(r[1][1] for r in recs))
    cols = {
        "id": pa.array([r[0]["id"] for r in recs], pa.string()),
        "split": pa.array([r[0]["split"] for r in recs], pa.string()),
        "image": pa.FixedSizeBinaryArray.from_buffers(sch.field("image").type, n, [None, img_buf]),
        "mask": pa.FixedSizeBinaryArray.from_buffers(sch.field("mask").type, n, [None, msk_buf]),
        "height": pa.array(np.full(n, size, np.int32)),
        "width": pa.array(np.full(n, size, np.int32)),
        "text": pa.array([r[0]["text"] for r in recs], pa.string()),
        "source_image": pa.array([r[0]["source_image"] for r in recs], pa.string()),
        "source_mask": pa.array([r[0]["source_mask"] for r in recs], pa.string()),
        "image_sha256": pa.array([r[1][2] for r in recs], pa.string()),
        "mask_sha256": pa.array([r[1][3] for r in recs], pa.string()),
    }
    return pa.Table.from_pydict(cols, schema=sch)


def _output_errors(out_dir: Path, dataset: str, est_bytes: int):
    return output_errors(out_dir, rerun=f"`medref preprocess {dataset}` (or `dvc repro preprocess@{dataset}`)",
                         need_bytes=est_bytes)


def run(params, dataset: str, raw_dir: Path, out_dir: Path) -> Path:
    """Validate ``raw_dir``'s pairs (or volumes) and write ``out_dir``: shards per split plus manifest.json."""
    pp = params.preprocess
    kind = params.dataset(dataset).kind
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if kind == "volumes":
        return _run_volumes(params, dataset, raw_dir, out_dir)
    rows = read_pairs(raw_dir)
    with _output_errors(out_dir, dataset, len(rows) * (pp.image_size * pp.image_size * 9 // 8)), \
            atomic_dir(out_dir) as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        bits, bits_from = dataset_bits(raw_dir, rows, pp, pool)
        written = _write_splits(tmp, raw_dir, rows, pp, intensity_rule(pp, bits), text_required=kind != "folder",
                                pool=pool, desc=f"preprocess {dataset}")
        _refuse_invalid(raw_dir, written.problems, pp)
        manifest = _write_manifest(tmp, raw_dir, dataset, kind, pp, written, bits, bits_from)
    _log_summary(dataset, out_dir, written, manifest, bits, bits_from)
    return out_dir


def _run_volumes(params, dataset: str, raw_dir: Path, out_dir: Path) -> Path:
    """NIfTI CT + label maps -> class-index slice shards (pipeline_src/data/volumes.py)."""
    m = write_volume_shards(raw_dir, out_dir, params.dataset(dataset).volumes, dataset=dataset,
                            preprocess=params.preprocess)
    _log(f"{dataset}: {len(m['cases'])} cases, {m['n_classes']} classes, "
         f"{ {s: v['rows'] for s, v in m['splits'].items()} } slices -> {out_dir}")
    return out_dir


@dataclass
class _Written:
    """What the pass over the splits wrote and found, in row order."""

    splits: dict[str, dict] = field(default_factory=dict)  # split -> {rows, shards}
    problems: list[dict] = field(default_factory=list)  # the invalid pairs, each with its reason
    control: dict[str, int] = field(default_factory=dict)  # split/id -> control characters removed from its text


def _write_splits(tmp: Path, raw_dir: Path, rows: list[dict], pp, rule: IntensityRule, *, text_required: bool,
                  pool: ThreadPoolExecutor, desc: str) -> _Written:
    """Every split in turn, its rows sorted by id, under one progress bar over the dataset."""
    from tqdm import tqdm

    size, lim = pp.image_size, limits(pp)

    def load(r: dict):
        return load_pair(raw_dir, r, size, pp.mask_threshold, pp.max_ambiguous, rule, lim)

    written = _Written()
    bar = tqdm(total=len(rows), desc=desc, disable=len(rows) < 2000)
    for split in SPLITS:
        srows = sorted((r for r in rows if r["split"] == split), key=lambda r: r["id"])
        _write_split(tmp, split, srows, pp, load, text_required, pool, bar, written)
    bar.close()
    return written


def _write_split(tmp: Path, split: str, srows: list[dict], pp, load, text_required: bool, pool: ThreadPoolExecutor,
                 bar, written: _Written) -> None:
    """Decode, validate and write one split a row group at a time; adds its shards and findings to ``written``."""
    size, rgs = pp.image_size, pp.row_group_size
    sch = schema(size)
    writer = SplitWriter(tmp, split, sch, rgs, pp.shard_rows, pp.compression)
    for start in range(0, len(srows), rgs):
        chunk = srows[start : start + rgs]
        # decoding is PNG/zlib work that releases the GIL: 2 threads ~ 2 cores
        results = list(pool.map(load, chunk))
        good = _valid_pairs(split, chunk, results, text_required, written)
        bar.update(len(chunk))
        if written.problems and pp.on_invalid == "error":
            continue  # keep validating to report every bad file at once; nothing is written
        for i in range(0, len(good), rgs):
            writer.write(_chunk_table(good[i : i + rgs], sch, size))
    shards = [{"path": sh["path"].relative_to(tmp).as_posix(), "rows": sh["rows"]} for sh in writer.close()]
    written.splits[split] = {"rows": sum(sh["rows"] for sh in shards), "shards": shards}


def _valid_pairs(split: str, chunk: list[dict], results: list, text_required: bool,
                 written: _Written) -> list[tuple[dict, tuple]]:
    """A chunk's valid (row, decoded pair)s, control characters removed from the texts; the rest to ``problems``."""
    good = []
    for r, res in zip(chunk, results, strict=True):
        text, n_ctl = clean_text(r["text"])
        if n_ctl:
            r = {**r, "text": text}
        reason = res if isinstance(res, str) else _text_reason(r, text_required)
        if reason is not None:
            written.problems.append({"split": split, "id": r["id"], "file": r["source_image"],
                                     "mask": r["source_mask"], "reason": reason})
            continue
        good.append((r, res))
        if n_ctl:
            written.control[f"{split}/{r['id']}"] = n_ctl
    return good


def _text_reason(row: dict, text_required: bool) -> str | None:
    """Why a decoded pair's text makes it invalid (every kind but folder needs one per image), else None."""
    if not text_required:
        return None
    if row["has_text"] != "1":
        return "no text row for this image in the text CSV"
    if not row["text"].strip():
        return "empty text"
    return None


def _refuse_invalid(raw_dir: Path, problems: list[dict], pp) -> None:
    """Under ``preprocess.on_invalid: error``, raise listing the invalid pairs (then nothing was written)."""
    if not (problems and pp.on_invalid == "error"):
        return
    # source paths already start with their split's folder ("train/images/x.png"): print them as they are
    lines = [f"  {p['file']}" + (f" (mask {p['mask']})" if p["mask"] else "") + f": {p['reason']}" for p in problems]
    more = f"\n  ... and {len(lines) - 50} more" if len(lines) > 50 else ""
    raise MedrefError(
        f"{raw_dir}: {len(problems)} invalid pair(s) (source paths shown; set preprocess.on_invalid: drop to "
        "skip them, each drop is recorded in manifest.json):\n" + "\n".join(lines[:50]) + more)


def _write_manifest(tmp: Path, raw_dir: Path, dataset: str, kind: str, pp, written: _Written, bits: int | None,
                    bits_from: str) -> dict:
    """Hash the shards and write ``tmp/manifest.json`` (what was written, dropped and decided, and from what)."""
    splits_out = written.splits
    for split in splits_out.values():
        for sh in split["shards"]:
            sh["sha256"] = sha256_file(tmp / sh["path"])
    ck = raw_dir / "checksums.json"
    manifest = {
        "dataset": dataset,
        "kind": kind,
        "image_size": pp.image_size,
        "splits": splits_out,
        "schema": {f.name: str(f.type) for f in schema(pp.image_size)},
        "dropped": written.problems,
        "empty_masks": empty_masks(tmp, splits_out),
        # how deeper-than-8-bit images were mapped to 0..255 (imageio.py); train copies it to the model's
        # config.json input, and predict maps a new image the same way
        "intensity": {"rule": pp.intensity, "bits": bits, "decided_from": bits_from},
        # control characters (NUL ...) removed from the stored texts: the total and per row (split/id)
        "text_control_chars": {"removed": sum(written.control.values()), "rows": written.control},
        "params": pp.model_dump(),
        "raw_digest": sha256_file(ck) if ck.is_file() else None,
        "pyarrow": pa.__version__,
    }
    manifest["digest"] = sha256_json({k: manifest[k] for k in ("splits", "schema", "dropped", "image_size")})
    write_json(tmp / "manifest.json", manifest)
    return manifest


def _log_summary(dataset: str, out_dir: Path, written: _Written, manifest: dict, bits: int | None,
                 bits_from: str) -> None:
    """Log the rows written, each drop, the texts cleaned, the bit depth used and any all-background masks."""
    counts = {s: v["rows"] for s, v in written.splits.items()}
    problems, control = written.problems, written.control
    _log(f"{dataset}: {counts} rows, {len(problems)} dropped -> {out_dir}")
    for p in problems:
        _log(f"dropped {p['file']}: {p['reason']}")
    if control:
        _log(f"removed {sum(control.values())} control character(s) (NUL etc.) from {len(control)} text(s) "
             f"(manifest.json text_control_chars): {', '.join(list(control)[:5])}{' ...' if len(control) > 5 else ''}")
    if bits is not None:
        _log(f"deeper-than-8-bit images mapped as {bits}-bit (0..{2**bits - 1} -> 0..255), from {bits_from}")
    for split, e in manifest["empty_masks"].items():
        _log(f"{split}: {e['count']} all-background mask(s) among lesion masks (listed in manifest.json "
             f"empty_masks): {', '.join(e['ids'][:5])}{' ...' if e['count'] > 5 else ''}")
