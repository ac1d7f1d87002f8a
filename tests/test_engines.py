"""dvc.yaml and the Snakemake rules describe the same stages: same command, deps and outs.

DVC's side is read through its own resolver (``Repo.index.stages``: foreach expanded); the
Snakemake side from a forced dry-run of ``all`` (every job, its input/output and command).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_src import params as P

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def dvc_stages() -> dict[str, dict]:
    from dvc.repo import Repo

    out = {}
    with Repo(str(REPO)) as repo:
        for st in repo.index.stages:
            deps = {d.def_path for d in st.deps if not d.def_path.endswith("params.yaml")}
            out[st.addressing] = {"cmd": st.cmd.strip(), "deps": deps, "outs": {o.def_path for o in st.outs}}
    return out


def snakemake_jobs() -> dict[str, dict]:
    res = subprocess.run(
        # pretrain_text is not part of `all`: its target rule brings its jobs into the dry-run
        [str(BIN / "snakemake"), "-n", "--forceall", "-p", "--nocolor", "--cores", "1", "all", "pretrain_text_all"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout + res.stderr
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        if not m or m.group(1) in ("all", "pretrain_text_all"):
            continue
        fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block, flags=re.M))
        wc = dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if "=" in kv)
        name = m.group(1) + ("@" + next(iter(wc.values())) if wc else "")
        cmd = re.search(r"^(?:Shell command: )?(medref .*?)(?: > \S+ 2>&1)?$", block, flags=re.M)
        jobs[name] = {
            "cmd": cmd.group(1).strip() if cmd else None,
            "deps": set(fields.get("input", "").split(", ")) - {""},
            "outs": set(fields.get("output", "").split(", ")) - {""},
        }
    return jobs


@pytest.fixture(scope="module")
def both():
    return dvc_stages(), snakemake_jobs()


def test_same_stage_set(both):
    dvc, smk = both
    assert set(dvc) == set(smk)
    params = P.load(REPO / "params.yaml")
    assert {f"eval@{r}" for r in params.regimes} <= set(dvc)


def test_same_commands(both):
    dvc, smk = both
    for name, st in dvc.items():
        assert smk[name]["cmd"] == st["cmd"], name


def covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


def test_same_deps_and_outs(both):
    """Outs are identical; deps too, except that DVC may name a folder (``metrics``) whose files
    Snakemake lists one by one: every Snakemake input must lie in a DVC dep and every DVC dep
    must hold at least one Snakemake input."""
    dvc, smk = both
    for name, st in dvc.items():
        assert smk[name]["outs"] == st["outs"], f"{name}: outs differ"
        uncovered = {p for p in smk[name]["deps"] if not any(covers(d, p) for d in st["deps"])}
        unused = {d for d in st["deps"] if not any(covers(d, p) for p in smk[name]["deps"])}
        assert not uncovered and not unused, f"{name}: only in Snakemake {uncovered}, only in DVC {unused}"
