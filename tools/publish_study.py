"""Copy one finished study out of the repo that ran it into docs/results/<name>/, with its provenance.

    .venv/bin/python tools/publish_study.py ../study-real qata docs/results/qata-real --log ../real.log

A committed result must come out of pipeline stages and be re-checkable from hashes, so this copies only what
`dvc repro study@<study>` wrote (studies/<study>/, studies/<study>.json, the study's metrics/<run>.json) together
with the exact inputs of that run: params.yaml, workflow/grid.yaml and dvc.lock (every stage's command, params
and dep/out md5s). PROVENANCE.md says which commit ran it, in which CPU numerics mode, and that one command
re-checks any row: `medref verify --from <dest> <run>` (publish.json holds the same facts for it to read).
It refuses a repo whose tracked files differ from its commit, whose `dvc status` says the study is stale, or
whose commit is not in main (`git merge-base --is-ancestor <commit> main`): a committed result must name a
commit anyone can check out from a clone of medref.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _wall_times(log: Path | None) -> list[tuple[str, int, str]]:
    """(run, seconds, load average at its end) from the driver log's '=== hh:mm:ss done eval@<run> in N s' lines."""
    if log is None:
        return []
    pat = re.compile(r"^=== \S+ done eval@(\S+) in (\d+) s load (.*)$")
    return [(m[1], int(m[2]), m[3]) for line in log.read_text().splitlines() if (m := pat.match(line))]


def _made_at_another_commit(repo: Path, lock: dict, commit: str, keys: set[str]) -> list[str]:
    """The study's (``keys``: its datasets, splits and runs) data stages' JSON outputs whose provenance names a commit other than ``commit`` (DVC keeps an output
    made at an earlier commit while its deps are unchanged). train/eval outputs are left out: verify compares the
    model's sha256 and the metrics without their git record, so their recorded commit does not matter."""
    found = []
    for name, stage in (lock.get("stages") or {}).items():
        kind, _, key = name.partition("@")
        if kind in ("train", "eval", "study", "report") or key not in keys:
            continue
        for out in stage.get("outs", []):
            path = repo / out["path"]
            files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
            for f in files:
                if f.suffix != ".json":
                    continue
                try:
                    git = (json.loads(f.read_text()).get("provenance") or {}).get("git") or {}
                except (ValueError, AttributeError):
                    continue  # not a JSON object with a provenance record: nothing names a commit
                if git.get("commit") and git["commit"] != commit:
                    found.append(f"{name}: {f.relative_to(repo)} says {git['commit'][:12]}")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path, help="the repo (a clone of medref) that ran `dvc repro study@<study>`")
    ap.add_argument("study")
    ap.add_argument("dest", type=Path, help="e.g. docs/results/qata-real")
    ap.add_argument("--log", type=Path, help="the driver log with per-run wall times (optional)")
    ap.add_argument("--note", default="", help="one paragraph: what this study is and how it was sized")
    ap.add_argument("--main", default="main", help="the branch the commit must be in (default: main)")
    args = ap.parse_args()
    repo = args.repo.resolve()

    commit = _git(repo, "rev-parse", "HEAD")
    in_main = subprocess.run(["git", "merge-base", "--is-ancestor", commit, args.main], cwd=repo,
                             capture_output=True, text=True)
    if in_main.returncode != 0:
        sys.exit(f"{repo}: HEAD {commit[:12]} is not in {args.main} ({in_main.stderr.strip() or 'not an ancestor'});"
                 f" publish only results made at a commit of {args.main}, so anyone can re-check them from a clone")

    # params.yaml and workflow/grid.yaml may differ from the commit: a study is the code of a commit of main run
    # with its own params (the real data, its grid), and both files are copied into the result, which is what
    # `medref verify --from` re-runs with. Any other difference is code that no commit of main holds.
    dirty = [ln for ln in _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
             if not ln.endswith(("dvc.lock", "params.yaml", "workflow/grid.yaml"))]
    if dirty:
        sys.exit(f"{repo}: tracked files differ from the commit ({', '.join(dirty)}); commit them first")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    dvc = repo / ".venv/bin/dvc"  # the repo's own venv, else the dvc beside this python (a scratch clone has none)
    dvc = dvc if dvc.exists() else Path(shutil.which("dvc") or Path(sys.executable).with_name("dvc"))
    status = subprocess.run([str(dvc), "status", f"study@{args.study}"], cwd=repo, env=env,
                            capture_output=True, text=True)
    if status.returncode != 0 or "changed" in status.stdout or "modified" in status.stdout:
        sys.exit(f"{repo}: `dvc status study@{args.study}` is not clean:\n{status.stdout}{status.stderr}")

    grid = yaml.safe_load((repo / "workflow/grid.yaml").read_text())
    runs = grid["study_runs"][args.study]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    keys = {v for r in runs for v in (grid["runs"][r]["dataset"], grid["runs"][r]["split"], r)}
    stale = _made_at_another_commit(repo, lock, commit, keys)
    if stale:
        sys.exit(f"{repo}: outputs made at another commit ({'; '.join(stale)}): `medref verify --from` re-runs at "
                 f"{commit[:12]} and would write that commit into them, so their recorded hashes could not match. "
                 "Re-make them at this commit (`dvc repro --force -s <stage>` for each), then publish")
    summary = json.loads((repo / "studies" / f"{args.study}.json").read_text())

    args.dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.dest.name}.", dir=args.dest.parent))
    try:
        shutil.copytree(repo / "studies" / args.study, tmp / "study")
        shutil.copy2(repo / "studies" / f"{args.study}.json", tmp / "study.json")
        for f in ("params.yaml", "dvc.lock", "workflow/grid.yaml"):
            shutil.copy2(repo / f, tmp / Path(f).name)
        (tmp / "metrics").mkdir()
        for r in runs:
            shutil.copy2(repo / "metrics" / f"{r}.json", tmp / "metrics" / f"{r}.json")

        code_tree = _git(repo, "rev-parse", "HEAD:pipeline_src")
        subject = _git(repo, "log", "-1", "--format=%s")
        times = _wall_times(args.log)
        stage = lock["stages"][f"study@{args.study}"]
        modes = sorted({str(((json.loads((tmp / "metrics" / f"{r}.json").read_text()).get("provenance") or {})
                             .get("numerics") or {}).get("mode", "native (not recorded)")) for r in runs})
        cpus = sorted({str((json.loads((tmp / "metrics" / f"{r}.json").read_text()).get("provenance") or {})
                           .get("cpu")) for r in runs})
        (tmp / "publish.json").write_text(json.dumps(
            {"study": args.study, "commit": commit, "branch": args.main, "code_tree": code_tree,
             "cpu_numerics": modes, "cpu": cpus}, indent=2, sort_keys=True) + "\n")
        lines = [
            f"# Provenance: study `{args.study}` ({args.dest.name})", "",
            args.note, "",
            f"- Produced by `dvc repro study@{args.study}` at medref commit `{commit}` (\"{subject}\"), which is in",
            f"  `{args.main}`; that commit's",
            "  params.yaml and workflow/grid.yaml are copied here, and its dvc.lock records every stage's command,",
            "  params and input/output md5s.",
            f"- The code: git tree `{code_tree}` of `pipeline_src/` (`git rev-parse <commit>:pipeline_src` on any",
            "  commit gives the same hash exactly when its code is the same).",
            f"- CPU numerics: {', '.join(modes)} (`base.cpu_numerics`; portable = the same bits on any x86-64 CPU),"
            f" on {', '.join(cpus)}.",
            f"- Runs: {len(runs)} ({', '.join(runs)}).",
            "- The study stage's outputs: " + ", ".join(f"`{o['path']}` md5 {o.get('md5')}" for o in stage["outs"]),
            "- Files: `study/` (study.md, table.csv, dice_vs_fraction.csv/.png, as the stage wrote them),",
            "  `study.json` (the stage's metric), `metrics/<run>.json` (each eval stage's metrics with provenance).",
            "  `publish.json`: the commit, code tree and numerics for `medref verify --from`.",
            "", "## Re-check a row", "",
            "On a clone of medref with `make venv` done (the data must be where params.yaml's datasets say), any row:",
            "",
            "```bash",
            f".venv/bin/medref verify --from {args.dest} {runs[0]}",
            "```", "",
            "It re-runs that row's chain in a scratch clone at this commit (a commit of main), with the params.yaml",
            "and grid.yaml copied here, and compares with dvc.lock and `metrics/<run>.json` here: bit for bit for a",
            "portable result (or on the same CPU kind as the one named above), the metrics",
            "within the stated tolerance for a native result on another CPU kind. It prints which.", "",
        ]
        if times:
            total = sum(t for _, t, _ in times)
            lines += ["## Wall time (2 CPU cores, one run at a time)", "",
                      f"{len(times)} `dvc repro eval@<run>` calls, run one after another: **{total / 60:.1f} min** in all "
                      "(each includes its train stage, and the first ones the upstream data stages).", "",
                      "| run | wall s | load average at its end (1, 5, 15 min) |", "|---|---|---|"]
            lines += [f"| {r} | {t} | {ld} |" for r, t, ld in times]
        verdicts = summary.get("verdicts") or {}
        if verdicts:
            lines += ["", "## Verdicts (copied from study.json)", ""]
            lines += [f"- **{test}**: {v['verdict']}. {v['evidence']}" for test, v in verdicts.items()]
        (tmp / "PROVENANCE.md").write_text("\n".join(lines) + "\n")
        if args.dest.exists():
            shutil.rmtree(args.dest)
        tmp.rename(args.dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[publish] {args.study}: {len(runs)} runs -> {args.dest}")


if __name__ == "__main__":
    main()
