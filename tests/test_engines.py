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
from pipeline_src.grid import grid_text

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def dvc_stages() -> dict[str, dict]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out = {}
    with Repo(str(REPO)) as repo:
        for st in repo.index.stages:
            # params (from params.yaml, and a run's spec from workflow/grid.yaml) are compared in their own test
            deps = {d.def_path for d in st.deps if not isinstance(d, ParamsDependency)}
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


def test_grid_file_is_current():
    """DVC's stages come from workflow/grid.yaml; it must be what `medref grid` writes for params.yaml."""
    assert (REPO / "workflow/grid.yaml").read_text() == grid_text(P.load_raw(REPO / "params.yaml")), (
        "workflow/grid.yaml is stale: run `medref grid`")


def test_headline_name_is_semi_medref(both):
    dvc, _ = both
    params = P.load(REPO / "params.yaml")
    r = params.regime("qata_10pct")
    assert (r.method, r.fraction, r.seed) == ("semi_medref", 0.10, 0)
    assert dvc["train@qata_10pct"]["deps"] >= {"data/splits/qata_10pct.json"}
    assert dvc["train@qata_10pct-supervised"]["deps"] >= {"data/splits/qata_10pct.json"}, "paired: one split"


def test_weights_files_are_train_deps_in_both_engines(tmp_path):
    """A run that reads a weights file depends on it (so a replaced file re-runs training); others on the constant
    workflow/no-weights.txt. Checked on DVC's resolved stages and on Snakemake's dry-run of a scratch copy."""
    from tests.pipeline_utils import make_scratch_repo, run

    over = {"variants": {"supervised-pretrained": {"method": "supervised",
                                                   "train": {"model": {"image_weights": "weights/enc.safetensors"}}}},
            "studies": {"qata": {"methods": ["supervised", "semi_medref", "supervised-pretrained"]}}}
    repo = make_scratch_repo(tmp_path / "repo", overrides=over, regimes=["qata_10pct", "qata_10pct-supervised",
                                                                        "qata_10pct-supervised-pretrained"])
    (repo / "weights").mkdir()
    (repo / "weights/enc.safetensors").write_bytes(b"stand-in: only hashed here")
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        deps = {st.name: {d.def_path for d in st.deps} for st in r.index.stages}
    assert "weights/enc.safetensors" in deps["train@qata_10pct-supervised-pretrained"]
    assert "weights/enc.safetensors" not in deps["train@qata_10pct-supervised"]
    assert "workflow/no-weights.txt" in deps["train@qata_10pct-supervised"]
    dry = run([str(BIN / "snakemake"), "-n", "--forceall", "--cores", "1", "models/qata_10pct-supervised-pretrained"],
              repo)
    block = dry.stdout[dry.stdout.index("rule train:"):]
    assert "weights/enc.safetensors" in block.split("output:")[0]
