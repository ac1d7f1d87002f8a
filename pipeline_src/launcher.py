"""Where ``train`` runs: in-process, or as a SLURM job submitted through submitit.

    medref train qata_10pct                          # in-process (the default)
    medref train qata_10pct --launcher slurm         # submitit -> SLURM, blocks, streams the log
    MEDREF_LAUNCHER=slurm dvc repro eval@qata_10pct  # the same through DVC / Snakemake

The launcher is chosen by ``--launcher``, else ``$MEDREF_LAUNCHER``, else the ``launcher:``
key of the cluster config (``$MEDREF_CLUSTER_CONFIG``, default
``workflow/profiles/slurm/cluster.yaml``), else ``local``. It is never a tracked param, so
where a job ran never changes a hash: both launchers call the same
``pipeline_src.train.train.run`` with the same paths and write the same outputs.

The SLURM path follows dinov2's submitit launcher: the job callable (:class:`TrainJob`)
holds only plain arguments (paths, regime, params file and its digest); in the job it
re-loads params and imports the installed package, so no closure of local code is pickled.
``checkpoint()`` resubmits a fresh copy with ``resume=True``; ``train.run`` resumes from
``run_dir/last.pt``, so a preempted or timed-out job continues where it stopped.
Inside an allocation (``SLURM_JOB_ID`` set) training runs in-process instead of submitting
again. If the caller is interrupted (Ctrl-C, SIGTERM from DVC or Snakemake) the job is
cancelled, so no orphan is left in the queue.

It sits in the top layer beside cli.py and verify.py (not in the train phase): the job re-loads the composed
params (pipeline_src.params), which no phase may import. What it runs is injected: ``launch(..., trainer=)``
takes a :class:`Trainer`, the train function plus the checks it makes on this host before a job is queued
(``TRAIN``, train.run and its preflight, unless told otherwise). The function is held by its name
("module:function" or "file.py:function"), because the SLURM job imports it by that name in its own process: no
code of the caller is pickled. The launcher tests inject a stand-in file that way.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import yaml
from pydantic import Field, ValidationError

from pipeline_src import numerics
from pipeline_src import params as params_mod
from pipeline_src.errors import MedrefError
from pipeline_src.train.preflight import preflight
from pipeline_src.utils.io import sha256_file, write_json
from pipeline_src.utils.schema import Strict, validation_message

LAUNCHERS = ("local", "slurm")
LAUNCHER_ENV = "MEDREF_LAUNCHER"
CLUSTER_CONFIG_ENV = "MEDREF_CLUSTER_CONFIG"
DEFAULT_CLUSTER_CONFIG = Path("workflow/profiles/slurm/cluster.yaml")
POLL_S = 0.5


class SlurmJobError(MedrefError):
    """The SLURM job failed, was cancelled or timed out for good; the message carries its traceback."""


# ---- cluster config --------------------------------------------------------------------


class SlurmSettings(Strict):
    """``slurm:`` section of cluster.yaml (sbatch options of the training job)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = Field(1, ge=0)
    cpus_per_gpu: int | None = Field(None, ge=1)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int = Field(60, ge=1)
    signal_delay_s: int = Field(90, ge=0)
    max_num_timeout: int = Field(3, ge=0)
    job_name: str | None = None
    setup: list[str] = Field(default_factory=list)
    additional: dict[str, Any] = Field(default_factory=dict)


class ClusterConfig(Strict):
    launcher: str | None = None
    slurm: SlurmSettings = SlurmSettings()


def cluster_config_path() -> Path:
    return Path(os.environ.get(CLUSTER_CONFIG_ENV) or DEFAULT_CLUSTER_CONFIG)


def load_cluster_config(path: Path | None = None) -> ClusterConfig:
    """The cluster config; defaults when the default file is absent (a set but missing path is an error)."""
    explicit = path is not None or bool(os.environ.get(CLUSTER_CONFIG_ENV))
    path = Path(path) if path is not None else cluster_config_path()
    if not path.exists():
        if explicit:
            raise MedrefError(f"{path}: cluster config not found (${CLUSTER_CONFIG_ENV})")
        return ClusterConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        cfg = ClusterConfig.model_validate(raw)
    except yaml.YAMLError as e:
        raise MedrefError(f"{path}: not valid YAML: {e}") from e
    except ValidationError as e:
        raise MedrefError(f"{path}: {validation_message(e)}") from e
    if cfg.launcher is not None and cfg.launcher not in LAUNCHERS:
        raise MedrefError(f"{path}: launcher: {cfg.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    return cfg


def resolve_launcher(launcher: str | None = None) -> str:
    """--launcher, else $MEDREF_LAUNCHER, else cluster config ``launcher:``, else "local"."""
    if launcher:
        source, value = "--launcher", launcher
    elif os.environ.get(LAUNCHER_ENV):
        source, value = f"${LAUNCHER_ENV}", os.environ[LAUNCHER_ENV]
    else:
        cfg = load_cluster_config()
        source, value = str(cluster_config_path()), cfg.launcher or "local"
    if value not in LAUNCHERS:
        raise MedrefError(f"{source}: launcher {value!r} is not one of {', '.join(LAUNCHERS)}")
    return value


def executor_parameters(settings: SlurmSettings, regime: str) -> dict[str, Any]:
    """submitit ``update_parameters`` for the training job (max_num_timeout goes to the constructor)."""
    p: dict[str, Any] = {
        "name": settings.job_name or f"medref-train-{regime}",
        "timeout_min": settings.time_min,
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_signal_delay_s": settings.signal_delay_s,
    }
    if settings.gpus_per_node:
        p["gpus_per_node"] = settings.gpus_per_node
    if settings.cpus_per_gpu and settings.gpus_per_node:
        # one task per node: CPUs per GPU as --cpus-per-task (sbatch's --cpus-per-gpu needs --gpus-per-task)
        p["cpus_per_task"] = settings.cpus_per_gpu * settings.gpus_per_node
    elif settings.cpus_per_task:
        p["cpus_per_task"] = settings.cpus_per_task
    if settings.mem_gb is not None:
        p["mem_gb"] = settings.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(settings, key)
        if value:
            p[f"slurm_{key}"] = value
    if settings.setup:
        p["slurm_setup"] = list(settings.setup)
    if settings.additional:
        p["slurm_additional_parameters"] = dict(settings.additional)
    return p


def job_parameters(settings: SlurmSettings, regime: str) -> dict[str, Any]:
    """:func:`executor_parameters` plus this process's CPU numerics (base.cpu_numerics and any ISA variable the
    user set) as ``export`` lines at the top of the sbatch script: they are in the job's environment before its
    python starts, whatever sbatch's ``--export`` passes; the cluster config's own ``setup:`` lines come after
    them and can still change them. The job's import of pipeline_src then applies the mode (numerics.py)."""
    p = executor_parameters(settings, regime)
    p["slurm_setup"] = numerics.slurm_setup() + list(p.get("slurm_setup", []))
    return p


# ---- the training call -----------------------------------------------------------------


def resolve_target(target: str):
    """Import "module:function" or "/path/file.py:function"."""
    where, _, name = target.rpartition(":")
    if not where or not name:
        raise MedrefError(f"train target {target!r}: expected 'module:function' or 'file.py:function'")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_medref_target_{Path(where).stem}", where)
        if spec is None or spec.loader is None:
            raise MedrefError(f"train target {target!r}: cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _call_train(target: str, params, regime: str, paths: dict[str, Path], resume: bool):
    run = resolve_target(target)
    return run(params, regime, resume=resume, **paths)


@dataclass(frozen=True)
class Trainer:
    """What the launchers run: ``target``, the train function by name ("module:function" or
    "/path/file.py:function"; a SLURM job imports it in its own process), and ``preflight``, the checks it makes
    on this host before a job is queued (None: a stand-in with no requirements of its own)."""

    target: str
    preflight: Callable[..., Any] | None = None

    def __call__(self, params, regime: str, paths: dict[str, Path], resume: bool):
        return _call_train(self.target, params, regime, paths, resume)


def _train_preflight(params, regime: str, *, paths: dict[str, Path], params_file: Path | None) -> None:
    """train.run's own requirements, checked where the command was typed (train.run repeats them: cheap)."""
    preflight(params, regime, shards_dir=paths["shards_dir"], labels_file=paths["labels_file"],
              split_file=paths["split_file"], params_file=params_file, out_dir=paths["out_dir"],
              run_dir=paths["run_dir"])


# What `medref train` runs. The CLI takes this default; a caller (the launcher tests) injects another Trainer.
TRAIN = Trainer("pipeline_src.train.train:run", preflight=_train_preflight)


def _file_digest(path: Path) -> str:
    return sha256_file(path)


class TrainJob(submitit.helpers.Checkpointable):
    """submitit callable: plain arguments only; re-loads params and imports the package in the job.

    Checkpointable (submitit calls ``checkpoint()`` on preemption/timeout and requeues what it
    returns): a fresh copy with ``resume=True``, so the requeued job continues from last.pt.
    """

    def __init__(
        self,
        *,
        regime: str,
        params_file: str,
        params_sha256: str,
        paths: dict[str, str],
        resume: bool,
        cwd: str,
        target: str = TRAIN.target,
    ) -> None:
        self.kwargs = dict(
            regime=regime,
            params_file=params_file,
            params_sha256=params_sha256,
            paths=dict(paths),
            resume=resume,
            cwd=cwd,
            target=target,
        )

    def __call__(self):
        k = self.kwargs
        # Provenance (git) and any relative path behave as in the caller. Restored afterwards,
        # so calling a job in-process (tests, debugging) leaves the caller where it was.
        with contextlib.chdir(k["cwd"]):
            params_file = Path(k["params_file"])
            digest = _file_digest(params_file)
            if digest != k["params_sha256"]:
                raise MedrefError(
                    f"{params_file}: changed since the job was submitted (sha256 {digest[:12]} != {k['params_sha256'][:12]});"
                    " resubmit so the result matches the params"
                )
            p = params_mod.load(params_file)
            numerics.require(p.base.cpu_numerics)  # the job runs the mode its params record (set before torch)
            paths = {name: Path(v) for name, v in k["paths"].items()}
            return _call_train(k["target"], p, k["regime"], paths, k["resume"])

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        fresh = type(self)(**{**self.kwargs, "resume": True})
        return submitit.helpers.DelayedSubmission(fresh, *args, **kwargs)


# ---- launch ----------------------------------------------------------------------------


def launch(
    params,
    regime: str,
    *,
    shards_dir: Path,
    labels_file: Path,
    split_file: Path,
    out_dir: Path,
    run_dir: Path,
    launcher: str | None = None,
    resume: bool = True,
    params_file: Path | None = None,
    trainer: Trainer | None = None,
):
    """Train ``regime`` with ``trainer`` (default :data:`TRAIN`: train.run) in-process or on SLURM; returns what it
    returns."""
    trainer = trainer or TRAIN
    params.regime(regime)  # unknown regime -> one clear error before anything is submitted
    paths = dict(
        shards_dir=Path(shards_dir),
        labels_file=Path(labels_file),
        split_file=Path(split_file),
        out_dir=Path(out_dir),
        run_dir=Path(run_dir),
    )
    # Every check train.run can fail, on this host, BEFORE a SLURM job is queued. A stand-in params object (the
    # launcher tests) has none of train's requirements.
    if trainer.preflight is not None and isinstance(params, params_mod.Params):
        trainer.preflight(params, regime, paths=paths, params_file=params_file)
    which = resolve_launcher(launcher)
    if which == "local" or os.environ.get("SLURM_JOB_ID"):
        # Inside an allocation we already hold the resources: never submit again.
        return trainer(params, regime, paths, resume)
    if params_file is None:
        raise MedrefError("launcher slurm: params_file is required (the job re-loads params from it)")
    return SlurmLauncher(load_cluster_config().slurm).run(regime, Path(params_file), paths, resume, trainer=trainer)


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SlurmLauncher:
    """Submit one TrainJob, stream its log with a status line, cancel it if we are interrupted."""

    def __init__(self, settings: SlurmSettings, *, console=None) -> None:
        from rich.console import Console

        self.settings = settings
        self.console = console or Console(stderr=True, highlight=False)

    def submit(self, regime: str, params_file: Path, paths: dict[str, Path], resume: bool,
               trainer: Trainer | None = None):
        if not params_file.exists():
            raise MedrefError(f"{params_file}: params file not found")
        run_dir = paths["run_dir"].resolve()
        folder = run_dir / "submitit"
        folder.mkdir(parents=True, exist_ok=True)
        self._cancel_stale(folder)
        job_fn = TrainJob(
            regime=regime,
            params_file=str(params_file.resolve()),
            params_sha256=_file_digest(params_file),
            paths={k: str(v.resolve()) for k, v in paths.items()},
            resume=resume,
            cwd=str(Path.cwd()),
            target=(trainer or TRAIN).target,
        )
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=self.settings.max_num_timeout)
        ex.update_parameters(**job_parameters(self.settings, regime))
        try:
            job = ex.submit(job_fn)
        except Exception as e:  # sbatch missing/refused: the message says why
            raise MedrefError(f"launcher slurm: submission failed: {e}") from e
        write_json(folder / "job.json", {"job_id": job.job_id, "regime": regime, "submitted": time.time()})
        return job

    def run(self, regime: str, params_file: Path, paths: dict[str, Path], resume: bool,
            trainer: Trainer | None = None):
        job = None
        handled = (signal.SIGTERM, signal.SIGHUP)
        previous: dict[int, Any] = {}

        def on_signal(signum, _frame):
            raise _Interrupted(signum)

        if threading.current_thread() is threading.main_thread():
            for s in handled:
                previous[s] = signal.signal(s, on_signal)
        try:
            job = self.submit(regime, params_file, paths, resume, trainer)
            self.console.print(
                f"[medref] submitted SLURM job {job.job_id} ({regime}); log: {job.paths.stdout}", markup=False
            )
            self.wait(job)
            return self.collect(job)
        except (KeyboardInterrupt, _Interrupted) as e:
            signum = e.signum if isinstance(e, _Interrupted) else signal.SIGINT
            if job is not None:
                self.cancel(job)
            raise SystemExit(128 + int(signum)) from None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def wait(self, job) -> None:
        tails = {"out": _Tail(job.paths.stdout), "err": _Tail(job.paths.stderr)}
        t0 = time.monotonic()
        last_state = None
        with self.console.status(f"SLURM job {job.job_id}: submitted") as status:
            while True:
                done = job.done()
                for stream, tail in tails.items():
                    for line in tail.read_lines():
                        self.console.print(f"[{job.job_id}{'!' if stream == 'err' else ''}] {line}", markup=False)
                if done:
                    break
                state = job.state
                if state != last_state:
                    if last_state is not None:  # transitions as plain lines too (non-TTY logs)
                        self.console.print(f"[medref] SLURM job {job.job_id}: {state}", markup=False)
                    last_state = state
                status.update(f"SLURM job {job.job_id}: {state} {_fmt_elapsed(time.monotonic() - t0)}")
                time.sleep(POLL_S)
        for stream, tail in tails.items():
            for line in tail.read_lines(final=True):
                self.console.print(f"[{job.job_id}{'!' if stream == 'err' else ''}] {line}", markup=False)

    def collect(self, job):
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            result = job.result()
        except FailedJobError as e:
            raise SlurmJobError(f"SLURM job {job.job_id} failed (log: {job.paths.stderr}):\n{e}") from None
        except UncompletedJobError as e:
            state = job.get_info(mode="force").get("State", job.state)
            raise SlurmJobError(
                f"SLURM job {job.job_id} ended without a result (state {state}; log: {job.paths.stderr}): {e}"
            ) from None
        self.console.print(f"[medref] SLURM job {job.job_id}: COMPLETED", markup=False)
        return result

    def cancel(self, job, timeout_s: float = 30.0) -> None:
        """scancel and wait until the job has left squeue, so the caller exits with no orphan."""
        self.console.print(f"[medref] interrupted: cancelling SLURM job {job.job_id}", markup=False)
        # Ignore further SIGINT/SIGTERM while cancelling: a second Ctrl-C must not skip the scancel.
        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, signal.SIG_IGN)
        try:
            # A plain scancel: sacct (and Snakemake/DVC reading it) records CANCELLED. The submitit job
            # ignores the SIGTERM (it reads it as a preemption notice), so SLURM kills its processes
            # after KillWait (often 30 s) while squeue shows COMPLETING: the job is cancelled and
            # SLURM is tearing it down, so we stop waiting once it is no longer pending/running.
            job.cancel(check=False)
            end = time.monotonic() + timeout_s
            while time.monotonic() < end and _active(job.job_id):
                time.sleep(0.2)
            if _active(job.job_id):
                self.console.print(
                    f"[medref] SLURM job {job.job_id} still active after {timeout_s:.0f} s", markup=False
                )
            else:
                self.console.print(f"[medref] SLURM job {job.job_id} cancelled", markup=False)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _cancel_stale(self, folder: Path) -> None:
        """A job of an earlier launcher that was killed hard (SIGKILL) would race us on run_dir."""
        record = folder / "job.json"
        if not record.exists():
            return
        try:
            old_id = str(json.loads(record.read_text())["job_id"])
        except (ValueError, KeyError):
            return
        if _active(old_id):
            self.console.print(f"[medref] cancelling stale SLURM job {old_id} of this run folder", markup=False)
            subprocess.call(["scancel", old_id])
            end = time.monotonic() + 30
            while time.monotonic() < end and _active(old_id):
                time.sleep(0.2)


_GONE = {
    "COMPLETING",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
}


def _active(job_id: str) -> bool:
    """Pending, running, requeued... (COMPLETING = SLURM is already killing it)."""
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
    # squeue exits non-zero for an id it no longer knows: that is "gone"
    states = out.stdout.split() if out.returncode == 0 else []
    return any(s not in _GONE for s in states)


def _fmt_elapsed(s: float) -> str:
    m, s = divmod(int(s), 60)
    return f"{m:d}:{s:02d}"


class _Tail:
    """Yield the complete new lines of a growing log file (tqdm's \\r updates: last segment)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.partial = ""

    def read_lines(self, final: bool = False) -> list[str]:
        try:
            with self.path.open("r", errors="replace", newline="") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return []
        text = self.partial + chunk
        lines = text.split("\n")
        self.partial = "" if final else lines.pop()
        return [ln.rsplit("\r", 1)[-1] for ln in lines if ln.strip("\r")]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `medref train <regime> --launcher slurm`")
