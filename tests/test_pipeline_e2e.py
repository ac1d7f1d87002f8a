"""The whole chain under both engines, on tiny synthetic data, in scratch copies of the repo.

- `dvc repro eval@qata_10pct` runs exactly that chain; a second call runs nothing;
- `snakemake --profile local all` builds byte-identical outputs; then `snakemake -n` has nothing to do;
- DVC accepts Snakemake-built outputs with `dvc commit -f` without recomputing, and Snakemake
  accepts DVC-built outputs after `snakemake --touch` while still noticing a later params change.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import yaml

from tests.pipeline_utils import make_scratch_repo, run, tool

pytestmark = pytest.mark.slow

REGIMES = ["qata_10pct", "qata_5pct"]
CHAIN_OUTS = [
    "data/raw/qata",
    "data/shards/qata",
    "data/labels/qata.parquet",
    "data/splits/qata_10pct.json",
    "models/qata_10pct",
    "metrics/qata_10pct.json",
    "eval/qata_10pct",
]


def ran_stages(stdout: str) -> list[str]:
    return [line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")]


def same_tree(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two files/trees."""
    if a.is_file():
        return [] if filecmp.cmp(a, b, shallow=False) else [a.name]
    diffs = []
    # Snakemake marks directory() outputs with .snakemake_timestamp (also in .dvcignore)
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp")
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp")
    if fa != fb:
        return sorted({str(x) for x in set(fa) ^ set(fb)})
    for rel in fa:
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            diffs.append(str(rel))
    return diffs


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    repo = make_scratch_repo(tmp_path_factory.mktemp("dvc") / "repo", regimes=REGIMES)
    first = run([tool("dvc"), "repro", "eval@qata_10pct"], repo)
    assert set(ran_stages(first.stdout)) == {
        "download@qata",
        "preprocess@qata",
        "pseudolabel@qata",
        "split@qata_10pct",
        "train@qata_10pct",
        "eval@qata_10pct",
    }, first.stdout
    return repo


def test_dvc_chain_then_noop(dvc_repo):
    metrics = json.loads((dvc_repo / "metrics/qata_10pct.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["dice_global"] <= 1.0
    again = run([tool("dvc"), "repro", "eval@qata_10pct"], dvc_repo)
    assert ran_stages(again.stdout) == [], again.stdout
    assert not (dvc_repo / "models/qata_5pct").exists(), "repro of one regime built another"


def test_snakemake_same_bytes_and_noop(dvc_repo, tmp_path):
    # a clone of the same commit: the provenance blocks name the commit, so it must match
    smk = tmp_path / "smk"
    run(["git", "clone", "-q", str(dvc_repo), str(smk)], tmp_path)
    run([tool("snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", "all"], smk)
    for out in CHAIN_OUTS:
        assert same_tree(dvc_repo / out, smk / out) == [], f"{out} differs between DVC and Snakemake"
    dry = run([tool("snakemake"), "-n", "all"], smk)
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # DVC records the Snakemake-built outputs without recomputing them.
    run([tool("dvc"), "commit", "-f", "--with-deps", "report"], smk)
    again = run([tool("dvc"), "repro", "report"], smk)
    assert ran_stages(again.stdout) == [], again.stdout


def test_snakemake_after_dvc_touch_then_params_change(dvc_repo):
    # Outputs made by DVC carry no Snakemake records; --touch --forceall writes them for every
    # job without running anything (plain --touch skips jobs that look up to date by mtime).
    run([tool("dvc"), "repro"], dvc_repo)
    run([tool("snakemake"), "--cores", "1", "--touch", "--forceall", "all"], dvc_repo)
    dry = run([tool("snakemake"), "-n", "all"], dvc_repo)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    p = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    p["eval"]["threshold"] = 0.4
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dry = run([tool("snakemake"), "-n", "all"], dvc_repo)
    assert "rule eval" in dry.stdout, dry.stdout
    assert "rule train" not in dry.stdout, "an eval param change must not re-train"
