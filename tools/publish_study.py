"""Copy one finished study out of the repo that ran it into docs/results/<name>/, with its provenance.

    .venv/bin/python tools/publish_study.py ../study-real qata docs/results/qata-real --log ../real.log

A committed result must come out of pipeline stages and be re-checkable from hashes, so this copies only what
`dvc repro study@<study>` wrote (studies/<study>/, studies/<study>.json, the study's metrics/<run>.json) together
with the exact inputs of that run: params.yaml, workflow/grid.yaml and dvc.lock (every stage's command, params
and dep/out md5s). PROVENANCE.md says which commit ran it and how to re-check any row with `medref verify`.
It refuses a repo whose tracked files differ from its commit, or whose `dvc status` says the study is stale.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path, help="the repo (a clone of medref) that ran `dvc repro study@<study>`")
    ap.add_argument("study")
    ap.add_argument("dest", type=Path, help="e.g. docs/results/qata-real")
    ap.add_argument("--log", type=Path, help="the driver log with per-run wall times (optional)")
    ap.add_argument("--note", default="", help="one paragraph: what this study is and how it was sized")
    args = ap.parse_args()
    repo = args.repo.resolve()

    dirty = [ln for ln in _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
             if not ln.endswith("dvc.lock")]
    if dirty:
        sys.exit(f"{repo}: tracked files differ from the commit ({', '.join(dirty)}); commit them first")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    status = subprocess.run([str(repo / ".venv/bin/dvc"), "status", f"study@{args.study}"], cwd=repo, env=env,
                            capture_output=True, text=True)
    if status.returncode != 0 or "changed" in status.stdout or "modified" in status.stdout:
        sys.exit(f"{repo}: `dvc status study@{args.study}` is not clean:\n{status.stdout}{status.stderr}")

    grid = yaml.safe_load((repo / "workflow/grid.yaml").read_text())
    runs = grid["study_runs"][args.study]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
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

        commit = _git(repo, "rev-parse", "HEAD")
        code_tree = _git(repo, "rev-parse", "HEAD:pipeline_src")
        subject = _git(repo, "log", "-1", "--format=%s")
        times = _wall_times(args.log)
        stage = lock["stages"][f"study@{args.study}"]
        lines = [
            f"# Provenance: study `{args.study}` ({args.dest.name})", "",
            args.note, "",
            f"- Produced by `dvc repro study@{args.study}` at medref commit `{commit}` (\"{subject}\"); that commit's",
            "  params.yaml and workflow/grid.yaml are copied here, and its dvc.lock records every stage's command,",
            "  params and input/output md5s.",
            f"- The code: git tree `{code_tree}` of `pipeline_src/` (`git rev-parse <commit>:pipeline_src` on any",
            "  commit gives the same hash exactly when its code is the same).",
            f"- Runs: {len(runs)} ({', '.join(runs)}).",
            "- The study stage's outputs: " + ", ".join(f"`{o['path']}` md5 {o.get('md5')}" for o in stage["outs"]),
            "- Files: `study/` (study.md, table.csv, dice_vs_fraction.csv/.png, as the stage wrote them),",
            "  `study.json` (the stage's metric), `metrics/<run>.json` (each eval stage's metrics with provenance).",
            "", "## Re-check a row", "",
            "On a clone of medref (the data must be where params.yaml's datasets say):", "",
            "```bash",
            f"cp {args.dest}/params.yaml params.yaml && .venv/bin/medref grid",
            f".venv/bin/medref verify {runs[0]}     # re-runs its chain in a scratch copy, compares outputs",
            f".venv/bin/dvc repro study@{args.study}  # or the whole study (cached runs are not re-run)",
            "```", "",
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
