"""The CPU numerics mode, ``base.cpu_numerics: native | portable``, set before torch is imported.

    MEDREF_CPU_NUMERICS=portable medref train qata_10pct   # override params.yaml for one command
    python -m pytest tests/test_numerics.py

oneDNN, ATen and oneMKL pick their kernels by the CPU's widest ISA (AVX2, AVX-512, AVX-512 BF16, AMX) and each
kernel family sums in its own order, so ``native`` CPU weights are bit-identical only on the same CPU kind.
``portable`` caps all three at AVX2 (oneMKL with strict CNR), which every x86-64 CPU of the last decade runs, so
the kernel choice, and with it the bits, should be the same on any of them. It also pins the OpenMP/oneMKL
thread count to ``base.cpu_threads`` (train/eval also call ``torch.set_num_threads`` with it).

Why this runs at import of ``pipeline_src`` and not in a stage: the libraries read these variables once, at
their first kernel call, so they must be in the environment before anything imports torch. The mode is a tracked
param (it changes the bits), but params.yaml is only parsed (pydantic, per phase) long after that. So
``pipeline_src/__init__.py`` calls :func:`configure_from_environment`, which takes the mode from
``$MEDREF_CPU_NUMERICS``, else from ``base:`` of the params.yaml of the repository the process runs in (a plain
yaml read, no medref import), else ``native``. Every medref process imports ``pipeline_src`` before torch: the
``medref`` console script (dvc.yaml and the Snakemake rules call it), and a submitit SLURM job, which imports
``pipeline_src.launcher`` to unpickle its callable. The SLURM job is also given the values explicitly
(:func:`slurm_setup`), so it does not depend on sbatch exporting the caller's environment. ``medref --params
other.yaml`` re-reads the mode from that file in ``cli.main`` (torch is still not imported there). A stage
re-checks with :func:`require` that its params' mode is the one in force, so a process that imported torch
first cannot record a mode it did not run.

A variable the user set themselves wins (``setdefault`` semantics), and provenance records what was in force
(:func:`in_force`): the mode, the variables as they are in the environment, and the thread count.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from pipeline_src.errors import MedrefError

MODES = ("native", "portable")
ENV = "MEDREF_CPU_NUMERICS"
# The caps. ONEDNN_MAX_CPU_ISA: oneDNN's convolutions/matmuls (ISA names in upper case); ATEN_CPU_CAPABILITY:
# ATen's own vectorised kernels (lower case). MKL_CBWR: oneMKL's code path, STRICT = alignment-independent too.
# oneMKL's branch is COMPATIBLE, not AVX2: oneMKL honours the ISA branches (AVX2, AVX512...) on Intel CPUs only and
# runs AUTO on others (on the AMD EPYC dev machine MKL_VERBOSE reports CNR:AUTO for MKL_CBWR=AVX2 and AVX512, with
# the same bytes as AUTO), so AVX2 would mean Intel's AVX2 path on Intel and oneMKL's own choice on AMD. COMPATIBLE
# is the one branch documented to give the same results on Intel and non-Intel x86-64 CPUs (same speed here for
# a 512^2 SGEMM; bench/bench_numerics.py measures the whole training step).
PORTABLE_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"}
# native still wants oneMKL's strict CNR on the CPU's own code path: same bits from run to run and after a resume
# (see pipeline_src/__init__.py for the intermittent failure it fixed)
NATIVE_ENV = {"MKL_CBWR": "AUTO,STRICT"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# what provenance records, whatever the mode
RECORDED = (*PORTABLE_ENV, *THREAD_VARS)

# Which of those a medref parent process set (JSON {var: value}), so that a child (dvc -> medref, verify's re-run,
# a SLURM job) does not take its parent's defaults for the user's own settings, and applies its own params' mode.
MARK = "MEDREF_NUMERICS_SET"
DEFAULT = "portable"  # README "CPU numerics": it costs <= 25 % of CPU training throughput, so it is the default

_inherited = {}
try:
    _inherited = dict(json.loads(os.environ.get(MARK) or "{}"))
except (ValueError, TypeError):
    pass
# the variables the user set (not a medref parent): they win
_USER = {k: os.environ[k] for k in RECORDED if k in os.environ and _inherited.get(k) != os.environ[k]}
_state: dict[str, Any] = {"mode": None, "source": None, "set": dict(_inherited), "torch_first": None}


class NumericsError(MedrefError):
    """A bad or late numerics mode; the message names where the mode came from."""


def _params_base(params_file: Path) -> dict[str, Any]:
    """``base:`` of a params file, read with plain yaml (nothing of medref imported); {} when absent/unreadable:
    the typed load (pipeline_src.params) reports a broken file with its proper message later."""
    try:
        import yaml

        raw = yaml.safe_load(params_file.read_text()) or {}
    except Exception:  # OSError, yaml.YAMLError...: never fail an import over it
        return {}
    base = raw.get("base") if isinstance(raw, dict) else None
    return base if isinstance(base, dict) else {}


def _default_params_file() -> Path | None:
    here = Path.cwd()
    root = next((d for d in (here, *here.parents) if (d / "dvc.yaml").is_file()), here)
    p = root / "params.yaml"
    return p if p.is_file() else None


def resolve(params_file: Path | None = None) -> tuple[str, int | None, str]:
    """(mode, threads, where the mode came from): $MEDREF_CPU_NUMERICS, else the params file, else DEFAULT."""
    params_file = params_file or _default_params_file()
    base = _params_base(params_file) if params_file else {}
    threads = base.get("cpu_threads") if isinstance(base.get("cpu_threads"), int) else None
    if os.environ.get(ENV):
        mode, source = os.environ[ENV], f"${ENV}"
    elif "cpu_numerics" in base:
        mode, source = base["cpu_numerics"], f"{params_file}: base.cpu_numerics"
    else:
        mode, source = DEFAULT, "default"
    if mode not in MODES:
        raise NumericsError(f"{source}: cpu numerics mode {mode!r} is not one of {', '.join(MODES)}")
    return mode, threads, source


def configure(mode: str, threads: int | None = None, source: str = "") -> None:
    """Put ``mode``'s variables in the environment (those the user set stay). Undoes what an earlier call set."""
    if mode not in MODES:
        raise NumericsError(f"{source or 'cpu numerics'}: mode {mode!r} is not one of {', '.join(MODES)}")
    if _state["mode"] == mode and (threads is None or _state["set"].get("OMP_NUM_THREADS") in (None, str(threads))):
        return
    if "torch" in sys.modules and _state["mode"] not in (None, mode):
        raise NumericsError(f"{source}: cpu numerics {mode!r} requested after torch was imported under "
                            f"{_state['mode']!r}; the kernels are chosen already (run it as its own process)")
    want = dict(PORTABLE_ENV if mode == "portable" else NATIVE_ENV)
    if mode == "portable" and threads:
        want.update({k: str(threads) for k in THREAD_VARS})
    for k, v in _state["set"].items():  # a parent's or an earlier call's defaults (cli.main re-reads --params)
        if k not in _USER and k not in want and os.environ.get(k) == v:
            del os.environ[k]
    set_now = {}
    for k, v in want.items():
        if k not in _USER:
            os.environ[k] = v
            set_now[k] = v
    os.environ[MARK] = json.dumps(set_now, sort_keys=True)
    _state.update(mode=mode, source=source, set=set_now, torch_first="torch" in sys.modules)


def configure_from_environment() -> None:
    """Called by ``pipeline_src/__init__.py`` at import. A bad mode is not raised here (an import error would hide
    it): :func:`require` names it when a stage loads its params."""
    try:
        configure(*resolve())
    except NumericsError as e:
        _state["error"] = str(e)
        configure("native", source="fallback")


def mode() -> str | None:
    return _state["mode"]


def in_force() -> dict[str, Any]:
    """What a CPU result records: the mode, the ISA caps as they are in the environment (None = not set) and
    torch's intra-op thread count (what ``base.cpu_threads`` set). Not the thread variables themselves: Snakemake
    sets OMP_NUM_THREADS to a rule's threads and DVC does not, and the record must be the same bytes under both."""
    out: dict[str, Any] = {"mode": _state["mode"], "caps": {k: os.environ.get(k) for k in PORTABLE_ENV}}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["threads"] = torch.get_num_threads()
    return out


def require(params_mode: str) -> None:
    """A stage's params say ``params_mode``; the process must be running it (set before torch was imported)."""
    if _state.get("error") and _state["mode"] != params_mode:
        raise NumericsError(_state["error"])
    if _state["mode"] == params_mode:
        return
    if "torch" not in sys.modules:
        configure(params_mode, source="base.cpu_numerics")
        return
    raise NumericsError(
        f"base.cpu_numerics is {params_mode!r} but this process runs {_state['mode']!r} ({_state['source']}), "
        f"and torch is already imported, so the kernels are chosen: set {ENV}={params_mode} or run it from the "
        "repository whose params.yaml says so")


def slurm_setup() -> list[str]:
    """sbatch script lines that give a SLURM job this process's numerics whatever sbatch exports (``--export``):
    the mode, which the job's own import of pipeline_src applies, and the variables the user set, which win
    there as here. They run before the job's python starts."""
    lines = [f"export {ENV}={shlex.quote(_state['mode'] or DEFAULT)}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(_USER.items())]
    return lines


def recorded_portable(prov: dict[str, Any] | None) -> bool:
    """True when a provenance block says its result ran in portable mode with the portable caps in force (a
    user's own ISA variable that won over them makes it a native result)."""
    num = (prov or {}).get("numerics") or {}
    return num.get("mode") == "portable" and (num.get("caps") or {}) == PORTABLE_ENV
