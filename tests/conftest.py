"""Shared fixtures.

Real data lives at ../shared/data relative to the repo root. Tests that need it skip with a
reason when it is absent, except under CI=true, where a missing fixture is an error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
# the real QaTa pairs of the ``mini`` release (tests of ingest and of bad input)
MINI_TRAIN = ("covid_1", "covid_100", "covid_1000")
MINI_VALID = ("covid_1010",)


@pytest.fixture(autouse=True)
def _cwd_is_restored():
    """Fail a test that leaves the process in another directory.

    Passing tests' tmp_path folders are deleted (tmp_path_retention_policy), so a leaked
    chdir into one would leave every later test in a deleted directory.
    """
    before = os.getcwd()
    yield
    try:
        after = os.getcwd()
    except FileNotFoundError:
        after = "<a deleted directory>"
    if after != before:
        os.chdir(before)
        pytest.fail(f"the test left the working directory at {after} (was {before})")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "qata_sample").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the real data fixture is missing at {SHARED_DATA}")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def mini(tmp_path: Path, shared_data: Path) -> Path:
    """An SGSeg-layout QaTa release of 3 train + 1 valid real pairs, with their text rows."""
    q, root = shared_data / "qata_sample", tmp_path / "src"
    rows = ["Image,Description\n"]
    keys = {f"mask_{n}.png" for n in MINI_TRAIN + MINI_VALID}
    rows += [ln for ln in (q / "text" / "train.csv").read_text().splitlines(keepends=True)
             if ln.split(",", 1)[0] in keys]
    assert len(rows) == 5
    for split, names in (("train", MINI_TRAIN), ("valid", MINI_VALID)):
        for sub, pre in (("images", ""), ("masks", "mask_")):
            (root / split / sub).mkdir(parents=True)
            for n in names:
                shutil.copyfile(q / "train" / sub / f"{pre}{n}.png", root / split / sub / f"{pre}{n}.png")
    (root / "text").mkdir()
    (root / "text" / "train.csv").write_text("".join(rows))
    return root


@pytest.fixture(scope="session")
def origin(tmp_path_factory) -> Path:
    """A scratch repo whose qata_10pct chain ran (``dvc repro eval@qata_10pct``, dvc.lock committed): the origin of
    the sharing round trips and of pull-then-predict. Slow (minutes), so built once per session."""
    from tests.pipeline_utils import make_scratch_repo, run, tool

    regime = "qata_10pct"
    repo = make_scratch_repo(tmp_path_factory.mktemp("origin") / "repo", regimes=[regime])
    run([tool("dvc"), "repro", f"eval@{regime}"], repo)
    run(["git", "add", "dvc.lock"], repo)
    run(["git", "commit", "-q", "-m", "record results"], repo)
    return repo
