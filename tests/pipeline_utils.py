"""Scratch copies of this repository for end-to-end tests of the engines.

A scratch repo holds the working tree's tracked and untracked-but-not-ignored files (so the
tests see uncommitted work too), committed into a fresh git repository, with params.yaml
shrunk to a tiny synthetic configuration so a whole chain runs in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline_src.grid import grid_document, grid_text
from pipeline_src.params import deep_merge

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY: dict[str, Any] = {
    "datasets": {
        "qata": {"synthetic": {"n_train": 32, "n_val": 8, "n_test": 12, "image_size": 64}},
        "mosmed": {"synthetic": {"n_train": 24, "n_val": 8, "n_test": 8, "image_size": 64}},
    },
    "preprocess": {"image_size": 64},
    "train": {
        "epochs": 1,
        "max_steps": 2,
        "batch_size": 4,
        # A smaller network than the demo's (8.6 M vs 18.4 M parameters): same code paths, under half the bytes per checkpoint.
        "model": {"image_encoder": "resnet10t", "text_width": 64, "text_layers": 1, "text_heads": 2, "embed_dim": 64},
    },
    "eval": {"batch_size": 8},
}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["MEDREF_LAUNCHER"] = "local"
    e.setdefault("GIT_AUTHOR_NAME", "medref-test")
    e.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    e.setdefault("GIT_COMMITTER_NAME", "medref-test")
    e.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=kw.pop("env", env()), capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({res.returncode}) in {cwd}:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
        )
    return res


def tool(name: str) -> str:
    return str(BIN / name)


def restrict_grid(p: dict, regimes: list[str]) -> dict:
    """params with only the studies (and their axes) that hold ``regimes``, and the named explicit runs.

    A study keeps the fractions, methods and seeds of the requested runs, so its grid is their cross
    product: asking for ``qata_10pct`` and ``qata_10pct-supervised-s1`` also gives ``qata_10pct-s1``."""
    runs = {**grid_document({**p, "study_size": "full"})["runs"], **grid_document(p)["runs"]}
    unknown = [r for r in regimes if r not in runs]
    assert not unknown, f"not runs of params.yaml: {unknown}; runs: {list(runs)}"
    out = {**p, "regimes": {k: v for k, v in (p.get("regimes") or {}).items() if k in regimes}}
    studies = {}
    for name, st in (p.get("studies") or {}).items():
        mine = [runs[r] for r in regimes if runs[r]["study"] == name]
        if mine:
            keep = {k: v for k, v in st.items() if k != "full"}
            keep["fractions"] = sorted({r["fraction"] for r in mine})
            keep["methods"] = list(dict.fromkeys(r["variant"] for r in mine))
            keep["seeds"] = sorted({r["seed"] for r in mine})
            studies[name] = keep
    out["studies"] = studies
    out["study_size"] = "demo"
    return out


def make_scratch_repo(dest: Path, overrides: dict | None = None, regimes: list[str] | None = None) -> Path:
    """Copy the working tree into ``dest`` as a fresh one-commit git repo with tiny params."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    dest.mkdir(parents=True, exist_ok=True)
    for f in filter(None, files):
        src = REPO / f.decode()
        if not (src.is_file() or src.is_symlink()):
            continue
        (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f.decode(), follow_symlinks=False)
    p = yaml.safe_load((dest / "params.yaml").read_text())
    p = deep_merge(p, TINY)
    if overrides:
        p = deep_merge(p, overrides)
    if regimes is not None:
        p = restrict_grid(p, regimes)
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (dest / "workflow/grid.yaml").write_text(grid_text(p))
    for path in (dest / "dvc.lock",):
        path.unlink(missing_ok=True)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "scratch"], dest)
    return dest
