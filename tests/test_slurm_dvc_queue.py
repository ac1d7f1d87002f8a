"""DVC users get parallel SLURM trainings too: ``MEDREF_LAUNCHER=slurm dvc queue start -j 2`` runs two queued
experiments at once, and each one's `medref train` is its own SLURM job (through submitit), the two running at
the same time on the local test cluster (2 fake GPUs).

    CI=true .venv/bin/python -m pytest -q tests/test_slurm_dvc_queue.py   # after tests/slurm/up.sh
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest

from tests.pipeline_utils import env, make_scratch_repo, run, tool
from tests.test_slurm_launcher import slurm_cluster  # noqa: F401  (session fixture: cluster up or skip)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def train_jobs(since: str, runs: tuple[str, ...] = ("qata_10pct",)) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """The completed SLURM training jobs of these runs since ``since``: (job id, start, end), from sacct."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-S", since, "--format=JobID,JobName,State,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        jid, name, state, start, end = line.split("|")
        if name in {f"medref-train-{r}" for r in runs} and state == "COMPLETED":
            jobs.append((jid, dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)))
    return jobs


def test_dvc_queue_runs_trainings_as_concurrent_slurm_jobs(tmp_path, slurm_cluster):  # noqa: F811
    # long enough (40 steps) that two trainings started together are still running together
    repo = make_scratch_repo(tmp_path / "repo", regimes=["qata_10pct"], overrides={"train": {"max_steps": 40}})
    e = {**env(), "MEDREF_LAUNCHER": "slurm"}
    # the data stages once in the workspace: both experiments restore them from the run cache
    run([tool("dvc"), "repro", "split@qata_10pct", "pseudolabel@qata"], repo, env=e, timeout=600)
    since = dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    for lr in ("0.001", "0.002"):
        run([tool("dvc"), "exp", "run", "--queue", "-S", f"train.lr={lr}", "eval@qata_10pct"], repo, env=e)
    # not through a pipe: `dvc queue start` leaves its workers holding its stdout, and a worker that stays up
    # after the queue drains kept a captured pipe open forever (a local CI run hung here)
    with open(tmp_path / "queue-start.log", "w") as log:
        subprocess.run([tool("dvc"), "queue", "start", "-j", "2"], cwd=repo, env=e, stdout=log,
                       stderr=subprocess.STDOUT, check=True, timeout=120)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run([tool("dvc"), "queue", "status"], repo, env=e).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    else:
        pytest.fail(f"the queue did not finish in 15 min:\n{status}")
    assert status.count("Success") == 2, status
    shown = json.loads(run([tool("dvc"), "exp", "show", "--json"], repo, env=e).stdout)
    assert "0.002" in json.dumps(shown) and "0.001" in json.dumps(shown)
    jobs = train_jobs(since)
    assert len(jobs) == 2, f"expected one SLURM training job per experiment, sacct has {jobs}"
    (_, s1, e1), (_, s2, e2) = jobs
    assert max(s1, s2) < min(e1, e2), f"the two training jobs did not overlap in time: {jobs}"
