"""``medref verify <regime>``, ``medref verify --from <published folder> <run>`` and ``medref provenance <regime>``.

verify proves that a regime's recorded result came from the inputs it claims:

1. the workspace matches dvc.lock for every stage of the regime's chain (``dvc status``):
   a tampered output, param or dependency is named;
2. the chain is re-run from scratch in a throw-away clone of the repository at the commit
   the result records, with the workspace's params.yaml, and the new dvc.lock and outputs are
   compared with the recorded ones. How depends on where the result was made (:func:`comparison`,
   printed): on the same CPU kind, or in portable numerics on any x86-64 CPU, the bits; a native
   CPU result from another CPU kind or a GPU result, the metrics within a stated tolerance.

``--from docs/results/<study> <run>`` does step 2 for a published row (tools/publish_study.py):
at a commit of main with the recorded code tree, with the folder's params.yaml and grid.yaml,
against the folder's dvc.lock and metrics.

It prints PASS, or FAIL with the first differing file, and returns 0 / 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline_src import numerics, paths
from pipeline_src.errors import MedrefError
from pipeline_src.grid import grid_document
from pipeline_src.models.folder import PROVENANCE, ModelFolder
from pipeline_src.models.weights import changed as changed_weights
from pipeline_src.provenance import cpu_hint, cpu_model, version_mismatch

GPU_METRIC_TOLERANCE = 1e-3  # absolute, on metrics in [0, 1]; declared here and in the README
# A native CPU result re-run on another CPU kind: other kernels sum in another order, and over a training the
# difference grows to about a seed's worth (issue 27: qata_10pct-supervised, 126 steps, AMD Zen 4 -> Intel
# AVX-512: per-image Dice 0.5115 -> 0.5205, 3x its seed std). So this tolerance only catches gross changes
# (absolute on metrics in [0, 1], relative above 1, e.g. HD95 in pixels); the committed studies run portable,
# whose re-runs are compared bit for bit. Declared here and in the README.
NATIVE_CPU_METRIC_TOLERANCE = 0.02


def chain(params_raw: dict[str, Any], regime: str) -> list[str]:
    """DVC stage names that ``eval@<regime>`` depends on, in execution order."""
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
    model = ModelFolder(repo / paths.model_dir(regime))
    metrics = repo / paths.metrics_file(regime)
    if (prov := model.provenance()) is not None:
        out["model"] = prov
    if metrics.exists():
        out["metrics"] = json.loads(metrics.read_text()).get("provenance")
    if not out:
        raise MedrefError(f"no provenance for regime {regime!r}: neither {model.path / PROVENANCE} nor {metrics} exists")
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


# ---- which comparison a re-run gets ------------------------------------------------------------------------------

SAME_CPU, PORTABLE, NATIVE_OTHER_CPU, GPU = "bits", "bits-portable", "metrics-native", "metrics-gpu"


def comparison(prov: dict[str, Any]) -> str:
    """How a re-run of a result with this (metrics) provenance is compared, on this machine:

    - ``bits``: on CPU, on the CPU kind it was recorded on (or one that records none): every output hash;
    - ``bits-portable``: a portable result (pipeline_src/numerics.py) on another x86-64 CPU kind: every output
      byte too, except the provenance fields that name the CPU (``cpu``);
    - ``metrics-native``: a native result from another CPU kind: the data stages' hashes, and the metrics
      within ``NATIVE_CPU_METRIC_TOLERANCE`` (weights and per-image files are not compared: other kernels, other
      bits);
    - ``metrics-gpu``: a GPU result: the metrics within ``GPU_METRIC_TOLERANCE``."""
    if not str(prov.get("device", "cpu")).startswith("cpu"):
        return GPU
    recorded = prov.get("cpu")
    if not recorded or recorded == cpu_model():
        return SAME_CPU
    return PORTABLE if numerics.recorded_portable(prov) else NATIVE_OTHER_CPU


def _drop_keys(x: Any, keys: tuple[str, ...]) -> Any:
    """A tree without ``keys`` at any depth."""
    if isinstance(x, dict):
        return {k: _drop_keys(v, keys) for k, v in x.items() if k not in keys}
    if isinstance(x, list):
        return [_drop_keys(v, keys) for v in x]
    return x


def _drop_cpu(x: Any) -> Any:
    """A provenance tree without the keys that name the machine's CPU kind."""
    return _drop_keys(x, ("cpu",))


def _same_but_cpu(a: Path, b: Path) -> str | None:
    """First file (relative; "" for a file) whose bytes differ between a and b, JSON files compared without their
    ``cpu`` keys (a portable result on another CPU kind names that CPU in its provenance, nothing else differs)."""
    def same(x: Path, y: Path) -> bool:
        if x.read_bytes() == y.read_bytes():
            return True
        if x.suffix != ".json":
            return False
        try:
            return _drop_cpu(json.loads(x.read_text())) == _drop_cpu(json.loads(y.read_text()))
        except ValueError:
            return False

    if a.is_file() or b.is_file():
        return None if a.is_file() and b.is_file() and same(a, b) else ""
    fa = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()} if a.exists() else set()
    fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()} if b.exists() else set()
    for rel in sorted(fa | fb):
        if rel not in fa or rel not in fb or not same(a / rel, b / rel):
            return rel
    return None


def _metrics_close(a: Any, b: Any, tol: float) -> str | None:
    """The first metric (dotted key) of two metrics trees that differs by more than ``tol`` (relative to the value
    when it is above 1: distances in pixels), or None. Provenance is not a metric."""
    def walk(x: Any, y: Any, key: str) -> str | None:
        if isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return f"{key or '<top>'} (keys {sorted(x.keys() ^ y.keys())})"
            return next((d for k in sorted(x) if k != "provenance" and (d := walk(x[k], y[k], f"{key}.{k}".lstrip(".")))),
                        None)
        if isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return key
            return next((d for i, (u, v) in enumerate(zip(x, y, strict=True)) if (d := walk(u, v, f"{key}[{i}]"))), None)
        if isinstance(x, float) or isinstance(y, float):
            try:
                ok = abs(float(x) - float(y)) <= tol * max(1.0, abs(float(x)), abs(float(y)))
            except (TypeError, ValueError):
                ok = False
            return None if ok else f"{key}: {x!r} -> {y!r}"
        return None if x == y else f"{key}: {x!r} -> {y!r}"

    return walk(a, b, "")


# ---- verify ------------------------------------------------------------------------------------------------------


def _rerun_env(prov: dict[str, Any], clone: Path) -> dict[str, str]:
    """The re-run's environment: the numerics the result recorded (its caps, which may be a user's own), not this
    process's or the caller's $MEDREF_CPU_NUMERICS; the re-run's params say the mode. ``clone``'s own pipeline_src
    comes first on PYTHONPATH: the venv's editable install maps ``pipeline_src`` to the checkout it was made in, so
    without it the stages would run that checkout's code (HEAD) while dvc.lock hashes the clone's (the commit)."""
    env = {k: v for k, v in os.environ.items() if k not in (*numerics.RECORDED, numerics.ENV, numerics.MARK)}
    caps = ((prov.get("numerics") or {}).get("caps") or {})
    env.update({k: v for k, v in caps.items() if k in numerics.PORTABLE_ENV and v})
    env["MEDREF_LAUNCHER"] = "local"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(clone), env.get("PYTHONPATH")) if p)
    return env


def _code_in(clone: Path, env: dict[str, str]) -> str | None:
    """Why the re-run would not run ``clone``'s own pipeline_src (None when it does)."""
    # -P: no cwd on sys.path, as the console script `medref` that the stages run
    res = subprocess.run([sys.executable, "-P", "-c", "import pipeline_src; print(pipeline_src.__file__)"], cwd=clone,
                         env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return f"pipeline_src does not import in the clone ({res.stderr.strip()[-300:]})"
    got = Path(res.stdout.strip()).resolve().parent
    return None if got == (clone / "pipeline_src").resolve() else f"pipeline_src imports from {got}, not the clone"


def _link_relative_sources(params_raw: dict[str, Any], origin: Path, clone: Path) -> None:
    """Dataset sources given relative to the repository and outside it (``../shared/data/...``) resolve against
    the origin repository in the scratch clone too: link their top folder beside the clone."""
    for ds in (params_raw.get("datasets") or {}).values():
        src = str((ds or {}).get("source") or "")
        parts = Path(src).parts
        if not src.startswith("..") or "://" in src or len(parts) < 2:
            continue
        top = parts[1]  # ../<top>/...
        link, target = clone.parent / top, (origin.parent / top).resolve()
        if target.exists() and not link.exists():
            link.symlink_to(target, target_is_directory=True)


def _compare(stages: list[str], lock: dict, new: dict, prov: dict, how: str, clone: Path, regime: str,
             recorded: Path | None, recorded_metrics: Path, log, same_commit: bool = True) -> bool:
    """Compare the re-run's dvc.lock (and files) with the recorded one under comparison ``how``. ``recorded`` is
    the workspace holding the recorded outputs; None for a published folder, which holds dvc.lock and the metrics
    only: there, when the bits are expected but the training outputs' folder hashes cannot match (another CPU kind
    names itself in their provenance, or another commit of main with the same code names that commit), the
    model's sha256 and the metrics are compared exactly instead."""
    made_by_chain = {e["path"] for s in stages for e in lock[s].get("outs", [])}
    metrics_path = paths.metrics_file(regime).as_posix()
    heavy = {f"train@{regime}", f"eval@{regime}"}  # float kernels: their bits depend on the CPU's numerics
    heavy_outs = {metrics_path, paths.model_dir(regime).as_posix(), paths.eval_dir(regime).as_posix()}
    exact_by_sha = recorded is None and (how == PORTABLE or (how == SAME_CPU and not same_commit))
    for stage in stages:
        for kind in ("deps", "outs"):
            old_e = {e["path"]: e for e in lock[stage].get(kind, [])}
            new_e = {e["path"]: e for e in new.get(stage, {}).get(kind, [])}
            for path in sorted(old_e.keys() | new_e.keys()):
                if path in old_e and path in new_e and _out_hash(old_e[path]) == _out_hash(new_e[path]):
                    continue
                if kind == "deps" and path in made_by_chain:
                    continue  # an earlier stage's output: judged there, under this same comparison
                if kind == "outs" and how == GPU and recorded is not None and _gpu_tolerated(prov, recorded / path,
                                                                                              clone / path):
                    log(f"{stage}: {path} within the GPU tolerance {GPU_METRIC_TOLERANCE}")
                    continue
                if kind == "outs" and stage in heavy:
                    if how == PORTABLE and recorded is not None:
                        rel = _same_but_cpu(recorded / path, clone / path)
                        if rel is None:
                            continue
                        log(f"FAIL: {stage}: out {path}{'/' + rel if rel else ''} differs from the recorded bytes "
                            "(a portable result must be bit-identical on any x86-64 CPU)")
                        return False
                    if exact_by_sha and path in heavy_outs:
                        continue  # the model's sha256 and the metrics are compared below
                    if how in (NATIVE_OTHER_CPU, GPU):
                        continue  # other kernels, other bits: the metrics are compared below
                rel = _first_diff(recorded / path, clone / path) if kind == "outs" and recorded is not None else None
                where = f"{path}/{rel}" if rel else path
                hint = cpu_hint(prov.get("cpu")) if kind == "outs" and how == SAME_CPU else ""
                if kind == "deps" and (prov.get("git") or {}).get("dirty"):
                    hint += " (the recorded run's working tree had uncommitted changes)"
                log(f"FAIL: {stage}: {kind[:-1]} {where} differs from the recorded hash in dvc.lock{hint}")
                return False
    old_m = json.loads(recorded_metrics.read_text())
    new_m = json.loads((clone / metrics_path).read_text())
    if how == PORTABLE or exact_by_sha:
        want = (old_m.get("provenance") or {}).get("inputs", {}).get("model")
        got = (new_m.get("provenance") or {}).get("inputs", {}).get("model")
        if want != got:
            log(f"FAIL: train@{regime}: model.pt sha256 {got} != recorded {want}"
                + (" (a portable result must be bit-identical on any x86-64 CPU)" if how == PORTABLE else ""))
            return False
        if _drop_keys(old_m, ("cpu", "git")) != _drop_keys(new_m, ("cpu", "git")):
            diff = _metrics_close(old_m, new_m, 0.0) or "provenance"
            log(f"FAIL: eval@{regime}: {metrics_path} differs ({diff}); the bits were expected")
            return False
        where = (f"portable result recorded on {prov.get('cpu')}, re-run on {cpu_model()}" if how == PORTABLE
                 else "same CPU kind, another commit of main with the same code")
        log(f"compared bits ({where}): model.pt sha256 {got[:12] if got else None} and the metrics identical, every "
            "other output hash of the chain identical")
    elif how in (NATIVE_OTHER_CPU, GPU):
        tol = NATIVE_CPU_METRIC_TOLERANCE if how == NATIVE_OTHER_CPU else GPU_METRIC_TOLERANCE
        diff = _metrics_close(old_m, new_m, tol)
        why = (f"a native CPU result recorded on {prov.get('cpu')}, re-run on {cpu_model()}: other kernels, other "
               "bits" if how == NATIVE_OTHER_CPU else f"a result recorded on {prov.get('device')}")
        if diff:
            log(f"FAIL: eval@{regime}: {diff} is beyond the tolerance {tol} ({why})")
            return False
        log(f"compared metrics within {tol} ({why}; weights and per-image outputs not compared byte for byte); "
            "the data stages' outputs are bit-identical")
    else:
        log("compared bits: every output hash of the chain")
    return True


def verify(regime: str, repo: Path = Path("."), keep: bool = False, log=print) -> bool:
    """``medref verify <regime>``: the workspace's recorded result (dvc.lock + outputs) against a re-run."""
    repo = repo.resolve()
    _require_pipeline(repo)
    params_raw = yaml.safe_load((repo / "params.yaml").read_text())
    stages = chain(params_raw, regime)
    lock = _load_lock(repo / "dvc.lock")
    failure = (_unrecorded(stages, lock, "dvc.lock", f"; run `dvc repro eval@{regime}` first")
               or _changed_weights(regime, repo)  # 0. the weights files train read, against their recorded digests
               or _workspace_change(stages, lock, params_raw, repo))  # 1. workspace vs dvc.lock
    if failure:
        log(failure)
        return False
    log(f"workspace matches dvc.lock for {len(stages)} stages")
    return _rerun_recorded(regime, repo, lock, keep=keep, log=log)  # 2. re-run from scratch at the recorded commit


def _require_pipeline(repo: Path) -> None:
    """An error unless ``repo`` is the repository's root (it holds dvc.yaml)."""
    if not (repo / paths.PIPELINE_FILE).is_file():
        raise MedrefError(f"{repo}: no {paths.PIPELINE_FILE} here or above; run `medref verify` inside the repository")


def _unrecorded(stages: list[str], lock: dict, lock_file: str | Path, hint: str = "") -> str | None:
    """The FAIL line when ``lock`` (read from ``lock_file``) lacks a stage of the chain: nothing recorded to compare."""
    missing = [s for s in stages if s not in lock]
    if missing:
        return f"FAIL: {lock_file} has no record of {', '.join(missing)}{hint}"
    return None


def _changed_weights(regime: str, repo: Path) -> str | None:
    """Step 0: the FAIL line for the first pretrained weights file train read whose digest differs from the recorded
    one (a file replaced behind the same path changes the model while every param stays the same)."""
    model_prov = provenance(regime, repo).get("model") or {}
    lines = changed_weights(model_prov.get("weights"), repo)
    if lines:
        return f"FAIL: train@{regime}: weights {lines[0]}; re-run `dvc repro train@{regime}` (or restore the file)"
    return None


def _workspace_change(stages: list[str], lock: dict, params_raw: dict[str, Any], repo: Path) -> str | None:
    """Step 1: the FAIL line for the first way the workspace differs from dvc.lock for the chain (``dvc status``)."""
    st = _dvc(["status", "--json", *stages], cwd=repo)
    if st.returncode != 0:
        raise MedrefError(f"dvc status failed: {st.stderr.strip()}")
    return next(_status_failures(stages, json.loads(st.stdout or "{}"), lock, params_raw), None)


def _status_failures(stages: list[str], status: dict, lock: dict, params_raw: dict[str, Any]) -> Iterator[str]:
    """One FAIL line per change ``dvc status --json`` reports, in stage order (lazily: the caller names the first)."""
    for stage in stages:
        for change in status.get(stage, []):
            if not isinstance(change, dict):
                yield f"FAIL: {stage}: {change}"
                continue
            for kind, items in change.items():
                for path, what in (items.items() if isinstance(items, dict) else ()):
                    what = _what_changed(what, lock[stage], path, params_raw)
                    yield f"FAIL: {stage}: {kind}: {path} ({what}) differs from dvc.lock"


def _what_changed(what: Any, locked: dict, path: str, params_raw: dict[str, Any]) -> Any:
    """What ``dvc status`` says of one path, with a params file's groups (``{"eval": "modified"}``) as the leaf
    keys that changed against the stage's ``locked`` record."""
    if not isinstance(what, dict):
        return what
    recorded = locked.get("params", {}).get(path, {})
    keys = [k for group in what for k in _changed_keys(group, recorded.get(group), _dotted(params_raw, group))]
    return ", ".join(keys or [f"{k} {v}" for k, v in what.items()])


def _rerun_recorded(regime: str, repo: Path, lock: dict, *, keep: bool, log) -> bool:
    """Step 2: the workspace's chain re-run from scratch at the commit its result records (none from dirty code)."""
    prov = provenance(regime, repo).get("metrics") or {}
    git = prov.get("git") or {}
    if git.get("dirty"):
        log("FAIL: the result was produced from a working tree with uncommitted code changes; commit and re-run it")
        return False
    return _rerun(regime, repo, git.get("commit"), {"params.yaml": repo / "params.yaml"}, lock, prov,
                  recorded=repo, recorded_metrics=repo / paths.metrics_file(regime), keep=keep, log=log)


def _rerun(regime: str, origin: Path, commit: str | None, files: dict[str, Path], lock: dict, prov: dict, *,
           recorded: Path | None, recorded_metrics: Path, keep: bool, log) -> bool:
    params_raw = yaml.safe_load(files["params.yaml"].read_text())
    stages = chain(params_raw, regime)
    how = comparison(prov)
    differ = version_mismatch(prov.get("versions"))
    if differ:  # before minutes of re-running: every output's provenance names these, so no hash could match
        log(f"FAIL: this environment has other versions than the recorded run ({'; '.join(differ)}, recorded -> "
            "here). Every output records them in its provenance, so no output's bytes could match (and another "
            "library version computes other numbers); re-check from a venv built from requirements.lock "
            "(`make venv`) with the recorded Python (`make venv PYTHON=python3.X`)")
        return False
    scratch = Path(tempfile.mkdtemp(prefix=f"medref-verify-{regime}-"))
    try:
        clone = scratch / "repo"
        subprocess.run(["git", "clone", "-q", "--shared", str(origin), str(clone)], check=True)
        if commit:
            subprocess.run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", commit], cwd=clone, check=True)
        for rel, src in files.items():
            shutil.copy2(src, clone / rel)
        _link_relative_sources(params_raw, origin, clone)
        log(f"re-running {' -> '.join(stages)} in {clone} (commit {commit or 'HEAD'}; comparison: {how})")
        env = _rerun_env(prov, clone)
        wrong = _code_in(clone, env)
        if wrong:
            log(f"FAIL: the re-run would not run the recorded code: {wrong}")
            return False
        run = _dvc(["repro", "--no-run-cache", f"eval@{regime}"], cwd=clone, env=env)
        if run.returncode != 0:
            log(f"FAIL: re-run failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
            return False
        new = _load_lock(clone / "dvc.lock")
        same_commit = not commit or commit == (prov.get("git") or {}).get("commit")
        if not _compare(stages, lock, new, prov, how, clone, regime, recorded, recorded_metrics, log, same_commit):
            return False
        log(f"PASS: {regime}: {len(stages)} stages re-run ({how})")
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


# ---- verify --from a published study folder ----------------------------------------------------------------------

PUBLISH_RECORD = "publish.json"  # written by tools/publish_study.py: the commit of main, the code tree, the mode


def _git_out(repo: Path, *args: str, input: str | None = None) -> str | None:
    res = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, input=input)
    return res.stdout.strip() if res.returncode == 0 else None


def main_ref(repo: Path) -> str:
    """The repository's main branch: ``main``, else ``origin/main`` (a clone that has not checked it out)."""
    for ref in ("main", "origin/main"):
        if _git_out(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"):
            return ref
    raise MedrefError(f"{repo}: no branch main (nor origin/main): a published result is re-checked at a commit of main")


def commit_in_main(repo: Path, commit: str | None, code_tree: str | None) -> tuple[str | None, str]:
    """A commit of main to re-run a published result at: the recorded one when main has it, else the first commit
    of main whose ``pipeline_src`` tree is the recorded code tree. (None, why) when there is none."""
    ref = main_ref(repo)
    if commit and _git_out(repo, "cat-file", "-e", f"{commit}^{{commit}}") is not None \
            and subprocess.run(["git", "merge-base", "--is-ancestor", commit, ref], cwd=repo).returncode == 0:
        return commit, f"the recorded commit {commit[:12]}, in {ref}"
    if code_tree:
        changes = (_git_out(repo, "log", "--format=%H", "--reverse", ref, "--", "pipeline_src") or "").split()
        trees = (_git_out(repo, "cat-file", "--batch-check=%(objectname)",
                          input="".join(f"{c}:pipeline_src\n" for c in changes)) or "").split("\n")
        for c, t in zip(changes, trees, strict=False):
            if t.strip() == code_tree:
                return c, (f"commit {c[:12]} of {ref}, which has the recorded code tree {code_tree[:12]} (the recorded "
                           f"commit {(commit or '?')[:12]} is not in {ref})")
    return None, (f"the recorded commit {(commit or 'none')[:12]} is not in {ref}, and no commit of {ref} has the "
                  f"recorded pipeline_src tree {(code_tree or 'none')[:12]}")


def verify_from(folder: Path, regime: str, repo: Path = Path("."), keep: bool = False, log=print) -> bool:
    """``medref verify --from docs/results/<study> <run>``: re-run one row of a published study in a scratch clone,
    at a commit of main with the recorded code, with the recorded params.yaml and grid.yaml, and compare it with the
    recorded dvc.lock and metrics (bits, or the metrics within a tolerance: :func:`comparison`)."""
    repo, folder = repo.resolve(), folder.resolve()
    _require_pipeline(repo)
    metrics = _published_metrics(folder, regime)
    prov = json.loads(metrics.read_text()).get("provenance") or {}
    record = json.loads((folder / PUBLISH_RECORD).read_text()) if (folder / PUBLISH_RECORD).is_file() else {}
    if (prov.get("git") or {}).get("dirty"):
        # a study runs with its own params.yaml and grid.yaml, which dirty the tree and which the re-run restores;
        # any other uncommitted change to code the chain imports shows as a code dep that differs from dvc.lock
        log("note: the recorded run's working tree had uncommitted changes; the re-run's dvc.lock judges whether "
            "any of them reached the chain (every code dep's hash is compared)")
    commit, why = _published_commit(repo, folder, regime, record, prov)
    lock = _load_lock(folder / "dvc.lock")
    stages = chain(yaml.safe_load((folder / "params.yaml").read_text()), regime)
    failure = _unrecorded(stages, lock, folder / "dvc.lock")
    if failure:
        log(failure)
        return False
    log(f"{folder.name}/{regime}: re-running at {why}; recorded numerics "
        f"{(prov.get('numerics') or {}).get('mode', 'native (not recorded)')} on {prov.get('cpu')}")
    files = {"params.yaml": folder / "params.yaml", "workflow/grid.yaml": folder / "grid.yaml"}
    return _rerun(regime, repo, commit, files, lock, prov, recorded=None, recorded_metrics=metrics, keep=keep,
                  log=log)


def _published_metrics(folder: Path, regime: str) -> Path:
    """The run's metrics file in a published study folder; an error naming the files the folder lacks."""
    metrics = folder / "metrics" / f"{regime}.json"
    need = [folder / "params.yaml", folder / "grid.yaml", folder / "dvc.lock", metrics]
    absent = [str(p.relative_to(folder)) for p in need if not p.is_file()]
    if absent:
        raise MedrefError(f"{folder}: not a published study folder with run {regime!r} (missing: {', '.join(absent)};"
                          " tools/publish_study.py writes them)")
    return metrics


def _published_commit(repo: Path, folder: Path, regime: str, record: dict, prov: dict) -> tuple[str, str]:
    """The commit of main to re-run a published row at, and why that one; an error when main has none."""
    tree = _code_tree(folder, record)
    commit, why = commit_in_main(repo, record.get("commit") or (prov.get("git") or {}).get("commit"), tree)
    if commit is None:
        hint = "" if record else (" This folder was published before publish.json existed (its commit was never "
                                  "merged); re-publish the study from a commit of main with tools/publish_study.py.")
        raise MedrefError(f"{folder}: cannot re-run {regime}: {why}.{hint}")
    return commit, why


def _code_tree(folder: Path, record: dict) -> str | None:
    """The recorded pipeline_src tree: publish.json's, else PROVENANCE.md's (folders published before publish.json)."""
    tree = record.get("code_tree")
    if not tree and (folder / "PROVENANCE.md").is_file():
        m = re.search(r"git tree `([0-9a-f]{40})`", (folder / "PROVENANCE.md").read_text())
        tree = m[1] if m else None
    return tree
