"""The one reader of the pseudo-label Parquet (``data/labels/<dataset>.parquet``), for training and evaluation.

    from pipeline_src.labels.table import read_labels
    labels = read_labels(Path("data/labels/qata.parquet"))   # id -> Label(regions, spans)

``regions`` is the text's 6-region vector (order ``pipeline_src.labels.text_parser.REGIONS``) or None when the
text names no region we can parse; ``spans`` are the position-word character spans (PosAug).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pipeline_src.errors import MedrefError

COLUMNS = ("id", "text_regions", "position_spans")


class Label(NamedTuple):
    regions: tuple[int, ...] | None
    spans: list[tuple[int, int]]


def read_labels(labels_file: Path) -> dict[str, Label]:
    """id -> Label; a missing, damaged or foreign file is a MedrefError naming it and the command that rebuilds it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels_file = Path(labels_file)
    redo = "re-run `medref pseudolabel` (or `dvc checkout` it)"
    if not labels_file.is_file():
        raise MedrefError(f"{labels_file}: pseudo-label file not found (run `medref pseudolabel` first)")
    try:
        t = pq.read_table(labels_file, columns=list(COLUMNS)).to_pydict()
    except (pa.ArrowInvalid, OSError) as e:  # not Parquet, truncated, or a labels file without our columns
        raise MedrefError(f"{labels_file}: not a readable pseudo-label Parquet ({e}); {redo}") from e
    return {
        i: Label(None if r is None else tuple(int(v) for v in r), [tuple(s) for s in (s or [])])
        for i, r, s in zip(t["id"], t["text_regions"], t["position_spans"], strict=True)
    }
