"""split@<dataset>_<pct>pct: the seeded, nested selection of labelled training ids at one labelled fraction.

    medref split qata_10pct      # -> data/splits/qata_10pct.json, shared by every run at (qata, 10 %)

Every method and training seed at one (dataset, fraction) reads the same split file, so the study's
comparisons are paired by construction.

    medref split qata_10pct         # data/shards/qata/manifest.json -> data/splits/qata_10pct.json

ONE rule, for 2-D slices and for volumes alike: the training units (image ids, or the case ids of a volumes
dataset) are ordered by sha256("<split.seed>:<unit>") -- a seeded permutation that depends neither on numpy's RNG
(stable across versions) nor on which other units exist -- and fraction f labels the first
``max(1, round_half_up(f * N))``. The order is the same for every fraction, so the 5 % labelled set is inside the
10 % set. On full QaTa (N = 5716): 1 % -> 57, 2 % -> 114, 5 % -> 286, 15 % -> 857 (the Semi-MedRef convention).

Volumes (kind volumes): the units are the training CASES (every slice of a chosen case is labelled, never single
slices of a case); the split file lists the chosen cases' slice ids as ``labelled`` and adds ``labelled_cases`` and
``n_train_cases``.

The split file records the fraction, the seed and the digest of the shards it was made from, so ``medref train``
can refuse a split file written for another fraction, seed or set of shards.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from pipeline_src.data.shards import eval_split, load_manifest, read_table, require_current
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import sha256_json, write_json


def n_labelled(fraction: float, n: int) -> int:
    # half-up (not Python's banker's round) so k never depends on float-to-even ties; 1e-9 absorbs f*N error
    return max(1, min(n, math.floor(fraction * n + 0.5 + 1e-9)))


def order(units: Sequence[str], seed: int) -> list[str]:
    return sorted(sorted(set(units)), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest())


def select(units: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(labelled, unlabelled) units, each sorted: the first ``n_labelled(fraction, N)`` of ``order``."""
    if not 0.0 < fraction <= 1.0:
        raise MedrefError(f"fraction must be in (0, 1], got {fraction}")
    o = order(units, seed)
    if not o:
        raise MedrefError("no training units to select labelled ones from")
    k = n_labelled(fraction, len(o))
    return sorted(o[:k]), sorted(o[k:])


def select_cases(case_ids: Sequence[str], slice_ids: Sequence[str], fraction: float, seed: int) -> dict[str, list[str]]:
    """Case-level regime as the split file's slice ids: {labelled_cases, labelled, unlabelled}.

    ``case_ids[i]`` is the case of ``slice_ids[i]`` (the train split's case_id / id columns)."""
    chosen, _ = select(case_ids, fraction, seed)
    keep = set(chosen)
    lab = sorted(s for s, c in zip(slice_ids, case_ids, strict=True) if c in keep)
    unl = sorted(s for s, c in zip(slice_ids, case_ids, strict=True) if c not in keep)
    return {"labelled_cases": chosen, "labelled": lab, "unlabelled": unl}


def labelled_selection(shards_dir: Path, fraction: float, seed: int) -> dict:
    """The regime's selection from the shards' train split: {labelled, unlabelled, n_train[, labelled_cases,
    n_train_cases]}. Used by ``run`` and by train's preflight, so both count the labelled set the same way."""
    manifest = load_manifest(shards_dir)
    by_case = manifest.get("kind") == "volumes"
    table = read_table(shards_dir, "train", ["id", "case_id"] if by_case else ["id"])
    ids = table["id"].to_pylist()
    if not ids:
        raise MedrefError(f"{shards_dir}: the train split has no rows; cannot select labelled ids")
    if by_case:
        case_ids = table["case_id"].to_pylist()
        out = select_cases(case_ids, ids, fraction, seed)
        out["n_train_cases"] = len(set(case_ids))
    else:
        labelled, unlabelled = select(ids, fraction, seed)
        out = {"labelled": labelled, "unlabelled": unlabelled}
    out["n_train"] = len(ids)
    return out


def _require_eval_split(shards_dir: Path, dataset: str) -> str:
    manifest = load_manifest(shards_dir)
    rows = {s: v.get("rows", 0) for s, v in manifest["splits"].items()}
    if rows.get("test", 0) == 0 and rows.get("val", 0) == 0:
        raise MedrefError(
            f"{shards_dir}: dataset {dataset!r} has no evaluation split (val and test have no rows: {rows}); "
            "a regime needs one to be evaluated. Give the source a val or test folder (e.g. valid/images + "
            "valid/masks), or for a generic folder dataset let the file-name hash assign splits by removing the "
            "train/ sub-folder level")
    return eval_split(shards_dir)


def run(params, split: str, shards_dir: Path, out_file: Path) -> dict:
    dataset, fraction = params.split_of(split)
    seed = params.split.seed
    shards_dir = Path(shards_dir)
    require_current(shards_dir, params, dataset, load_manifest(shards_dir))
    evaluated_on = _require_eval_split(shards_dir, dataset)
    sel = labelled_selection(shards_dir, fraction, seed)
    out = {
        "split": split,
        "dataset": dataset,
        "fraction": fraction,
        "seed": seed,
        "n_train": sel["n_train"],
        "labelled": sel["labelled"],
        "unlabelled": sel["unlabelled"],
        "eval_split": evaluated_on,
        "shards_digest": load_manifest(shards_dir)["digest"],
    }
    if "labelled_cases" in sel:
        out.update(n_train_cases=sel["n_train_cases"], labelled_cases=sel["labelled_cases"])
    out["digest"] = sha256_json(out)
    write_json(out_file, out)
    of_cases = f" ({len(sel['labelled_cases'])}/{sel['n_train_cases']} cases)" if "labelled_cases" in sel else ""
    print(f"[split] {split}: {len(out['labelled'])}/{out['n_train']} labelled{of_cases} (seed {seed}), eval on "
          f"{evaluated_on} -> {out_file}", flush=True)
    return out
