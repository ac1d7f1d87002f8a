"""``medref verify <regime>`` and ``medref provenance <regime>``.

verify proves that a regime's recorded result came from the inputs it claims:

1. the workspace matches dvc.lock for every stage of the regime's chain (``dvc status``):
   a tampered output, param or dependency is named;
2. the chain is re-run from scratch in a throw-away clone of the repository at the commit
   the result records, with the workspace's params.yaml, and every output hash of the new
   dvc.lock is compared with the recorded one. On CPU the outputs must be bit-identical;
   for a result recorded on a GPU, numbers in the metrics file may differ by ``tolerance``.

It prints PASS, or FAIL with the first differing file, and returns 0 / 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline_src import paths
from pipeline_src.errors import MedrefError
from pipeline_src.provenance import cpu_hint

GPU_METRIC_TOLERANCE = 1e-3  # absolute, on metrics in [0, 1]; declared here and in the README


def chain(params_raw: dict[str, Any], regime: str) -> list[str]:
    """DVC stage names that ``eval@<regime>`` depends on, in execution order."""
    from pipeline_src.params import grid_document

    runs = grid_document(params_raw)["runs"]
    if regime not in runs:
        raise MedrefError(f"params.yaml: unknown run {regime!r}; runs: {', '.join(runs)}")
    dataset, split = runs[regime]["dataset"], runs[regime]["split"]
    return [
        f"download@{dataset}",
        f"preprocess@{dataset}",
        f"pseudolabel@{dataset}",
        f"split@{split}",
        f"train@{regime}",
        f"eval@{regime}",
    ]


def _dotted(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _changed_keys(prefix: str, old: Any, new: Any) -> list[str]:
    """Dotted keys whose values differ between two params trees (``eval.threshold: 0.5 -> 0.3``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for sub in sorted(old.keys() | new.keys())
                for k in _changed_keys(f"{prefix}.{sub}", old.get(sub), new.get(sub))]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _load_lock(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise MedrefError(f"{path}: not found; run `dvc repro` first (nothing is recorded to verify)")
    return yaml.safe_load(path.read_text()).get("stages", {})


def provenance(regime: str, repo: Path = Path(".")) -> dict[str, Any]:
    out: dict[str, Any] = {}
    model_prov = repo / paths.model_dir(regime) / "provenance.json"
    metrics = repo / paths.metrics_file(regime)
    if model_prov.exists():
        out["model"] = json.loads(model_prov.read_text())
    if metrics.exists():
        out["metrics"] = json.loads(metrics.read_text()).get("provenance")
    if not out:
        raise MedrefError(f"no provenance for regime {regime!r}: neither {model_prov} nor {metrics} exists")
    return out


def _dvc(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    return subprocess.run([dvc, *args], cwd=cwd, env=env, capture_output=True, text=True)


def _out_hash(entry: dict[str, Any]) -> tuple:
    return (entry.get("md5") or entry.get("hash"), entry.get("size"), entry.get("nfiles"))


def _first_diff(a: Path, b: Path) -> str | None:
    """First relative path whose bytes differ between two files/trees (or that exists in one only)."""
    if a.is_file() or b.is_file():
        return None if a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes() else ""
    fa = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()} if a.exists() else set()
    fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()} if b.exists() else set()
    for rel in sorted(fa | fb):
        if rel not in fa or rel not in fb or (a / rel).read_bytes() != (b / rel).read_bytes():
            return rel
    return None


def _numbers_close(a: Any, b: Any, tol: float, skip: tuple[str, ...] = ("provenance",)) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k], tol) for k in a if k not in skip)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_numbers_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= tol
        except (TypeError, ValueError):
            return False
    return a == b


def verify(regime: str, repo: Path = Path("."), keep: bool = False, log=print) -> bool:
    repo = repo.resolve()
    if not (repo / paths.PIPELINE_FILE).is_file():
        raise MedrefError(f"{repo}: no {paths.PIPELINE_FILE} here or above; run `medref verify` inside the repository")
    params_raw = yaml.safe_load((repo / "params.yaml").read_text())
    stages = chain(params_raw, regime)
    lock = _load_lock(repo / "dvc.lock")
    missing = [s for s in stages if s not in lock]
    if missing:
        log(f"FAIL: dvc.lock has no record of {', '.join(missing)}; run `dvc repro eval@{regime}` first")
        return False

    # 0. the pretrained weights files train read, against the digests it recorded (a file replaced behind the same
    # path changes the model while every param stays the same)
    from pipeline_src.models.weights import changed

    model_prov = provenance(regime, repo).get("model") or {}
    for line in changed(model_prov.get("weights"), repo):
        log(f"FAIL: train@{regime}: weights {line}; re-run `dvc repro train@{regime}` (or restore the file)")
        return False

    # 1. workspace vs dvc.lock
    st = _dvc(["status", "--json", *stages], cwd=repo)
    if st.returncode != 0:
        raise MedrefError(f"dvc status failed: {st.stderr.strip()}")
    status = json.loads(st.stdout or "{}")
    for stage in stages:
        for change in status.get(stage, []):
            if isinstance(change, dict):
                for kind, items in change.items():
                    if isinstance(items, dict):
                        for path, what in items.items():
                            if isinstance(what, dict):  # params: {"eval": "modified"} -> name the leaf keys
                                recorded = lock[stage].get("params", {}).get(path, {})
                                keys = [k for group in what for k in _changed_keys(group, recorded.get(group),
                                                                                  _dotted(params_raw, group))]
                                what = ", ".join(keys or [f"{k} {v}" for k, v in what.items()])
                            log(f"FAIL: {stage}: {kind}: {path} ({what}) differs from dvc.lock")
                            return False
            else:
                log(f"FAIL: {stage}: {change}")
                return False
    log(f"workspace matches dvc.lock for {len(stages)} stages")

    # 2. re-run from scratch at the recorded commit
    prov = provenance(regime, repo).get("metrics") or {}
    git = prov.get("git") or {}
    if git.get("dirty"):
        log("FAIL: the result was produced from a working tree with uncommitted code changes; commit and re-run it")
        return False
    commit = git.get("commit")
    scratch = Path(tempfile.mkdtemp(prefix=f"medref-verify-{regime}-"))
    try:
        clone = scratch / "repo"
        subprocess.run(["git", "clone", "-q", "--shared", str(repo), str(clone)], check=True)
        if commit:
            subprocess.run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", commit], cwd=clone, check=True)
        shutil.copy2(repo / "params.yaml", clone / "params.yaml")
        env = dict(os.environ, MEDREF_LAUNCHER="local")
        log(f"re-running {' -> '.join(stages)} in {clone} (commit {commit or 'HEAD'})")
        run = _dvc(["repro", "--no-run-cache", f"eval@{regime}"], cwd=clone, env=env)
        if run.returncode != 0:
            log(f"FAIL: re-run failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
            return False
        new = _load_lock(clone / "dvc.lock")
        for stage in stages:
            for kind in ("deps", "outs"):
                old_e = {e["path"]: e for e in lock[stage].get(kind, [])}
                new_e = {e["path"]: e for e in new.get(stage, {}).get(kind, [])}
                for path in sorted(old_e.keys() | new_e.keys()):
                    if path in old_e and path in new_e and _out_hash(old_e[path]) == _out_hash(new_e[path]):
                        continue
                    if kind == "outs" and _gpu_tolerated(prov, repo / path, clone / path):
                        log(f"{stage}: {path} within the GPU tolerance {GPU_METRIC_TOLERANCE}")
                        continue
                    rel = _first_diff(repo / path, clone / path) if kind == "outs" else None
                    where = f"{path}/{rel}" if rel else path
                    hint = cpu_hint(prov.get("cpu")) if kind == "outs" else ""
                    log(f"FAIL: {stage}: {kind[:-1]} {where} differs from the recorded hash in dvc.lock{hint}")
                    return False
        log(f"PASS: {regime}: {len(stages)} stages re-run, every output hash matches dvc.lock")
        return True
    finally:
        if keep:
            log(f"scratch kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _gpu_tolerated(prov: dict[str, Any], a: Path, b: Path) -> bool:
    if str(prov.get("device", "cpu")).startswith("cpu") or a.suffix != ".json" or not (a.is_file() and b.is_file()):
        return False
    return _numbers_close(json.loads(a.read_text()), json.loads(b.read_text()), GPU_METRIC_TOLERANCE)
