"""The whole chain under both engines, on tiny synthetic data, in scratch copies of the repo.

The grid is a two-seed mini study: qata 10 % x {semi_medref, supervised, semi_medref-no_posaug} x seeds {0, 1}.

- `dvc repro eval@qata_10pct` runs exactly that chain, and trains Semi-MedRef; a second call runs nothing;
- `dvc repro study@qata` aggregates the four runs; Snakemake builds the same study, byte for byte;
- editing one variant's override (then `medref grid`) re-runs only that variant's runs (DVC and Snakemake);
- `snakemake --profile local all` builds byte-identical outputs; then `snakemake -n` has nothing to do;
- DVC accepts Snakemake-built outputs with `dvc commit -f` without recomputing, and Snakemake
  accepts DVC-built outputs after `snakemake --touch` while still noticing a later params change.
"""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.pipeline_utils import make_scratch_repo, run, tool

pytestmark = pytest.mark.slow

# the study keeps the cross product of these runs' axes: 3 methods x 2 seeds
REGIMES = ["qata_10pct", "qata_10pct-supervised-s1", "qata_10pct-semi_medref-no_posaug"]
CHAIN_OUTS = [
    "data/raw/qata",
    "data/shards/qata",
    "data/labels/qata.parquet",
    "data/splits/qata_10pct.json",
    "models/qata_10pct",
    "metrics/qata_10pct.json",
    "eval/qata_10pct",
]
STUDY_OUTS = ["studies/qata.json", "studies/qata", "models/qata_10pct-supervised-s1", "metrics/qata_10pct-s1.json"]


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
    assert metrics["method"] == "semi_medref", "qata_10pct is the headline: Semi-MedRef at 10 %"
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["dice_global"] <= 1.0
    again = run([tool("dvc"), "repro", "eval@qata_10pct"], dvc_repo)
    assert ran_stages(again.stdout) == [], again.stdout
    assert not (dvc_repo / "models/qata_10pct-supervised").exists(), "repro of one run built another"


def test_dvc_study_of_two_seeds(dvc_repo):
    out = run([tool("dvc"), "repro", "study@qata"], dvc_repo)
    assert {"train@qata_10pct-s1", "train@qata_10pct-supervised", "train@qata_10pct-supervised-s1",
            "study@qata"} <= set(ran_stages(out.stdout)), out.stdout
    assert "train@qata_10pct" not in ran_stages(out.stdout), "the headline run was cached already"
    res = json.loads((dvc_repo / "studies/qata.json").read_text())
    assert res["seeds"] == [0, 1] and res["methods"] == ["semi_medref", "supervised", "semi_medref-no_posaug"]
    abl = next(a for a in res["ablations"] if a["variant"] == "semi_medref-no_posaug")
    assert abl["against"] == "semi_medref" and abl["dice"]["n"] == 2
    # the aggregate is recomputed here from the four metrics files the runs wrote
    dice = {(m, s): json.loads((dvc_repo / f"metrics/{n}.json").read_text())["dice"]
            for m, s, n in [("semi_medref", 0, "qata_10pct"), ("semi_medref", 1, "qata_10pct-s1"),
                            ("supervised", 0, "qata_10pct-supervised"), ("supervised", 1, "qata_10pct-supervised-s1")]}
    cell = res["table"]["semi_medref"]["0.1"]["dice"]
    assert cell["n"] == 2 and abs(cell["mean"] - (dice["semi_medref", 0] + dice["semi_medref", 1]) / 2) < 1e-12
    delta = next(d for d in res["deltas"] if d["method"] == "semi_medref" and d["kind"] == "baseline")["dice"]
    assert delta["deltas"] == [dice["semi_medref", s] - dice["supervised", s] for s in (0, 1)]
    assert (dvc_repo / "studies/qata/dice_vs_fraction.png").stat().st_size > 0


def _snakemake_jobs(stdout: str, rule: str) -> set[str]:
    """Wildcard values of the jobs of ``rule`` in a ``snakemake -n`` listing."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:\n)", stdout)
    return {m.group(1) for b in blocks if re.match(rf"(?:local)?rule {rule}:\n", b)
            for m in [re.search(r"wildcards: \w+=(\S+)", b)] if m}


def test_one_variant_override_reruns_only_its_runs(dvc_repo, tmp_path):
    """Both engines: a changed train override of one variant re-runs its two runs (and the study), nothing else."""
    run([tool("dvc"), "repro", "study@qata"], dvc_repo)
    clone = tmp_path / "variant"
    run(["cp", "-a", str(dvc_repo), str(clone)], tmp_path)
    run([tool("snakemake"), "--cores", "1", "--touch", "--forceall", "studies/qata.json"], clone)
    assert "Nothing to be done" in "".join(run([tool("snakemake"), "-n", "studies/qata.json"], clone).stdout)
    p = yaml.safe_load((clone / "params.yaml").read_text())
    p["variants"]["semi_medref-no_posaug"]["train"]["posaug"]["p"] = 0.25
    (clone / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    # DVC read its stages from the grid file, now stale: the stage commands refuse it
    refused = run([tool("dvc"), "repro", "study@qata"], clone, check=False)
    assert refused.returncode != 0 and "workflow/grid.yaml is stale" in refused.stdout + refused.stderr
    run([tool("medref"), "grid"], clone)
    changed = set(json.loads(run([tool("dvc"), "status", "--json", "--with-deps", "study@qata"], clone).stdout))
    runs = {"qata_10pct-semi_medref-no_posaug", "qata_10pct-semi_medref-no_posaug-s1"}
    assert {s for s in changed if s.startswith(("train@", "eval@"))} == {f"{k}@{r}" for k in ("train", "eval")
                                                                         for r in runs}, changed
    assert not any(s.startswith(("download@", "preprocess@", "pseudolabel@", "split@")) for s in changed), changed
    dry = run([tool("snakemake"), "-n", "studies/qata.json"], clone)
    assert _snakemake_jobs(dry.stdout, "train") == runs, dry.stdout


def test_snakemake_same_bytes_and_noop(dvc_repo, tmp_path):
    # a clone of the same commit: the provenance blocks name the commit, so it must match
    smk = tmp_path / "smk"
    run(["git", "clone", "-q", str(dvc_repo), str(smk)], tmp_path)
    run([tool("snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", "all"], smk)
    run([tool("dvc"), "repro"], dvc_repo)
    for out in CHAIN_OUTS + STUDY_OUTS:
        assert same_tree(dvc_repo / out, smk / out) == [], f"{out} differs between DVC and Snakemake"
    dry = run([tool("snakemake"), "-n", "all"], smk)
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # DVC records the Snakemake-built outputs without recomputing them. DVC's report stage depends on the whole
    # models/ folder (the runs' DVCLive logs; DVC cannot glob them), which also holds pretrain_text's towers: `all`
    # does not build those (no demo run reads them, and on a SLURM node they would take a CPU from the trainings),
    # so build them first, as a Snakemake user moving to DVC would.
    run([tool("snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", "pretrain_text_all"], smk)
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
