"""A published study row re-checks from a fresh clone in one command: ``medref verify --from <folder> <run>``.

    .venv/bin/python -m pytest -q tests/test_publish_verify.py

A tiny mosmed study (one supervised run, portable numerics) runs in a scratch repository on branch main;
tools/publish_study.py publishes it (and refuses a commit that is not in main); the folder is committed, the
repository is cloned fresh, and ``medref verify --from`` re-runs the row there and passes, saying which
comparison it made. A folder whose commit main lacks gets an error that says so.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.pipeline_utils import REPO, make_scratch_repo, run, tool

pytestmark = pytest.mark.slow
RUN, STUDY = "mosmed_25pct", "mosmed"
DEST = "docs/results/mosmed-tiny"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    origin = make_scratch_repo(tmp_path_factory.mktemp("pub") / "origin", regimes=[RUN],
                               overrides={"base": {"cpu_numerics": "portable"}})
    run([tool("dvc"), "repro", f"study@{STUDY}"], origin)
    publish = [sys.executable, str(REPO / "tools/publish_study.py"), str(origin), STUDY]

    # a commit that is not in main is refused
    run(["git", "checkout", "-q", "-b", "side"], origin)
    run(["git", "commit", "-q", "--allow-empty", "-m", "side work"], origin)
    res = run([*publish, str(origin / DEST)], origin, check=False)
    assert res.returncode != 0 and "is not in main" in res.stderr, res.stderr
    assert not (origin / DEST).exists()
    run(["git", "checkout", "-q", "main"], origin)

    run([*publish, str(origin / DEST)], origin)
    run(["git", "add", DEST], origin)
    run(["git", "commit", "-q", "-m", "publish the tiny mosmed study"], origin)
    return origin


def test_publish_records_the_commit_of_main_and_the_numerics(published):
    folder = published / DEST
    record = json.loads((folder / "publish.json").read_text())
    commit = run(["git", "rev-parse", "HEAD~1"], published).stdout.strip()
    assert record["commit"] == commit and record["cpu_numerics"] == ["portable"]
    text = (folder / "PROVENANCE.md").read_text()
    assert f"`{commit}`" in text and "CPU numerics: portable" in text
    assert f"medref verify --from {folder} {RUN}" in text
    prov = json.loads((folder / "metrics" / f"{RUN}.json").read_text())["provenance"]
    assert prov["numerics"]["mode"] == "portable" and len(prov["inputs"]["model"]) == 64


def test_verify_from_a_fresh_clone_passes(published, tmp_path):
    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(published), str(fresh)], tmp_path)
    res = run([tool("medref"), "verify", "--from", DEST, RUN], fresh, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert f"PASS: {RUN}" in out and "comparison: bits" in out, out[-3000:]


def test_verify_from_a_folder_whose_commit_main_lacks_says_so(published, tmp_path):
    folder = tmp_path / "old"
    run(["cp", "-r", str(published / DEST), str(folder)], tmp_path)
    (folder / "publish.json").unlink()  # as the folders published before it existed
    m = folder / "metrics" / f"{RUN}.json"
    doc = json.loads(m.read_text())
    doc["provenance"]["git"]["commit"] = "a192471fd1e8f95336cca11946cc7da9cc902e2d"
    m.write_text(json.dumps(doc))
    (folder / "PROVENANCE.md").write_text("no code tree recorded\n")
    res = run([tool("medref"), "verify", "--from", str(folder), RUN], published, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "a192471fd1e8 is not in main" in res.stderr and "re-publish" in res.stderr, res.stderr
    assert yaml.safe_load((folder / "params.yaml").read_text())["base"]["cpu_numerics"] == "portable"


@pytest.mark.parametrize("recorded", ["portable", "native"])
def test_verify_from_says_which_comparison_for_a_result_from_another_cpu_kind(published, tmp_path, recorded):
    """One machine cannot stand in for another: the recorded CPU kind is rewritten, so verify takes the path it
    takes on another machine (portable: the bits, without the provenance's CPU name; native: the metrics within
    the tolerance)."""
    folder = tmp_path / "other-cpu"
    run(["cp", "-r", str(published / DEST), str(folder)], tmp_path)
    m = folder / "metrics" / f"{RUN}.json"
    doc = json.loads(m.read_text())
    doc["provenance"]["cpu"] = "GenuineIntel family 6 model 85 (Intel Xeon), x86_64, avx512"
    if recorded == "native":
        # recorded as if a user's own ONEDNN_MAX_CPU_ISA had won over portable's: a native result (the params, hence
        # dvc.lock, stay as recorded; only the comparison changes)
        doc["provenance"]["numerics"]["caps"]["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE"
    m.write_text(json.dumps(doc))
    res = run([tool("medref"), "verify", "--from", str(folder), RUN], published, check=False)
    out = res.stdout + res.stderr
    if recorded == "portable":
        assert res.returncode == 0 and "comparison: bits-portable" in out and "model.pt sha256" in out, out[-4000:]
    else:
        assert res.returncode == 0 and "comparison: metrics-native" in out, out[-4000:]
        assert "compared metrics within 0.02" in out, out[-4000:]


def test_publish_refuses_outputs_made_at_another_commit(published, tmp_path):
    """After the publishing commit, HEAD is a newer commit of main whose data stages DVC did not re-run: their
    outputs still name the older commit, so a verify at HEAD could not reproduce their hashes; publish says so."""
    res = run([sys.executable, str(REPO / "tools/publish_study.py"), str(published), STUDY, str(tmp_path / "again")],
              published, check=False)
    assert res.returncode != 0 and "outputs made at another commit" in res.stderr, res.stderr
    assert "pseudolabel@mosmed" in res.stderr and "dvc repro --force -s" in res.stderr, res.stderr
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("code", ["as_recorded", "changed"])
def test_verify_from_a_run_made_in_a_dirty_tree_lets_the_code_hashes_judge(published, tmp_path, code):
    """A study runs with its own params.yaml and grid.yaml, which leave the tree dirty; that alone is no reason to
    refuse. An uncommitted change to code the chain imports shows as a code dep whose hash differs from dvc.lock:
    verify fails and names it."""
    folder = tmp_path / "dirty"
    run(["cp", "-r", str(published / DEST), str(folder)], tmp_path)
    m = folder / "metrics" / f"{RUN}.json"
    doc = json.loads(m.read_text())
    doc["provenance"]["git"]["dirty"] = True
    m.write_text(json.dumps(doc))
    dep = None
    if code == "changed":
        lock = yaml.safe_load((folder / "dvc.lock").read_text())
        train = lock["stages"][f"train@{RUN}"]
        dep = next(d for d in train["deps"] if d["path"].startswith("pipeline_src/train/"))
        dep["md5"] = "0" * 32
        (folder / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    res = run([tool("medref"), "verify", "--from", str(folder), RUN], published, check=False)
    out = res.stdout + res.stderr
    assert "working tree had uncommitted changes" in out, out[-4000:]
    if code == "as_recorded":
        assert res.returncode == 0 and f"PASS: {RUN}" in out, out[-4000:]
    else:
        assert res.returncode != 0 and f"dep {dep['path']} differs" in out, out[-4000:]
