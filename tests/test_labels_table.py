"""The one pseudo-label reader (pipeline_src/labels/table.py), used by train and eval.

    .venv/bin/python -m pytest -q tests/test_labels_table.py
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_src.errors import MedrefError
from pipeline_src.evaluate.evaluate import read_regions
from pipeline_src.labels.table import read_labels


def _write(path, **cols):
    pq.write_table(pa.table(cols), path)


def test_reads_regions_and_spans(tmp_path):
    f = tmp_path / "labels.parquet"
    _write(f, id=["a", "b"], text_regions=pa.array([[1, 0, 0, 0, 0, 1], None], pa.list_(pa.int8())),
           position_spans=pa.array([[[0, 4]], []], pa.list_(pa.list_(pa.int32(), 2))))
    labels = read_labels(f)
    assert labels["a"].regions == (1, 0, 0, 0, 0, 1) and labels["a"].spans == [(0, 4)]
    assert labels["b"].regions is None and labels["b"].spans == []
    assert read_regions(f) == {"a": (1, 0, 0, 0, 0, 1), "b": None}  # eval reads the same rows


@pytest.mark.parametrize("content", [b"not parquet at all", b"PAR1\x00\x01garbage"])
def test_garbage_labels_file_names_the_file(tmp_path, content):
    f = tmp_path / "labels.parquet"
    f.write_bytes(content)
    with pytest.raises(MedrefError, match=r"labels\.parquet: not a readable pseudo-label Parquet.*medref pseudolabel"):
        read_labels(f)


def test_labels_file_without_our_columns_is_named(tmp_path):
    f = tmp_path / "labels.parquet"
    _write(f, id=["a"])
    with pytest.raises(MedrefError, match=r"labels\.parquet"):
        read_labels(f)


def test_missing_labels_file(tmp_path):
    with pytest.raises(MedrefError, match="not found"):
        read_labels(tmp_path / "none.parquet")
