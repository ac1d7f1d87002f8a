"""Every study committed under docs/results re-checks from a clone of this repository in one command.

    .venv/bin/python -m pytest -q tests/test_committed_results.py

For each published folder: its commit is in main and its PROVENANCE.md names the numerics mode and that commit; and
the smallest committed row (docs/results/qata-synthetic-demo, the demo's supervised run on the embedded synthetic
data) is re-run by ``medref verify --from`` in a fresh clone, which must pass bit for bit. CI runs it on a clean
clone of main, so a committed result that no longer verifies fails CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipeline_utils import REPO, run, tool

RESULTS = REPO / "docs" / "results"
FOLDERS = sorted(p for p in RESULTS.glob("*") if (p / "publish.json").exists()) if RESULTS.exists() else []
SMALL = ("qata-synthetic-demo", "qata_10pct-supervised")


def test_a_small_committed_row_exists():
    assert (RESULTS / SMALL[0] / "metrics" / f"{SMALL[1]}.json").exists(), "the demo study must stay committed"


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_committed_study_names_a_commit_of_main_and_its_numerics(folder: Path):
    record = json.loads((folder / "publish.json").read_text())
    res = run(["git", "merge-base", "--is-ancestor", record["commit"], "HEAD"], REPO, check=False)
    assert res.returncode == 0, f"{folder.name}: commit {record['commit']} is not in this history"
    tree = run(["git", "rev-parse", f"{record['commit']}:pipeline_src"], REPO).stdout.strip()
    assert tree == record["code_tree"], f"{folder.name}: the recorded code tree is not that commit's pipeline_src"
    text = (folder / "PROVENANCE.md").read_text()
    assert f"`{record['commit']}`" in text and "CPU numerics: portable" in text
    for m in (folder / "metrics").glob("*.json"):
        prov = json.loads(m.read_text())["provenance"]
        assert prov["numerics"]["mode"] == "portable", m
        assert len(prov["inputs"]["model"]) == 64, f"{m}: no model sha256 to compare bit for bit"


@pytest.mark.slow
def test_the_small_committed_row_verifies_from_a_fresh_clone(tmp_path):
    fresh = tmp_path / "clone"
    run(["git", "clone", "-q", str(REPO), str(fresh)], tmp_path)
    folder, row = SMALL
    res = run([tool("medref"), "verify", "--from", f"docs/results/{folder}", row], fresh, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert f"PASS: {row}" in out and "comparison: bits" in out, out[-3000:]
