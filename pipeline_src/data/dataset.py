"""Fast readers for the Parquet shards written by ``medref preprocess``.

    python -c "from pipeline_src.data.dataset import ShardDataset; print(ShardDataset('data/shards/qata', 'train')[0])"

Images are ``fixed_size_binary(H*W)`` and masks bit-packed ``fixed_size_binary(ceil(H*W/8))``, so a whole column
is one contiguous Arrow buffer that numpy views without a copy: bulk reads (``read_table`` + ``decode_*``) cost
one lz4 decompression per row group, and ``ShardDataset`` items are slices of those buffers (no per-sample
file opens, no PNG decoding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_src.errors import MedrefError


def load_manifest(shards_dir: str | Path) -> dict:
    f = Path(shards_dir) / "manifest.json"
    if not f.is_file():
        raise MedrefError(f"{f}: not found; run `medref preprocess <dataset>` first")
    try:
        m = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # truncated or overwritten: the shards cannot be trusted either
        raise MedrefError(f"{f}: not valid JSON ({e}); re-run `medref preprocess <dataset>` "
                          f"(or `dvc checkout {f.parent}`)") from e
    if not isinstance(m, dict) or not isinstance(m.get("splits"), dict):
        raise MedrefError(f"{f}: not a shards manifest (no 'splits' mapping); re-run `medref preprocess <dataset>` "
                          f"(or `dvc checkout {f.parent}`)")
    return m


def select_rows(all_ids: list[str], ids: list[str], where: str) -> np.ndarray:
    """Row positions of ``ids`` (in the order given, e.g. a split file's) among a shard table's ``all_ids``; an id
    the shards lack is a MedrefError naming ``where``, since labels/splits and shards are then out of step."""
    pos = {k: i for i, k in enumerate(all_ids)}
    missing = [k for k in ids if k not in pos]
    if missing:
        raise MedrefError(f"{where}: {len(missing)} ids not in the shards, e.g. {missing[:5]} (splits or labels were "
                          "built from other shards: re-run `medref split` / `dvc repro`)")
    return np.asarray([pos[k] for k in ids], dtype=np.int64)


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
    """True for multi-class shards (kind volumes): ``mask`` holds uint8 class indices, not packed bits."""
    return manifest.get("mask_encoding") == "class_index"


def read_table(shards_dir: str | Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of ``split`` (sorted by id, as written); an empty split gives an empty table with the schema."""
    files = shard_files(shards_dir, split)
    if not files:
        m = load_manifest(shards_dir)
        if is_class_index(m):
            from pipeline_src.data.volumes import shard_schema

            t = shard_schema(m["image_size"], m["n_classes"], m.get("labels")).empty_table()
        else:
            from pipeline_src.data.preprocess import schema

            t = schema(m["image_size"]).empty_table()
        return t.select(columns) if columns else t
    verify_shards(shards_dir, split)
    # memory_map: the OS pages file bytes in; only the lz4 output is allocated
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=columns, memory_map=True))
        except (pa.ArrowException, OSError) as e:
            raise MedrefError(f"{f}: unreadable Parquet shard ({type(e).__name__}: {e}); {_RECOVER.format(d=shards_dir)}") from e
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


_RECOVER = ("restore it with `dvc checkout {d}` (or rebuild: `dvc repro -f preprocess@<dataset>` / "
            "`medref preprocess <dataset>`)")
# (path, size, mtime_ns) of shard files whose sha256 matched the manifest in this process
_VERIFIED: set[tuple[str, int, int]] = set()


def verify_shards(shards_dir: str | Path, split: str) -> None:
    """Check each shard of ``split`` against its sha256 in manifest.json, once per process and file version.

    A truncated or modified shard (a damaged DVC cache, a partial copy) is reported with the file and how to
    recover, instead of an Arrow error or silently different pixels. Hashing is ~1 s/GB, paid once per process
    (DataLoader workers started by fork inherit the result)."""
    from pipeline_src.utils.io import sha256_file

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


def _row_views(col: pa.ChunkedArray) -> list[np.ndarray]:
    """One read-only uint8 [byte_width] view per row of a fixed_size_binary column, chunk by chunk (zero-copy)."""
    out: list[np.ndarray] = []
    for chunk in col.chunks:
        out.extend(_fixed_view(chunk))
    return out


def _hw(table: pa.Table) -> tuple[int, int]:
    if "height" in table.column_names and table.num_rows:
        return int(table["height"][0].as_py()), int(table["width"][0].as_py())
    side = math.isqrt(table.schema.field("image").type.byte_width) if "image" in table.column_names else None
    if side is None:
        raise MedrefError("cannot infer the image size: read the 'height'/'width' or 'image' columns too")
    return side, side


def decode_images(table: pa.Table) -> np.ndarray:
    """uint8 [N,H,W] (a read-only view of the Arrow buffer when the table has one chunk)."""
    h, w = _hw(table)
    return _fixed_view(table["image"]).reshape(-1, h, w)


def decode_masks(table: pa.Table) -> np.ndarray:
    """uint8 [N,H,W] in {0,1}."""
    if (table.schema.metadata or {}).get(b"medref.mask_encoding") == b"class_index":
        raise MedrefError("mask column holds class indices (a volumes dataset): use volumes.decode_class_masks")
    h, w = _hw(table)
    packed = _fixed_view(table["mask"])
    return np.unpackbits(packed, axis=1, count=h * w).reshape(-1, h, w)


class ShardDataset:
    """Map-style torch Dataset over one split (a plain class so that this module, and the torch-free stages that
    read shards through it, do not import torch: `medref split`/`pseudolabel` start in 0.3 s, not 2.5 s); item {"id", "image" [1,H,W] in [0,1], "mask" [1,H,W] in {0,1}, "text"}.

    Multi-class shards (manifest ``mask_encoding: class_index``, kind volumes): "mask" is a LongTensor [H,W] of
    class indices (what ``cross_entropy`` takes), and the item also has "case_id", "slice_index", "spacing".

    The split is read lazily on first access, in the process that uses it: with DataLoader workers each worker
    reads it once (with fork, a copy loaded before the workers start is shared copy-on-write). Memory is the
    split's decompressed size (QaTa train at 224^2: ~290 MB images + 36 MB packed masks).
    """

    COLUMNS = ["id", "image", "mask", "text", "height", "width"]

    def __init__(self, shards_dir: str | Path, split: str, ids: list[str] | None = None):
        self.shards_dir = Path(shards_dir)
        self.split = split
        self.ids = list(ids) if ids is not None else None
        m = load_manifest(self.shards_dir)
        if split not in m["splits"]:
            raise MedrefError(f"{self.shards_dir}: unknown split {split!r}; manifest has {', '.join(m['splits'])}")
        self._n = len(self.ids) if self.ids is not None else int(m["splits"][split]["rows"])
        self.class_index = is_class_index(m)
        self.n_classes = int(m.get("n_classes", 1)) if self.class_index else 1
        self._data: dict | None = None

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict:
        # spawn-started workers get the paths only and read the shards themselves
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    def _load(self) -> dict:
        extra = ["case_id", "slice_index", "spacing"] if self.class_index else []
        t = read_table(self.shards_dir, self.split, self.COLUMNS + extra)
        all_ids = t["id"].to_pylist()
        if self.ids is None:
            rows = np.arange(len(all_ids))
            ids = all_ids
        else:
            rows = select_rows(all_ids, self.ids, f"{self.shards_dir}/{self.split}")
            ids = self.ids
        h, w = _hw(t)
        self._data = {
            "table": t,  # keeps the Arrow buffers behind the views alive
            # per-row views of each chunk's buffer: no combine_chunks copy of the whole split (~0.2 s/100 MB)
            "images": _row_views(t["image"]),
            "masks": _row_views(t["mask"]),
            "texts": t["text"].to_pylist(),
            "rows": rows,
            "ids": ids,
            "hw": (h, w),
        }
        if self.class_index:
            self._data.update(case_id=t["case_id"].to_pylist(), slice_index=t["slice_index"].to_pylist(),
                              spacing=t["spacing"].to_pylist())
        return self._data

    def _class_item(self, d: dict, i: int, r: int, h: int, w: int) -> dict:
        import torch

        img = torch.from_numpy(d["images"][r].astype(np.float32).reshape(1, h, w)).mul_(1.0 / 255.0)
        mask = torch.from_numpy(d["masks"][r].astype(np.int64).reshape(h, w))
        return {"id": d["ids"][i], "image": img, "mask": mask, "text": d["texts"][r], "case_id": d["case_id"][r],
                "slice_index": d["slice_index"][r], "spacing": torch.tensor(d["spacing"][r], dtype=torch.float64)}

    def __getitem__(self, i: int) -> dict:
        import torch  # cached in sys.modules after the first item: a dict lookup

        d = self._data if self._data is not None else self._load()
        r = int(d["rows"][i])
        h, w = d["hw"]
        if self.class_index:
            return self._class_item(d, i, r, h, w)
        # one float32 allocation each; the uint8 source is a read-only view of the Arrow buffer
        img = torch.from_numpy(d["images"][r].astype(np.float32).reshape(1, h, w)).mul_(1.0 / 255.0)
        mask = torch.from_numpy(np.unpackbits(d["masks"][r], count=h * w).astype(np.float32).reshape(1, h, w))
        return {"id": d["ids"][i], "image": img, "mask": mask, "text": d["texts"][r]}
