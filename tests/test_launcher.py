"""Unit tests of pipeline_src/launcher.py that need no cluster (choice, config, callable).

.venv/bin/pytest tests/test_launcher.py
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from pipeline_src import launcher
from pipeline_src.errors import MedrefError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(launcher.LAUNCHER_ENV, raising=False)
    monkeypatch.delenv(launcher.CLUSTER_CONFIG_ENV, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.chdir(tmp_path)  # no workflow/profiles/slurm/cluster.yaml here
    return tmp_path


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    return p


def test_resolution_order(clean_env, monkeypatch):
    assert launcher.resolve_launcher() == "local"
    cfg = _cfg(clean_env, "launcher: slurm\n")
    monkeypatch.setenv(launcher.CLUSTER_CONFIG_ENV, str(cfg))
    assert launcher.resolve_launcher() == "slurm"
    monkeypatch.setenv(launcher.LAUNCHER_ENV, "local")
    assert launcher.resolve_launcher() == "local"
    assert launcher.resolve_launcher("slurm") == "slurm"


def test_bad_launcher_names_its_source(clean_env, monkeypatch):
    monkeypatch.setenv(launcher.LAUNCHER_ENV, "pbs")
    with pytest.raises(MedrefError, match=r"\$MEDREF_LAUNCHER.*'pbs'"):
        launcher.resolve_launcher()


def test_cluster_config_unknown_key_is_named(clean_env):
    cfg = _cfg(clean_env, "slurm:\n  partiton: gpu\n")
    with pytest.raises(MedrefError, match=r"cluster.yaml: slurm.partiton"):
        launcher.load_cluster_config(cfg)


def test_missing_explicit_cluster_config(clean_env, monkeypatch):
    monkeypatch.setenv(launcher.CLUSTER_CONFIG_ENV, str(clean_env / "nope.yaml"))
    with pytest.raises(MedrefError, match="nope.yaml: cluster config not found"):
        launcher.load_cluster_config()


def test_repo_cluster_config_is_valid_and_local_by_default():
    cfg = launcher.load_cluster_config(REPO / "workflow/profiles/slurm/cluster.yaml")
    assert cfg.launcher in (None, "local"), "the committed config must not send every run to SLURM"
    assert cfg.slurm.gpus_per_node >= 1


def test_executor_parameters_mapping():
    s = launcher.SlurmSettings(
        partition="gpu",
        account="proj42",
        qos="normal",
        constraint="a100",
        gpus_per_node=2,
        cpus_per_gpu=8,
        cpus_per_task=3,
        mem_gb=64,
        time_min=120,
        setup=["module load cuda"],
        additional={"reservation": "r1"},
    )
    p = launcher.executor_parameters(s, "qata_10pct")
    assert p["slurm_partition"] == "gpu" and p["slurm_account"] == "proj42"
    assert p["slurm_qos"] == "normal" and p["slurm_constraint"] == "a100"
    assert p["gpus_per_node"] == 2 and p["cpus_per_task"] == 16
    assert p["mem_gb"] == 64 and p["timeout_min"] == 120
    assert p["slurm_setup"] == ["module load cuda"] and p["slurm_additional_parameters"] == {"reservation": "r1"}
    assert p["name"] == "medref-train-qata_10pct"
    cpu = launcher.executor_parameters(launcher.SlurmSettings(gpus_per_node=0, cpus_per_gpu=8, cpus_per_task=3), "r")
    assert "gpus_per_node" not in cpu and cpu["cpus_per_task"] == 3
    assert "slurm_account" not in cpu and "slurm_partition" not in cpu


@pytest.mark.slurm
def test_executor_parameters_accepted_by_submitit(tmp_path):
    # submitit's SLURM executor looks for srun when it is created. Without the SLURM client this
    # skips like the other SLURM tests; under CI=true (.ci/run installs SLURM) it must run.
    if shutil.which("srun") is None and os.environ.get("CI") != "true":
        pytest.skip("no SLURM client (srun not on PATH); install it or run tests/slurm/up.sh (INSTALL=1)")
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    s = launcher.load_cluster_config(REPO / "workflow/profiles/slurm/cluster.yaml").slurm
    ex.update_parameters(**launcher.executor_parameters(s, "qata_10pct"))  # raises on an unknown key


def _job(**over):
    kw = dict(
        regime="qata_10pct",
        params_file="/abs/params.yaml",
        params_sha256="0" * 64,
        paths={"run_dir": "/abs/runs/qata_10pct"},
        resume=False,
        cwd="/abs",
    )
    kw.update(over)
    return launcher.TrainJob(**kw)


def test_checkpoint_is_a_fresh_copy_that_resumes():
    job = _job()
    job.some_runtime_state = object()  # must not travel with the requeue
    delayed = job.checkpoint()
    fresh = delayed.function
    assert type(fresh) is launcher.TrainJob and fresh is not job
    assert not hasattr(fresh, "some_runtime_state")
    assert fresh.kwargs == {**job.kwargs, "resume": True}
    # plain data only: the pickle names the class by reference, no code of the caller
    blob = pickle.dumps(fresh)
    assert pickle.loads(blob).kwargs == fresh.kwargs


def test_job_refuses_a_changed_params_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("base: {seed: 1}\n")
    job = _job(params_file=str(p), cwd=str(tmp_path))
    with pytest.raises(MedrefError, match="changed since the job was submitted"):
        job()


def _recorder(calls):
    def run(params, regime, *, shards_dir, labels_file, split_file, out_dir, run_dir, resume=True):
        calls.append((regime, shards_dir, out_dir, run_dir, resume))
        return "done"

    return run


class _P:
    def regime(self, name):
        if name != "r":
            raise MedrefError(f"unknown regime {name!r}")


def _launch(**over):
    kw = dict(
        shards_dir=Path("s"),
        labels_file=Path("l"),
        split_file=Path("sp"),
        out_dir=Path("o"),
        run_dir=Path("rd"),
        launcher=None,
        resume=True,
        params_file=None,
    )
    kw.update(over)
    return launcher.launch(_P(), "r", **kw)


def test_local_calls_train_in_process(clean_env, monkeypatch):
    calls: list = []
    monkeypatch.setattr(launcher, "resolve_target", lambda target: _recorder(calls))
    assert _launch(resume=False) == "done"
    assert calls == [("r", Path("s"), Path("o"), Path("rd"), False)]


def test_inside_an_allocation_runs_in_process(clean_env, monkeypatch):
    calls: list = []
    monkeypatch.setattr(launcher, "resolve_target", lambda target: _recorder(calls))
    monkeypatch.setattr(launcher, "SlurmLauncher", None)  # would fail if used
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    assert _launch(launcher="slurm") == "done" and len(calls) == 1


def test_unknown_regime_fails_before_submission(clean_env):
    with pytest.raises(MedrefError, match="unknown regime"):
        launcher.launch(
            _P(),
            "nope",
            shards_dir=Path("s"),
            labels_file=Path("l"),
            split_file=Path("sp"),
            out_dir=Path("o"),
            run_dir=Path("rd"),
            launcher="slurm",
            resume=True,
            params_file=None,
        )


def test_tail_yields_complete_lines_and_last_progress_segment(tmp_path):
    log = tmp_path / "x.log"
    t = launcher._Tail(log)
    assert t.read_lines() == []
    log.write_text("a\nb")
    assert t.read_lines() == ["a"]
    with log.open("a") as f:
        f.write("c\n 10%\r 50%\r100%\ntail")
    assert t.read_lines() == ["bc", "100%"]
    assert t.read_lines(final=True) == ["tail"]


def test_resolve_target_from_file(tmp_path):
    f = tmp_path / "stub.py"
    f.write_text("def run():\n    return 7\n")
    assert launcher.resolve_target(f"{f}:run")() == 7
    assert launcher.resolve_target("os.path:join")("a", "b") == "a/b"
    with pytest.raises(MedrefError):
        launcher.resolve_target("nocolon")


def test_an_injected_trainer_runs_after_its_own_preflight(clean_env, tmp_path):
    from pipeline_src import params as params_mod

    f = tmp_path / "stand_in.py"
    f.write_text("def run(params, regime, *, resume, **paths):\n    return ('ran', regime, resume, sorted(paths))\n")
    seen: list = []
    trainer = launcher.Trainer(f"{f}:run", preflight=lambda params, regime, **kw: seen.append((regime, sorted(kw))))
    real = params_mod.load(Path(__file__).resolve().parents[1] / "params.yaml")
    got = launcher.launch(real, "qata_10pct", shards_dir=Path("s"), labels_file=Path("l"), split_file=Path("sp"),
                          out_dir=Path("o"), run_dir=Path("rd"), launcher="local", trainer=trainer)
    assert got == ("ran", "qata_10pct", True, ["labels_file", "out_dir", "run_dir", "shards_dir", "split_file"])
    assert seen == [("qata_10pct", ["params_file", "paths"])]
    # a stand-in params object has none of train's requirements: no preflight for it
    assert _launch(trainer=trainer, resume=False)[:3] == ("ran", "r", False) and len(seen) == 1


def test_the_default_trainer_is_train_run_with_its_preflight():
    assert launcher.TRAIN.target == "pipeline_src.train.train:run"
    assert launcher.resolve_target(launcher.TRAIN.target).__module__ == "pipeline_src.train.train"
    assert launcher.TRAIN.preflight is launcher._train_preflight
