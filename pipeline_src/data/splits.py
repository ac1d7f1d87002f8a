"""split@<regime>: the seeded, nested selection of labelled training ids for a label regime.

    medref split qata_10pct         # data/shards/qata/manifest.json -> data/splits/qata_10pct.json

Train ids are ordered by sha256("<split.seed>:<id>"), a seeded permutation that does not depend on numpy's RNG
(stable across versions) nor on which other ids exist; fraction f labels the first ``max(1, round_half_up(f*N))``.
The order is the same for every fraction, so the 5 % labelled set is inside the 10 % set. On full QaTa
(N = 5716): 1 % -> 57, 2 % -> 114, 5 % -> 286, 15 % -> 857 (the Semi-MedRef convention).

Volumes (kind volumes): the fraction is of the training CASES (``volumes.case_split``, seeded, nested); the
split file lists the chosen cases' slice ids as ``labelled`` and adds ``labelled_cases`` and ``n_train_cases``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from pipeline_src.data.dataset import eval_split, load_manifest, read_table
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import sha256_json, write_json


def n_labelled(fraction: float, n: int) -> int:
    # half-up (not Python's banker's round) so k never depends on float-to-even ties; 1e-9 absorbs f*N error
    return max(1, min(n, math.floor(fraction * n + 0.5 + 1e-9)))


def order(ids: list[str], seed: int) -> list[str]:
    return sorted(sorted(ids), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest())


def select(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(labelled, unlabelled), each sorted."""
    o = order(ids, seed)
    k = n_labelled(fraction, len(o))
    return sorted(o[:k]), sorted(o[k:])


def run(params, regime: str, shards_dir: Path, out_file: Path) -> dict:
    r = params.regime(regime)
    seed = params.split.seed
    manifest = load_manifest(shards_dir)
    by_case = manifest.get("kind") == "volumes"
    table = read_table(shards_dir, "train", ["id", "case_id"] if by_case else ["id"])
    ids = table["id"].to_pylist()
    if not ids:
        raise MedrefError(f"{shards_dir}: the train split has no rows; cannot select labelled ids for {regime}")
    cases = None
    if by_case:
        # volumes: the regime labels whole CASES (every slice of a chosen case), never single slices of a case
        from pipeline_src.data.volumes import regime_ids

        case_ids = table["case_id"].to_pylist()
        sel = regime_ids(case_ids, ids, r.fraction, seed)
        labelled, unlabelled, cases = sel["labelled"], sel["unlabelled"], sel["labelled_cases"]
        n_cases = len(set(case_ids))
    else:
        labelled, unlabelled = select(ids, r.fraction, seed)
    out = {
        "regime": regime,
        "dataset": r.dataset,
        "fraction": r.fraction,
        "seed": seed,
        "n_train": len(ids),
        "labelled": labelled,
        "unlabelled": unlabelled,
        "eval_split": eval_split(shards_dir),
        "shards_digest": manifest["digest"],
    }
    if cases is not None:
        out.update(n_train_cases=n_cases, labelled_cases=cases)
    out["digest"] = sha256_json(out)
    write_json(out_file, out)
    of_cases = f" ({len(cases)}/{n_cases} cases)" if cases is not None else ""
    print(f"[split] {regime}: {len(labelled)}/{len(ids)} labelled{of_cases} (seed {seed}), eval on {out['eval_split']} "
          f"-> {out_file}", flush=True)
    return out
