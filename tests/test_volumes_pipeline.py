"""Multi-organ CT (kind volumes) through every stage, with both engines, and bad volumes through the CLI.

The module-level behaviour (slicing, validation, 3-D metrics) is tested in tests/test_volumes.py and
tests/test_multiclass.py; here: the wiring. `dvc repro eval@synapse_50pct` and
`snakemake metrics/synapse_50pct.json` in scratch copies must give the same per-class metrics (CPU training is
bit-identical), with case-level splits and regimes, a C-class model and a per-class report table.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline_src.data.synthetic_volumes import LABELS, generate_volumes
from tests.pipeline_utils import REPO, env, make_scratch_repo, run, tool

REGIME = "synapse_50pct"
N_CASES = 6  # -> 3 train / 1 val / 2 test cases; case_0004 has no gallbladder
# small volumes so both chains run in well under a minute each on 2 cores
SMALL = {"datasets": {"synapse": {"volumes": {"n_cases": N_CASES, "shape": [64, 64, 8], "image_size": 64}}}}
CHAIN = ["download@synapse", "preprocess@synapse", "pseudolabel@synapse", f"split@{REGIME}", f"train@{REGIME}",
         f"eval@{REGIME}"]
FOREGROUND = [k for k, v in sorted(LABELS.items(), key=lambda kv: kv[1]) if v > 0]


def _env() -> dict[str, str]:
    # Snakemake exports OMP_NUM_THREADS=<job threads> (1 here) to every job; CPU weights are bit-identical only at
    # the same intra-op thread count (reduction order), so DVC's run gets the same setting
    return {**env(), "OMP_NUM_THREADS": "1"}


def _ran(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    repo = make_scratch_repo(tmp_path_factory.mktemp("vdvc") / "repo", SMALL, regimes=[REGIME])
    res = run([tool("dvc"), "repro", f"eval@{REGIME}"], repo, env=_env())
    assert _ran(res.stdout) == set(CHAIN), res.stdout
    return repo


@pytest.mark.slow
def test_dvc_chain_case_level_and_per_class_metrics(dvc_repo):
    import pyarrow.parquet as pq

    from pipeline_src.data.shards import read_table

    shards = dvc_repo / "data/shards/synapse"
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["kind"] == "volumes" and manifest["n_classes"] == len(LABELS)
    case_split = {}
    for split in ("train", "val", "test"):
        for c in read_table(shards, split, ["case_id"])["case_id"].to_pylist():
            assert case_split.setdefault(c, split) == split, f"case {c} has slices in two splits"
    assert len(case_split) == N_CASES

    sp = json.loads((dvc_repo / f"data/splits/{REGIME}.json").read_text())
    train = read_table(shards, "train", ["id", "case_id"]).to_pydict()
    of = dict(zip(train["id"], train["case_id"], strict=True))
    train_cases = sorted({c for c, s in case_split.items() if s == "train"})
    assert sp["n_train_cases"] == len(train_cases) and set(sp["labelled_cases"]) < set(train_cases)
    # whole cases: every slice of a labelled case is labelled, no slice of another case is
    assert set(sp["labelled"]) == {i for i, c in of.items() if c in sp["labelled_cases"]}
    assert set(sp["unlabelled"]) == set(of) - set(sp["labelled"])

    labels = pq.read_table(dvc_repo / "data/labels/synapse.parquet").to_pydict()
    assert len(labels["id"]) == sum(s["rows"] for s in manifest["splits"].values())
    assert all(r is None for r in labels["text_regions"])

    cfg = json.loads((dvc_repo / f"models/{REGIME}/config.json").read_text())
    assert cfg["train"]["model"]["n_classes"] == len(LABELS) and cfg["train"]["model"]["arch"] == "meddisseg"

    m = json.loads((dvc_repo / f"metrics/{REGIME}.json").read_text())
    test_cases = sorted(c for c, s in case_split.items() if s == "test")
    assert m["n_cases"] == len(test_cases) and [c["case_id"] for c in m["per_case"]] == test_cases
    assert [c["class_name"] for c in m["per_class"]] == FOREGROUND
    assert 0.0 <= m["mean_dice"] <= 1.0 and m["mean_hd95"] > 0 and m["hd95_unit"] == "mm"
    defined = [c["dice"] for c in m["per_class"] if c["dice"] is not None]
    assert m["mean_dice"] == pytest.approx(float(np.mean(defined)))
    with open(dvc_repo / f"eval/{REGIME}/per_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test_cases) * len(FOREGROUND)
    if "case_0004" in test_cases:  # the generator removes this case's gallbladder: absent from the truth
        gb = next(r for r in rows if r["case_id"] == "case_0004" and r["class_name"] == "gallbladder")
        assert gb["gt_voxels"] == "0"

    run([tool("dvc"), "repro", "report"], dvc_repo, env=_env())
    md = (dvc_repo / "reports/report.md").read_text()
    assert f"## Per-class Dice (%) and HD95 (mm), {REGIME}" in md
    for name in FOREGROUND:
        assert f"| {name} |" in md


@pytest.mark.slow
def test_snakemake_same_metrics(dvc_repo, tmp_path):
    smk = make_scratch_repo(tmp_path / "smk", SMALL, regimes=[REGIME])
    run([tool("snakemake"), "--cores", "2", f"metrics/{REGIME}.json"], smk, env=_env())
    a = json.loads((dvc_repo / f"metrics/{REGIME}.json").read_text())
    b = json.loads((smk / f"metrics/{REGIME}.json").read_text())
    assert b["per_class"] == a["per_class"] and b["per_case"] == a["per_case"]
    for out in (f"data/splits/{REGIME}.json", f"models/{REGIME}/model.pt", f"eval/{REGIME}/per_sample.csv"):
        assert (smk / out).read_bytes() == (dvc_repo / out).read_bytes(), out


# ---- bad input through `medref preprocess`: exit 2, one error line naming the file -----------------------------


@pytest.fixture
def raw(tmp_path) -> Path:
    out = tmp_path / "raw"
    generate_volumes(out, 3, (16, 16, 8), seed=5)
    return out


def _label(raw: Path, case: str = "case_0001") -> tuple[Path, nib.Nifti1Image]:
    p = raw / "labelsTr" / f"{case}.nii.gz"
    return p, nib.load(p)


def _shape_mismatch(raw: Path) -> Path:
    p, lb = _label(raw)
    nib.save(nib.Nifti1Image(np.asarray(lb.dataobj)[:, :, :-1], lb.affine), p)
    return p


def _affine_mismatch(raw: Path) -> Path:
    p, lb = _label(raw)
    aff = lb.affine.copy()
    aff[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(lb.dataobj), aff), p)
    return p


def _unknown_label(raw: Path) -> Path:
    p, lb = _label(raw)
    data = np.asarray(lb.dataobj).copy()
    data[0, 0, 0] = 42
    nib.save(nib.Nifti1Image(data, lb.affine), p)
    return p


def _not_nifti(raw: Path) -> Path:
    p = raw / "imagesTr" / "case_0001.png"
    (raw / "imagesTr" / "case_0001.nii.gz").rename(p)
    return p


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_shape_mismatch, "label shape"),
        (_affine_mismatch, "affine differs"),
        (_unknown_label, "unknown label value(s) [42]"),
        (_not_nifti, "not a NIfTI file"),
    ],
)
def test_bad_volume_cli_exit_2_one_line(raw, tmp_path, corrupt, message):
    bad = corrupt(raw)
    out = tmp_path / "shards"
    res = run(
        [sys.executable, "-m", "pipeline_src.cli", "--params", str(REPO / "params.yaml"), "preprocess", "synapse",
         "--raw", str(raw), "--out", str(out)],
        tmp_path,
        check=False,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("medref preprocess: error: ") and str(bad) in lines[0] and message in lines[0]
    assert not out.exists()  # nothing half-written
