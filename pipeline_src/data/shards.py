"""Parquet shards: THE schema, THE writer and THE readers, for 2-D image datasets and volume slices alike.

    from pipeline_src.data.shards import load_manifest, read_table, decode_images, decode_masks
    t = read_table("data/shards/qata", "train"); images = decode_images(t)   # uint8 [N,H,W], zero-copy

Written by ``medref preprocess`` (pipeline_src/data/preprocess.py for 2-D pairs, pipeline_src/data/volumes.py for
NIfTI volumes); read by every later stage. Images are ``fixed_size_binary(H*W)``; binary masks are bit-packed
``fixed_size_binary(ceil(H*W/8))``; multi-class masks (volumes) are ``fixed_size_binary(H*W)`` of uint8 class
indices, marked ``mask_encoding: class_index`` in the manifest (:func:`is_class_index`). A whole column is one
contiguous Arrow buffer that numpy views without a copy.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import sha256_file

MASK_ENCODING = "class_index"


# ---- schema ----------------------------------------------------------------------------------------------------


def base_fields(image_size: int, mask_bytes: int) -> list[tuple[str, pa.DataType]]:
    """The shard columns every dataset kind has (CONTRACT.md); volumes append their own after these."""
    return [
        ("id", pa.string()),
        ("split", pa.string()),
        ("image", pa.binary(image_size * image_size)),
        ("mask", pa.binary(mask_bytes)),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("text", pa.string()),
        ("source_image", pa.string()),
        ("source_mask", pa.string()),
        ("image_sha256", pa.string()),
        ("mask_sha256", pa.string()),
    ]


def schema(image_size: int) -> pa.Schema:
    n = image_size * image_size
    return pa.schema(base_fields(image_size, (n + 7) // 8))  # masks bit-packed


def volume_schema(size: int, n_classes: int, labels: dict[str, int] | None = None):
    meta = {b"medref.mask_encoding": MASK_ENCODING.encode(), b"medref.n_classes": str(n_classes).encode()}
    if labels is not None:
        meta[b"medref.labels"] = json.dumps(labels, sort_keys=True).encode()
    return pa.schema(
        [
            *base_fields(size, size * size),  # mask: one uint8 class index per pixel, not bit-packed
            ("case_id", pa.string()),
            ("slice_index", pa.int32()),
            ("n_classes", pa.int32()),
            ("spacing", pa.list_(pa.float32(), 3)),
        ],
        metadata=meta,
    )


# ---- writer ----------------------------------------------------------------------------------------------------


class SplitWriter:
    """THE shard writer (2-D and volume datasets): one split's tables into part-NNNNN.parquet files of whole row
    groups, with one set of Parquet settings. Deterministic: fixed row groups, no timestamps, no statistics on
    pixel bytes."""

    # dictionaries pay off only on repetitive strings, never on pixel bytes; min/max statistics only on small columns
    DICTIONARY = ("split", "text", "case_id")
    STATISTICS = ("id", "split", "height", "width", "case_id", "slice_index", "n_classes")

    def __init__(self, root: Path, split: str, schema: pa.Schema, row_group_size: int, shard_rows: int,
                 compression: str):
        self.dir, self.schema, self.row_group_size = Path(root) / split, schema, row_group_size
        self.per_part = max(1, shard_rows // row_group_size) * row_group_size  # whole row groups per part file
        self.compression = None if compression == "none" else compression
        self.writer: pq.ParquetWriter | None = None
        self.part_rows = 0
        self.shards: list[dict] = []  # {"path": Path, "rows": int}

    def write(self, table: pa.Table) -> None:
        """Append rows (at most one row group's worth per call keeps row groups whole)."""
        while table.num_rows:
            if self.writer is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                path = self.dir / f"part-{len(self.shards):05d}.parquet"
                names = set(self.schema.names)
                self.writer = pq.ParquetWriter(
                    path, self.schema, compression=self.compression,
                    use_dictionary=[c for c in self.DICTIONARY if c in names],
                    write_statistics=[c for c in self.STATISTICS if c in names], write_page_index=False)
                self.shards.append({"path": path, "rows": 0})
                self.part_rows = 0
            take = table.slice(0, self.per_part - self.part_rows)
            try:
                self.writer.write_table(take, row_group_size=self.row_group_size)
            except BaseException:
                # a full disk: close the part file now, not when the error is collected (its open handle keeps the
                # deleted temp's space, and the filesystem busy); the write's own error is the one raised
                with contextlib.suppress(Exception):
                    self.writer.close()
                self.writer = None
                raise
            self.part_rows += take.num_rows
            self.shards[-1]["rows"] += take.num_rows
            table = table.slice(take.num_rows)
            if self.part_rows >= self.per_part:
                self.writer.close()
                self.writer = None

    def close(self) -> list[dict]:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.shards


# ---- manifest --------------------------------------------------------------------------------------------------


_RECOVER = ("restore it with `dvc checkout {d}` (or rebuild: `dvc repro -f preprocess@<dataset>` / "
            "`medref preprocess <dataset>`)")


def load_manifest(shards_dir: str | Path) -> dict:
    f = Path(shards_dir) / "manifest.json"
    if not f.is_file():
        raise MedrefError(f"{f}: not found; run `medref preprocess <dataset>` first")
    try:
        m = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # truncated or overwritten: name it, say how to get it back
        raise MedrefError(f"{f}: not a valid manifest ({e}); {_RECOVER.format(d=Path(shards_dir))}") from e
    if not isinstance(m, dict) or not isinstance(m.get("splits"), dict):
        raise MedrefError(f"{f}: not a shards manifest (no 'splits'); {_RECOVER.format(d=Path(shards_dir))}")
    return m


def shard_files(shards_dir: str | Path, split: str) -> list[Path]:
    m = load_manifest(shards_dir)
    if split not in m["splits"]:
        raise MedrefError(f"{shards_dir}: unknown split {split!r}; manifest has {', '.join(m['splits'])}")
    return [Path(shards_dir) / s["path"] for s in m["splits"][split]["shards"]]


def eval_split(shards_dir: str | Path) -> str:
    """"test" when it has rows, else "val" (the real QaTa sample has no test images)."""
    m = load_manifest(shards_dir)
    return "test" if m["splits"].get("test", {}).get("rows", 0) > 0 else "val"


def is_class_index(manifest: dict) -> bool:
    """THE test of a multi-class dataset (kind volumes): ``mask`` holds uint8 class indices, not packed bits.
    Every reader asks this one function, from the manifest (the Parquet schema metadata says the same)."""
    return manifest.get("mask_encoding") == MASK_ENCODING


def stale_reason(manifest: dict, params, dataset: str) -> str | None:
    """Why shards with this manifest were NOT made for the current params (None when they were).

    Later stages (split, pseudolabel) call it, so that after a failed or skipped ``medref preprocess`` they refuse
    the previous shards instead of silently using them. It compares what the manifest records with what
    params.yaml asks now: the preprocess section (2-D datasets), or the slice size, CT window and case split
    (volumes). A manifest that records none of it (hand-made test fixtures) cannot be judged and passes."""
    if manifest.get("kind") == "volumes":
        v = params.dataset(dataset).volumes
        want = {"image_size": v.image_size or params.preprocess.image_size,
                "window": {"hu_min": v.hu_min, "hu_max": v.hu_max},
                "split": {"val_fraction": v.val_fraction, "test_fraction": v.test_fraction, "seed": v.split_seed}}
        have = {k: manifest.get(k) for k in want}
        recorded = all(k in manifest for k in want)
    else:
        want, have = params.preprocess.model_dump(mode="json"), manifest.get("params")
        recorded = have is not None
    if not recorded or have == want:
        return None
    if isinstance(have, dict) and isinstance(want, dict):
        diff = [f"{k}: {have.get(k)!r} in the shards, {want.get(k)!r} in params" for k in sorted(want | have)
                if have.get(k) != want.get(k)]
    else:
        diff = [f"{have!r} in the shards, {want!r} in params"]
    return "; ".join(diff)


def require_current(shards_dir: Path, params, dataset: str, manifest: dict) -> None:
    """MedrefError when the shards in ``shards_dir`` were made for other params (see :func:`stale_reason`)."""
    why = stale_reason(manifest, params, dataset)
    if why is not None:
        raise MedrefError(f"{Path(shards_dir) / 'manifest.json'}: these shards were made for other params ({why}); "
                          f"re-run `medref preprocess {dataset}` (or `dvc repro preprocess@{dataset}`) first")


# ---- readers ---------------------------------------------------------------------------------------------------


def read_table(shards_dir: str | Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of ``split`` (sorted by id, as written); an empty split gives an empty table with the schema."""
    files = shard_files(shards_dir, split)
    if not files:
        m = load_manifest(shards_dir)
        if is_class_index(m):
            t = volume_schema(m["image_size"], m["n_classes"], m.get("labels")).empty_table()
        else:
            t = schema(m["image_size"]).empty_table()
        return t.select(columns) if columns else t
    verify_shards(shards_dir, split)
    # memory_map: the OS pages file bytes in; only the lz4 output is allocated. ParquetFile, not pq.read_table: the
    # latter goes through pyarrow.dataset, whose import pulls in pandas (0.3 s of every stage that reads shards)
    tables = []
    for f in files:
        try:
            pf = pq.ParquetFile(f, memory_map=True)
            absent = [c for c in columns or () if c not in pf.schema_arrow.names]
            if absent:  # ParquetFile.read would drop them silently
                raise MedrefError(f"{f}: shard has no column(s) {absent} (it has {pf.schema_arrow.names}); "
                                  f"{_RECOVER.format(d=shards_dir)}")
            tables.append(pf.read(columns=columns))
        except (pa.ArrowException, OSError) as e:
            raise MedrefError(f"{f}: unreadable Parquet shard ({type(e).__name__}: {e}); {_RECOVER.format(d=shards_dir)}") from e
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


# (path, size, mtime_ns) of shard files whose sha256 matched the manifest in this process
_VERIFIED: set[tuple[str, int, int]] = set()


def select_rows(all_ids: list[str], ids: list[str], where: str) -> np.ndarray:
    """Row positions of ``ids`` (in the order given, e.g. a split file's) among a shard table's ``all_ids``; an id
    the shards lack is a MedrefError naming ``where``, since labels/splits and shards are then out of step."""
    pos = {k: i for i, k in enumerate(all_ids)}
    missing = [k for k in ids if k not in pos]
    if missing:
        raise MedrefError(f"{where}: {len(missing)} ids not in the shards, e.g. {missing[:5]} (splits or labels were "
                          "built from other shards: re-run `medref split` / `dvc repro`)")
    return np.asarray([pos[k] for k in ids], dtype=np.int64)


def verify_shards(shards_dir: str | Path, split: str) -> None:
    """Check each shard of ``split`` against its sha256 in manifest.json, once per process and file version.

    A truncated or modified shard (a damaged DVC cache, a partial copy) is reported with the file and how to
    recover, instead of an Arrow error or silently different pixels. Hashing is ~1 s/GB, paid once per process
    (DataLoader workers started by fork inherit the result)."""
    m = load_manifest(shards_dir)
    for s in m["splits"].get(split, {}).get("shards", []):
        f = Path(shards_dir) / s["path"]
        try:
            st = f.stat()
        except FileNotFoundError:
            raise MedrefError(f"{f}: shard listed in manifest.json is missing; {_RECOVER.format(d=shards_dir)}") from None
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key in _VERIFIED or "sha256" not in s:
            continue
        digest = sha256_file(f)
        if digest != s["sha256"]:
            raise MedrefError(f"{f}: corrupted shard (sha256 {digest[:12]} != {s['sha256'][:12]} in manifest.json, "
                              f"{st.st_size} bytes); {_RECOVER.format(d=shards_dir)}")
        _VERIFIED.add(key)


def _fixed_view(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """[N, byte_width] uint8 view of a fixed_size_binary column (zero-copy for a single chunk)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    w = arr.type.byte_width
    n = len(arr)
    if n == 0:
        return np.zeros((0, w), np.uint8)
    buf = arr.buffers()[1]
    return np.frombuffer(buf, np.uint8, count=n * w, offset=arr.offset * w).reshape(n, w)


def row_views(col: pa.ChunkedArray) -> list[np.ndarray]:
    """One read-only uint8 [byte_width] view per row of a fixed_size_binary column, chunk by chunk (zero-copy)."""
    out: list[np.ndarray] = []
    for chunk in col.chunks:
        out.extend(_fixed_view(chunk))
    return out


def image_hw(table: pa.Table) -> tuple[int, int]:
    if "height" in table.column_names and table.num_rows:
        return int(table["height"][0].as_py()), int(table["width"][0].as_py())
    side = math.isqrt(table.schema.field("image").type.byte_width) if "image" in table.column_names else None
    if side is None:
        raise MedrefError("cannot infer the image size: read the 'height'/'width' or 'image' columns too")
    return side, side


def decode_images(table: pa.Table) -> np.ndarray:
    """uint8 [N,H,W] (a read-only view of the Arrow buffer when the table has one chunk)."""
    h, w = image_hw(table)
    return _fixed_view(table["image"]).reshape(-1, h, w)


def decode_masks(table: pa.Table) -> np.ndarray:
    """uint8 [N,H,W] in {0,1}."""
    if (table.schema.metadata or {}).get(b"medref.mask_encoding") == b"class_index":
        raise MedrefError("mask column holds class indices (a volumes dataset): use decode_class_masks")
    h, w = image_hw(table)
    packed = _fixed_view(table["mask"])
    return np.unpackbits(packed, axis=1, count=h * w).reshape(-1, h, w)


def decode_mask_column(table: pa.Table) -> np.ndarray:
    """The ``mask`` column as uint8 [N,H,W], as the shards store it: {0,1} from packed bits, or class indices (a
    volumes dataset)."""
    if (table.schema.metadata or {}).get(b"medref.mask_encoding") == MASK_ENCODING.encode():
        return decode_class_masks(table)
    return decode_masks(table)


def decode_class_masks(table) -> np.ndarray:
    """``mask`` column of a volumes shard table -> uint8 [N,H,W] class indices (the binary decode_masks would
    unpack bits; this is the class-index counterpart)."""
    meta = table.schema.metadata or {}
    if meta.get(b"medref.mask_encoding", MASK_ENCODING.encode()) != MASK_ENCODING.encode():
        raise MedrefError("mask column is not class-index encoded (a binary dataset? use decode_masks)")
    n = table.num_rows
    h, w = (int(table.column("height")[0].as_py()), int(table.column("width")[0].as_py())) if n else (0, 0)
    col = table.column("mask").combine_chunks()
    return np.frombuffer(col.buffers()[1], dtype=np.uint8, count=n * h * w, offset=col.offset * h * w).reshape(n, h, w)
