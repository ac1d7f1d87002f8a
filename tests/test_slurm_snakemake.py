"""`snakemake --profile slurm all`, exactly as typed, on the demo pipeline (tiny params) against the
real local SLURM cluster: light stages go through the SLURM executor plugin, training through
submitit (the train rule is local), and a second call has nothing to do."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.pipeline_utils import env, make_scratch_repo, run, tool
from tests.test_slurm_launcher import slurm_cluster  # noqa: F401  (session fixture: cluster up or skip)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_snakemake_profile_slurm_all_as_typed(tmp_path, slurm_cluster):  # noqa: F811
    repo = make_scratch_repo(tmp_path / "repo", regimes=["qata_10pct"])
    assert (repo / "slurm").is_symlink(), "the ./slurm profile link is part of the repo"
    e = env()
    e.pop("MEDREF_LAUNCHER", None)  # the profile's `config: [launcher=slurm]` decides
    first = run([tool("snakemake"), "--profile", "slurm", "all"], repo, env=e, timeout=900)
    out = first.stdout + first.stderr
    assert "slurm" in out.lower()
    metrics = json.loads((repo / "metrics/qata_10pct.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    # training went through submitit: its job folder holds the SLURM job's log
    assert list((repo / "runs/qata_10pct/submitit").glob("*_log.out")), "train did not go through submitit"
    # the light stages ran as SLURM jobs (the plugin logs each submission; it deletes the job logs
    # of successful jobs afterwards)
    for rule in ("download", "preprocess", "pseudolabel", "split", "eval", "report"):
        assert re.search(rf"submitted with SLURM jobid \d+ \(log: \S*rule_{rule}/", out), f"{rule} was not a SLURM job"
    assert "rule_train/" not in out, "train must be a local rule (submitit owns GPU submission)"
    second = run([tool("snakemake"), "--profile", "slurm", "all"], repo, env=e, timeout=300)
    assert "Nothing to be done" in second.stdout + second.stderr
    squeue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True)
    assert "medref-train-qata_10pct" not in squeue.stdout, "a training job was left in the queue"
