"""`pseudolabel` stage on hand-written shards of the real sample: columns, agreement JSON, deterministic bytes.

.venv/bin/pytest tests/test_labels_stage.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_src.labels import pseudolabel
from pipeline_src.labels.mask_regions import load_qata_sample
from pipeline_src.labels.text_parser import parse
from pipeline_src.params import Params


def _write_shards(root, split_rows: dict[str, tuple]) -> None:
    """Minimal shards in the CONTRACT.md format (only the columns the stage reads, plus a manifest)."""
    splits = {}
    for split, (names, images, masks, texts) in split_rows.items():
        n, h, w = images.shape
        if n:
            (root / split).mkdir(parents=True)
            t = pa.table(
                {
                    "id": names,
                    "split": [split] * n,
                    "image": pa.array([im.tobytes() for im in images], pa.binary(h * w)),
                    "mask": pa.array([np.packbits(m > 0).tobytes() for m in masks], pa.binary(h * w // 8)),
                    "height": pa.array([h] * n, pa.int32()),
                    "width": pa.array([w] * n, pa.int32()),
                    "text": texts,
                }
            )
            pq.write_table(t, root / split / "part-00000.parquet")
        shards = [{"path": f"{split}/part-00000.parquet", "rows": n}] if n else []
        splits[split] = {"rows": n, "shards": shards}
    (root / "manifest.json").write_text(json.dumps({"dataset": "qata", "image_size": 224, "splits": splits}))


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    tr = load_qata_sample(shared_data / "qata_sample", "valid")
    pick = lambda x, s: (x[0][s], x[1][s], x[2][s], x[3][s])  # noqa: E731
    texts = list(tr[3])
    texts[0] = "Bilateral pulmonary infection."  # one unknown text
    data = (np.array(tr[0]), tr[1], tr[2], np.array(texts, dtype=object))
    _write_shards(
        root, {"train": pick(data, slice(0, 30)), "val": pick(data, slice(30, 50)), "test": pick(data, slice(0, 0))}
    )
    return root


def test_pseudolabel_stage(shards, tmp_path):
    params = Params.model_validate({"datasets": {}, "regimes": {}})
    out, met = tmp_path / "labels" / "qata.parquet", tmp_path / "metrics" / "qata.json"
    pseudolabel.run(params, "qata", shards, out, met)
    t = pq.read_table(out)
    assert t.column_names == ["id", "split", "text", "text_regions", "mask_regions", "n_areas", "position_spans"]
    assert t.num_rows == 50
    rows = t.to_pylist()
    assert rows[0]["text_regions"] is None and rows[0]["position_spans"] == []
    for r in rows[1:]:
        assert r["text_regions"] == list(parse(r["text"]).regions)
        assert len(r["mask_regions"]) == 6
        assert r["position_spans"] == [list(sp) for sp in parse(r["text"]).spans]
        assert all(r["text"][s:e].isalpha() and "lung" not in r["text"][s:e].lower() for s, e in r["position_spans"])
    m = json.loads(met.read_text())
    assert m["splits"]["train"]["unknown_rate"] == round(1 / 30, 4)
    assert m["splits"]["test"]["rows"] == 0
    assert m["all"]["compared"] == 49
    assert 0.9 <= m["all"]["side_agreement"] <= 1.0
    assert set(m["all"]["per_region"]) == {
        "left-upper",
        "left-middle",
        "left-lower",
        "right-upper",
        "right-middle",
        "right-lower",
    }
    first = out.read_bytes()
    pseudolabel.run(params, "qata", shards, out, met)
    assert out.read_bytes() == first  # deterministic bytes
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left
