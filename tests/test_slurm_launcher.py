"""Integration tests of the submitit launcher on a real SLURM cluster (tests/slurm/up.sh).

    tests/slurm/up.sh && .venv/bin/pytest -m slurm tests/test_slurm_launcher.py -s

Skipped with a reason when no cluster answers, except under CI=true where a missing cluster is
an error (the fixture then tries tests/slurm/up.sh itself). The training callable is
``pipeline_src.train.train.run`` when it exists and tiny synthetic data can be built, else a
stand-in with the same signature and the same checkpoint/resume contract (``stub_run`` below):
a seeded, step-by-step computation that writes ``run_dir/last.json`` every step, resumes from
it, and writes its result to ``out_dir`` atomically.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUB_TARGET = f"{Path(__file__).resolve()}:stub_run"
pytestmark = pytest.mark.slurm
# Every wait below is for an event (a checkpoint file, the process exit, the job leaving squeue);
# the bound only catches a hang. A loaded CI machine (load ~4 on 2 cores) ran these jobs ~3x
# slower than an idle one, so the bound is minutes, never the seconds an idle run takes.
HANG_S = 600


# ---- stand-in trainer (also imported by file path inside the SLURM job) ------------------


def stub_run(params, regime, *, shards_dir, labels_file, split_file, out_dir, run_dir, resume=True):
    steps = int(os.environ.get("MEDREF_STUB_STEPS", "20"))
    sleep = float(os.environ.get("MEDREF_STUB_SLEEP", "0.05"))
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "last.json"
    state = {"step": 0, "x": params.base.seed, "starts": []}
    if resume and ckpt.exists():
        state = json.loads(ckpt.read_text())
    state["starts"].append(
        {"step": state["step"], "restart": os.environ.get("SLURM_RESTART_COUNT", "0"), "t": time.time()}
    )
    print(f"stub: start at step {state['step']} job={os.environ.get('SLURM_JOB_ID')}", flush=True)
    while state["step"] < steps:
        state["x"] = (state["x"] * 6364136223846793005 + 1442695040888963407) % 2**64
        state["step"] += 1
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(ckpt)
        print(f"stub: step {state['step']}/{steps}", flush=True)
        time.sleep(sleep)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.json.tmp"
    tmp.write_text(json.dumps({"regime": regime, "x": state["x"], "steps": steps}, sort_keys=True))
    tmp.replace(out_dir / "model.json")
    if os.environ.get("MEDREF_STUB_FAIL"):
        raise ValueError("stub: asked to fail")
    return {"x": state["x"], "starts": state["starts"]}


# ---- cluster fixture ---------------------------------------------------------------------


def _cluster_ok() -> tuple[bool, str]:
    try:
        s = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=HANG_S)
        a = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=HANG_S)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        return False, f"no SLURM client ({e})"
    if s.returncode != 0 or not s.stdout.split():
        return False, f"sinfo failed: {s.stderr.strip() or 'no nodes'}"
    if not set(s.stdout.split()) & {"idle", "mixed", "allocated"}:
        return False, f"no usable node (sinfo: {s.stdout.split()})"
    if a.returncode != 0:
        return False, f"sacct failed (slurmdbd needed): {a.stderr.strip()}"
    return True, ""


@pytest.fixture(scope="session")
def slurm_cluster():
    ok, why = _cluster_ok()
    if not ok and os.environ.get("CI") == "true":
        # CI normally runs tests/slurm/up.sh before `make test`; start it here if it did not
        r = subprocess.run(["bash", str(REPO / "tests/slurm/up.sh")], env={**os.environ, "INSTALL": "1"})
        ok, why = _cluster_ok()
        if not ok:
            pytest.fail(f"CI=true but the SLURM test cluster is not usable (up.sh rc {r.returncode}): {why}")
    if not ok:
        pytest.skip(f"SLURM test cluster not running ({why}); start it with tests/slurm/up.sh (INSTALL=1)")


@pytest.fixture
def stub(monkeypatch):
    from pipeline_src import launcher

    monkeypatch.setattr(launcher, "TRAIN", launcher.Trainer(STUB_TARGET))  # the CLI's default, as _CLI sets it
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("MEDREF_STUB_FAIL", raising=False)
    monkeypatch.setenv("MEDREF_STUB_STEPS", "20")
    monkeypatch.setenv("MEDREF_STUB_SLEEP", "0.05")
    return launcher


@pytest.fixture
def ws(tmp_path):
    """A workspace: params file + the five stage paths (the stand-in reads none of the inputs)."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    paths = {
        "shards_dir": tmp_path / "data/shards/qata",
        "labels_file": tmp_path / "data/labels/qata.parquet",
        "split_file": tmp_path / "data/splits/qata_10pct.json",
    }
    return params_file, paths


def _launch(launcher, params_file, paths, root: Path, which: str, **kw):
    from pipeline_src import params as params_mod

    return launcher.launch(
        params_mod.load(params_file),
        "qata_10pct",
        **paths,
        out_dir=root / "models/qata_10pct",
        run_dir=root / "runs/qata_10pct",
        launcher=which,
        resume=True,
        params_file=params_file,
        **kw,
    )


def _squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


# ---- tests -----------------------------------------------------------------------------


def test_submitit_round_trip_matches_local(slurm_cluster, stub, ws, tmp_path, capsys):
    params_file, paths = ws
    local = _launch(stub, params_file, paths, tmp_path / "local", "local")
    t0 = time.monotonic()
    remote = _launch(stub, params_file, paths, tmp_path / "slurm", "slurm")
    dt = time.monotonic() - t0
    out = capsys.readouterr()
    assert remote["x"] == local["x"]
    a = (tmp_path / "local/models/qata_10pct/model.json").read_bytes()
    b = (tmp_path / "slurm/models/qata_10pct/model.json").read_bytes()
    assert a == b, "tracked output differs between local and SLURM"
    # ran as a SLURM job with a (fake) GPU, and its log was streamed to us
    assert "stub: step 20/20" in out.err and "submitted SLURM job" in out.err
    sub = tmp_path / "slurm/runs/qata_10pct/submitit"
    job_id = json.loads((sub / "job.json").read_text())["job_id"]
    assert f"job={job_id}" in out.err
    assert "#SBATCH --gpus-per-node=1" in (sub / f"{job_id}_submission.sh").read_text()
    print(f"\n[timing] submitit round trip (20 steps x 0.05 s of work): {dt:.2f} s", file=sys.__stderr__)


def test_job_failure_surfaces_traceback(slurm_cluster, stub, ws, tmp_path, monkeypatch):
    params_file, paths = ws
    monkeypatch.setenv("MEDREF_STUB_FAIL", "1")
    monkeypatch.setenv("MEDREF_STUB_STEPS", "2")
    with pytest.raises(stub.SlurmJobError) as e:
        _launch(stub, params_file, paths, tmp_path, "slurm")
    msg = str(e.value)
    assert "failed" in msg and "ValueError: stub: asked to fail" in msg and "Traceback" in msg


# The child stands for `medref train` in a terminal, where Ctrl-C raises KeyboardInterrupt. A process started
# from a non-interactive shell's background job inherits SIGINT as *ignored* (CI drivers often start runs that
# way), and Python then never raises KeyboardInterrupt: restore the terminal's behaviour explicitly.
_CLI = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from pipeline_src import launcher
launcher.TRAIN = launcher.Trainer({target!r})
from pipeline_src import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_cancels_job(slurm_cluster, stub, ws, tmp_path, sig):
    params_file, paths = ws
    run_dir = tmp_path / "runs/qata_10pct"
    env = {**os.environ, "MEDREF_STUB_STEPS": "600", "MEDREF_STUB_SLEEP": "0.1"}
    env.pop("SLURM_JOB_ID", None)
    args = ["--params", str(params_file), "train", "qata_10pct", "--launcher", "slurm"]
    args += ["--shards", str(paths["shards_dir"]), "--labels", str(paths["labels_file"])]
    args += ["--split", str(paths["split_file"]), "--out", str(tmp_path / "models/q"), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI.format(target=STUB_TARGET), *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ckpt = run_dir / "last.json"
        end = time.monotonic() + HANG_S
        while not ckpt.exists():  # the job is running and training
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < end, f"job did not start in {HANG_S} s"
            time.sleep(0.1)
        job_id = json.loads((run_dir / "submitit/job.json").read_text())["job_id"]
        assert job_id in _squeue_ids()
        proc.send_signal(sig)
        rc = proc.wait(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert rc == 128 + sig, log
    assert f"cancelling SLURM job {job_id}" in log
    assert f"SLURM job {job_id} cancelled" in log
    state = subprocess.run(["sacct", "-n", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    assert "CANCELLED" in state.stdout
    end = time.monotonic() + HANG_S  # SLURM kills the processes after KillWait (2 s on the test cluster)
    while job_id in _squeue_ids():
        assert time.monotonic() < end, "orphan job left in squeue"
        time.sleep(0.2)
    assert not (tmp_path / "models/q/model.json").exists()


def test_requeue_resumes_from_checkpoint(slurm_cluster, stub, ws, tmp_path, monkeypatch, capsys):
    params_file, paths = ws
    monkeypatch.setenv("MEDREF_STUB_STEPS", "60")
    monkeypatch.setenv("MEDREF_STUB_SLEEP", "0.05")
    local = _launch(stub, params_file, paths, tmp_path / "local", "local")

    root = tmp_path / "slurm"
    run_dir = root / "runs/qata_10pct"
    job_paths = {**paths, "out_dir": root / "models/qata_10pct", "run_dir": run_dir}
    settings = stub.load_cluster_config(REPO / "workflow/profiles/slurm/cluster.yaml").slurm
    sl = stub.SlurmLauncher(settings)
    job = sl.submit("qata_10pct", params_file, job_paths, resume=True)
    ckpt = run_dir / "last.json"
    end = time.monotonic() + HANG_S
    while not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 10):
        assert time.monotonic() < end, "job did not reach step 10"
        time.sleep(0.05)
    t_int = time.time()
    job._interrupt()  # preemption: SIGTERM + USR2 -> checkpoint() -> requeue
    sl.wait(job)
    remote = sl.collect(job)
    starts = remote["starts"]
    assert len(starts) == 2, starts
    assert starts[0]["step"] == 0 and starts[1]["step"] >= 10, "the requeued job did not resume"
    assert starts[1]["restart"] == "1"
    assert remote["x"] == local["x"]
    assert (root / "models/qata_10pct/model.json").read_bytes() == (
        tmp_path / "local/models/qata_10pct/model.json"
    ).read_bytes()
    print(f"\n[timing] requeue: interrupt -> resumed start {starts[1]['t'] - t_int:.1f} s", file=sys.__stderr__)


@pytest.mark.slow
def test_real_training_same_weights_as_local(slurm_cluster, ws, tmp_path, monkeypatch):
    """The production path: pipeline_src.train.train.run, local vs submitit, bit-identical weights on CPU."""
    import importlib.util

    import torch
    import yaml

    if importlib.util.find_spec("pipeline_src.train.train") is None:
        pytest.skip("pipeline_src.train.train not written yet")
    if importlib.util.find_spec("pipeline_src.data.dataset") is None:
        pytest.skip("pipeline_src.data.dataset not written yet (the job cannot use the test-only stand-in)")
    from pipeline_src import launcher
    from pipeline_src import params as params_mod
    from tests.test_train import SMALL_MODEL
    from tests.train_fixtures import make_dataset

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("MEDREF_PROGRESS", "0")
    data = make_dataset(tmp_path / "tiny")
    raw = params_mod.load_raw(REPO / "params.yaml")
    train = {"model": SMALL_MODEL, "epochs": 1, "batch_size": 6, "val_max": 4, "checkpoint_every": 2, "max_steps": 3}
    raw["regimes"]["tiny"] = {
        "dataset": next(iter(raw["datasets"])),
        "fraction": 0.25,
        "method": "supervised",
        "train": train,
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    p = params_mod.load(params_file)
    dirs = {}
    for which in ("local", "slurm"):
        root = tmp_path / which
        t0 = time.monotonic()
        launcher.launch(
            p,
            "tiny",
            **data,
            out_dir=root / "model",
            run_dir=root / "run",
            launcher=which,
            resume=True,
            params_file=params_file,
        )
        print(f"\n[timing] real train.run via {which}: {time.monotonic() - t0:.1f} s", file=sys.__stderr__)
        dirs[which] = root / "model"
    a = torch.load(dirs["local"] / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(dirs["slurm"] / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ between local and SLURM runs"
    assert (dirs["local"] / "config.json").read_bytes() == (dirs["slurm"] / "config.json").read_bytes()
