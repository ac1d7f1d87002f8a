"""Run one study's runs one at a time through DVC, seed by seed, logging each run's wall time and load average.

    .venv/bin/python tools/drive_study.py qata --log ../real.log      # in the clone that runs the study

Each run is `dvc repro eval@<run>` (its train stage and, the first time, the data stages come with it), in the
order seed 0 of every method, then seed 1, then seed 2, so that a study cut off part-way holds whole seeds; then
`dvc repro study@<study>`. Finished runs are cached by DVC, so calling it again continues where it stopped. The log
lines `=== hh:mm:ss done eval@<run> in N s load a b c` are what tools/publish_study.py reads for PROVENANCE.md.
Not a result path: the results are the DVC stages' outputs; this only orders the calls and times them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--log", type=Path, required=True)
    args = ap.parse_args()
    grid = yaml.safe_load(Path("workflow/grid.yaml").read_text())
    runs = [(r["seed"], i, name) for i, (name, r) in enumerate(grid["runs"].items()) if r.get("study") == args.study]
    if not runs:
        print(f"drive_study: workflow/grid.yaml has no runs of study {args.study!r} (run `medref grid`)", file=sys.stderr)
        return 1
    dvc = str(Path(sys.executable).parent / "dvc")
    with args.log.open("a") as log:
        def say(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        say(f"=== {time.strftime('%H:%M:%S')} start study {args.study}: {len(runs)} runs")
        for _, _, name in sorted(runs):
            t0 = time.time()
            rc = subprocess.call([dvc, "repro", f"eval@{name}"], stdout=log, stderr=subprocess.STDOUT)
            if rc:
                say(f"=== {time.strftime('%H:%M:%S')} FAILED eval@{name} (rc {rc})")
                return rc
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            say(f"=== {time.strftime('%H:%M:%S')} done eval@{name} in {round(time.time() - t0)} s load {load}")
        rc = subprocess.call([dvc, "repro", f"study@{args.study}"], stdout=log, stderr=subprocess.STDOUT)
        say(f"=== {time.strftime('%H:%M:%S')} study@{args.study} rc {rc}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
