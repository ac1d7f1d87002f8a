"""Provenance blocks: what produced an output, so a number can be traced to its inputs.

Every model directory and every ``metrics/<regime>.json`` carries one. ``medref provenance``
prints it.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from pipeline_src import numerics
from pipeline_src.utils.io import sha256_file, sha256_json, sha256_tree

VERSIONED = ("torch", "timm", "open_clip_torch", "pyarrow", "numpy", "monai", "pipeline_src")


def git_state(cwd: str | Path = ".") -> dict[str, Any]:
    """Commit and dirty flag of the repository (None when not in a git work tree)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                # dvc.lock is rewritten by `dvc repro` itself while the pipeline runs
                ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock"],
                cwd=cwd,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def cpu_model() -> str:
    """The CPU kind a CPU result was computed on: vendor, family/model, name and widest vector ISA, e.g.
    ``AuthenticAMD family 25 model 17 (AMD EPYC), x86_64, avx512``. Not a host name: two machines of one kind
    give one string. oneMKL and oneDNN pick kernels by CPU kind, so float results are bit-identical only on the
    same kind (train, eval and pretrain_text record it; ``medref verify`` names both when a re-run differs)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k and k not in info:
                info[k] = v.strip()
            if not line.strip() and info:
                break  # the first processor is enough
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    isa = next((f for f, need in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx")) if need in flags), None)
    if "vendor_id" in info:
        head = f"{info['vendor_id']} family {info.get('cpu family', '?')} model {info.get('model', '?')}"
        head += f" ({info['model name']})" if info.get("model name") else ""
    else:
        head = platform.processor() or "unknown CPU"
    return ", ".join(x for x in (head, platform.machine(), isa) if x)


def cpu_hint(recorded: str | None) -> str:
    """Said beside a CPU result that re-ran to other bytes: where it was recorded, where it ran now."""
    here = cpu_model()
    if not recorded or recorded == here:
        return ""
    return (f" (recorded on {recorded}; this machine is {here}: on CPU the bits are the same only on the same "
            "CPU kind, so compare the numbers, or re-check on that kind of CPU)")


def cpu_record() -> dict[str, Any]:
    """What a CPU float result records about the machine's numerics: the CPU kind and the numerics in force (mode,
    ISA caps, threads; pipeline_src/numerics.py). A portable result is bit-identical on any x86-64 CPU; a native
    one only on the same CPU kind (``medref verify`` picks its comparison from this)."""
    return {"cpu": cpu_model(), "numerics": numerics.in_force()}


def python_version() -> str:
    """Python as provenance records it: major.minor, the ABI that picks the pinned wheels (requirements.lock). The
    patch release is left out on purpose: it changes no number (the numerics are in the wheels), and an output that
    named it would change its bytes, hence its hash, between e.g. Debian 12's 3.11.2 and pyenv's 3.11.7."""
    return "{}.{}".format(*platform.python_version_tuple()[:2])


def versions() -> dict[str, str | None]:
    """The versions an output's provenance records: Python (:func:`python_version`) and the libraries in
    ``VERSIONED``. They are part of the output's bytes, so a re-run must have the same ones (``medref verify``
    checks before it re-runs: :func:`version_mismatch`)."""
    out: dict[str, str | None] = {"python": python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def version_mismatch(recorded: dict[str, Any] | None) -> list[str]:
    """``name recorded -> here`` for each recorded version this environment does not have. A recorded Python with a
    patch release (results made before :func:`python_version` dropped it) is compared with this interpreter's full
    version, since that is what its re-run at the recorded commit writes again."""
    here = versions()
    out = []
    for name, want in sorted((recorded or {}).items()):
        got = platform.python_version() if name == "python" and str(want).count(".") >= 2 else here.get(name)
        if name in here and want != got:
            out.append(f"{name} {want} -> {got}")
    return out


def input_digest(path: str | Path) -> str | None:
    """Digest of an input: a manifest's own ``digest`` field, a split's ``digest``, else file/tree sha256."""
    path = Path(path)
    if path.is_dir():
        manifest = path / "manifest.json"
        if manifest.exists():
            return json.loads(manifest.read_text()).get("digest") or sha256_file(manifest)
        return sha256_tree(path)
    if path.is_file():
        return sha256_file(path)
    return None


def params_digest(raw: dict[str, Any], keys: list[str]) -> str:
    picked = {}
    for key in keys:
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        picked[key] = node
    return sha256_json(picked)


def block(
    params_raw: dict[str, Any],
    keys: list[str],
    inputs: dict[str, str | Path],
    device: str = "cpu",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance block written beside an output.

    Deliberately free of timestamps and host names: it is part of the output, and the
    output must be byte-identical when the same inputs are re-run anywhere.
    """
    out: dict[str, Any] = {
        "git": git_state(),
        "params_keys": sorted(keys),
        "params_digest": params_digest(params_raw, keys),
        "inputs": {name: input_digest(p) for name, p in sorted(inputs.items())},
        "versions": versions(),
        "device": device,
    }
    if extra:
        out.update(extra)
    return out


def stage_block(params, keys: list[str], inputs: dict[str, str | Path], *, device: str,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance block of a stage that computes floats (train, eval): :func:`block` over the validated params
    this stage read (defaults filled in, so a default that changes in code changes the digest too), plus
    :func:`cpu_record` when the result was computed on CPU (bit-identical on the same CPU kind under native numerics,
    on any x86-64 CPU under portable)."""
    extra = dict(extra or {})
    if str(device).startswith("cpu"):
        extra.update(cpu_record())
    return block(params.model_dump(mode="json"), keys, inputs, device=str(device), extra=extra)

