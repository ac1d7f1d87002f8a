"""`snakemake --profile slurm all`, exactly as typed, on a two-run grid (tiny params) against the real local
SLURM cluster: light stages go through the SLURM executor plugin, each training through submitit as its own
SLURM job (the train rule is local), the two trainings run at the same time, and a second call has nothing
to do."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess

import pytest

from tests.pipeline_utils import env, make_scratch_repo, run, tool
from tests.test_slurm_dvc_queue import train_jobs
from tests.test_slurm_launcher import slurm_cluster  # noqa: F401  (session fixture: cluster up or skip)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_snakemake_profile_slurm_all_as_typed(tmp_path, slurm_cluster):  # noqa: F811
    # two runs of the study grid, long enough (40 steps) that two trainings started together overlap
    runs = ("qata_10pct", "qata_10pct-supervised")
    repo = make_scratch_repo(tmp_path / "repo", regimes=list(runs), overrides={"train": {"max_steps": 40}})
    assert (repo / "slurm").is_symlink(), "the ./slurm profile link is part of the repo"
    e = env()
    e.pop("MEDREF_LAUNCHER", None)  # the profile's `config: [launcher=slurm]` decides
    since = dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    first = run([tool("snakemake"), "--profile", "slurm", "all"], repo, env=e, timeout=900)
    out = first.stdout + first.stderr
    assert "slurm" in out.lower()
    for r in runs:
        metrics = json.loads((repo / f"metrics/{r}.json").read_text())
        assert 0.0 <= metrics["dice"] <= 1.0
        # training went through submitit: its job folder holds the SLURM job's log
        assert list((repo / f"runs/{r}/submitit").glob("*_log.out")), f"train of {r} did not go through submitit"
    jobs = train_jobs(since, runs)
    assert len(jobs) == 2, f"expected one SLURM training job per run, sacct has {jobs}"
    (_, s1, e1), (_, s2, e2) = jobs
    assert max(s1, s2) < min(e1, e2), f"the two training jobs did not run at the same time: {jobs}"
    # the light stages ran as SLURM jobs (the plugin logs each submission; it deletes the job logs
    # of successful jobs afterwards)
    for rule in ("download", "preprocess", "pseudolabel", "split", "eval", "report"):
        assert re.search(rf"submitted with SLURM jobid \d+ \(log: \S*rule_{rule}/", out), f"{rule} was not a SLURM job"
    assert "rule_train/" not in out, "train must be a local rule (submitit owns GPU submission)"
    second = run([tool("snakemake"), "--profile", "slurm", "all"], repo, env=e, timeout=300)
    assert "Nothing to be done" in second.stdout + second.stderr
    squeue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True)
    assert not any(f"medref-train-{r}" in squeue.stdout for r in runs), "a training job was left in the queue"
