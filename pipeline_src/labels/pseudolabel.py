"""Stage ``pseudolabel@<dataset>``: 6-region position labels from the text and from the masks, + agreement.

    medref pseudolabel qata        # data/shards/qata -> data/labels/qata.parquet + data/labels/qata.agreement.json

Writes one row per shard row (every split), columns as in docs/CONTRACT.md: ``text_regions`` (null = the text
does not say where), ``mask_regions`` (null = empty mask), ``n_areas``, ``position_spans`` (for PosAug).
The agreement report compares text and mask per split: per-region precision/recall (mask as the prediction,
text as the reference), side-level agreement, exact 6-region match, and the text coverage/unknown rate.
The Parquet bytes are deterministic (fixed row groups and compression, rows in shard order = sorted ids).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline_src import provenance
from pipeline_src.data.shards import decode_images, decode_masks, load_manifest, read_table, require_current
from pipeline_src.labels.mask_regions import agreement, mask_to_regions
from pipeline_src.labels.text_parser import REGIONS, _tokens, parse
from pipeline_src.utils.io import atomic_file, write_json

ROW_GROUP_SIZE = 4096
PARAMS_KEYS = ["pseudolabel"]


def schema():
    import pyarrow as pa

    regions = pa.list_(pa.int8(), 6)
    return pa.schema([
        ("id", pa.string()),
        ("split", pa.string()),
        ("text", pa.string()),
        ("text_regions", regions),
        ("mask_regions", regions),
        ("n_areas", pa.int32()),
        ("position_spans", pa.list_(pa.list_(pa.int32(), 2))),
    ])


def label_split(table, pp: dict) -> dict[str, list]:
    """Columns of the labels table for one split's shard table (id, split, text, image, mask, height, width)."""
    n = table.num_rows
    cols: dict[str, list] = {k: [] for k in schema().names}
    if n == 0:
        return cols
    images, masks = decode_images(table), decode_masks(table)
    for i, (id_, split, text) in enumerate(
        zip(table["id"].to_pylist(), table["split"].to_pylist(), table["text"].to_pylist(), strict=True)
    ):
        p = parse(text or "")
        cols["id"].append(id_)
        cols["split"].append(split)
        cols["text"].append(text)
        cols["text_regions"].append(None if p.regions is None else list(p.regions))
        mr = mask_to_regions(masks[i], images[i], **pp)
        cols["mask_regions"].append(None if mr is None else list(mr))
        cols["n_areas"].append(p.n_areas)
        cols["position_spans"].append([list(s) for s in p.spans])
    return cols


def unknown_reason(text: str) -> str:
    """Why a text gave no regions (``text_regions`` null): ``no_position_word`` (report words the parser knows,
    but no position), ``no_report_word`` (letters, but no word the parser knows: another language or
    gibberish) or ``no_letters`` (empty, digits or symbols only)."""
    if not any(ch.isalpha() for ch in text):
        return "no_letters"
    known = any(cat != "other" and not text[s:e].isdigit() for cat, _, s, e, _ in _tokens(text))
    return "no_position_word" if known else "no_report_word"


UNKNOWN_REASONS = ("no_position_word", "no_report_word", "no_letters")


def report(cols: dict[str, list]) -> dict:
    """Agreement of mask-derived with text-derived regions for one split (or all rows); undefined values
    (no rows, no positives of a region) are None, written as JSON null."""
    n = len(cols["id"])
    t, m = cols["text_regions"], cols["mask_regions"]
    both = [i for i in range(n) if t[i] is not None and m[i] is not None]
    ag = agreement(np.array([m[i] for i in both]), np.array([t[i] for i in both]))
    reasons = [unknown_reason(cols["text"][i] or "") for i in range(n) if t[i] is None]
    out = {
        "rows": n,
        "text_known": sum(x is not None for x in t),
        "coverage": round(sum(x is not None for x in t) / n, 4) if n else None,
        "unknown_rate": round(sum(x is None for x in t) / n, 4) if n else None,
        "unknown_texts": {r: reasons.count(r) for r in UNKNOWN_REASONS},
        "mask_empty": sum(x is None for x in m),
        "n_areas_known": sum(x is not None for x in cols["n_areas"]),
    }
    d = ag.as_dict()
    out.update({"compared": d["n"], "side_agreement": _num(d["side"]), "exact_match": _num(d["exact"])})
    out["per_region"] = {
        name: {"precision": _num(d["precision"][k]), "recall": _num(d["recall"][k])} for k, name in enumerate(REGIONS)
    }
    return out


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else x  # NaN (nothing to compare) -> null: JSON has no NaN


def run(params, dataset: str, shards_dir: Path, out_file: Path, metrics_file: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = load_manifest(shards_dir)
    require_current(shards_dir, params, dataset, manifest)  # e.g. a failed preprocess left the previous shards
    pp = params.pseudolabel.model_dump()
    all_cols: dict[str, list] = {k: [] for k in schema().names}
    per_split = {}
    # volumes (multi-organ CT) have no report text and no lung regions: the file still lists every id, with
    # unknown (null) regions, so train/eval read one labels format for every dataset kind
    no_text = manifest.get("kind") == "volumes"
    for split in sorted(manifest["splits"]):
        if no_text:
            ids = read_table(shards_dir, split, columns=["id"])["id"].to_pylist()
            cols = {"id": ids, "split": [split] * len(ids), "text": [""] * len(ids), "text_regions": [None] * len(ids),
                    "mask_regions": [None] * len(ids), "n_areas": [None] * len(ids), "position_spans": [[]] * len(ids)}
            per_split[split] = {"rows": len(ids), "text_known": 0, "coverage": 0.0 if ids else None}
            for k in all_cols:
                all_cols[k].extend(cols[k])
            continue
        table = read_table(shards_dir, split, columns=["id", "split", "text", "image", "mask", "height", "width"])
        cols = label_split(table, pp)
        per_split[split] = report(cols)
        for k in all_cols:
            all_cols[k].extend(cols[k])

    out = pa.table(all_cols, schema=schema())
    with atomic_file(out_file, "wb") as f:
        # fixed row groups, compression and no statistics-dependent options: same inputs -> same bytes
        pq.write_table(out, f, row_group_size=ROW_GROUP_SIZE, compression="zstd", compression_level=3)

    metrics = {
        "dataset": dataset,
        "regions": list(REGIONS),
        "all": {"rows": len(all_cols["id"]), "text_known": 0,
                "note": "kind volumes: no report text, position labels not applicable (all null)"}
        if no_text else report(all_cols),
        "splits": per_split,
        "provenance": provenance.block(
            {"pseudolabel": pp}, PARAMS_KEYS, {"manifest": Path(shards_dir) / "manifest.json"}
        ),
    }
    write_json(metrics_file, metrics)
