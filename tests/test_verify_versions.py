"""verify refuses, before it re-runs, an environment whose versions differ from the recorded run's.

    .venv/bin/python -m pytest -q tests/test_verify_versions.py

Every output's provenance records the versions (Python, torch, numpy, ...), so a re-run under other ones could not
give the recorded bytes: verify says which differ instead of failing minutes later at the first output. Python is
recorded as major.minor, so a patch release (Debian 12's 3.11.2, pyenv's 3.11.7) changes no output.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys

from pipeline_src import provenance, verify
from tests.pipeline_utils import REPO

DEMO = REPO / "docs" / "results" / "qata-synthetic-demo"


def test_python_is_recorded_without_its_patch_release():
    assert provenance.versions()["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_this_environment_matches_its_own_versions():
    assert provenance.version_mismatch(provenance.versions()) == []


def test_a_recorded_patch_release_is_compared_with_this_interpreter():
    here = platform.python_version()
    assert provenance.version_mismatch({"python": here}) == []
    assert provenance.version_mismatch({"python": "3.11.999"}) == [f"python 3.11.999 -> {here}"]


def test_an_unknown_name_is_not_a_mismatch():
    # a record may name a library this version of medref no longer records; it cannot be checked here
    assert provenance.version_mismatch({"no-such-library": "1.0"}) == []


def test_verify_from_names_the_differing_version_before_it_re_runs(tmp_path):
    folder = tmp_path / "published"
    shutil.copytree(DEMO, folder)
    metrics = folder / "metrics" / "qata_10pct-supervised.json"
    doc = json.loads(metrics.read_text())
    real = doc["provenance"]["versions"]["torch"]
    doc["provenance"]["versions"]["torch"] = "0.0.1"
    metrics.write_text(json.dumps(doc))
    lines: list[str] = []
    assert verify.verify_from(folder, "qata_10pct-supervised", repo=REPO, log=lines.append) is False
    fail = [x for x in lines if x.startswith("FAIL")]
    assert len(fail) == 1 and f"torch 0.0.1 -> {real}" in fail[0], lines
    assert not any(x.startswith("re-running") for x in lines), "it must refuse before the re-run"
