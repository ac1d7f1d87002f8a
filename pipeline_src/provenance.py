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


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
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
