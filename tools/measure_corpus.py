"""Dev-time tool: recompute the text statistics that pipeline_src/data/synthetic.py's tables were measured with.

    PYTHONPATH=. .venv/bin/python tools/measure_corpus.py data/raw/qata_sample/text/train.csv ...

Not part of the runtime package: no stage runs it; it only explains where ``_QATA_JOINT`` and its siblings came from.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

from pipeline_src.data.synthetic import THIRDS


def measure_corpus(csv_paths: list[Path]) -> dict:
    """The joint side/third table and the word counts, recomputed from real text CSVs (``,`` or ``;`` separated)."""

    joint: Counter = Counter()
    counts: Counter = Counter()
    for p in csv_paths:
        with open(p, newline="") as f:
            sep = ";" if f.readline().count(";") else ","
            for row in csv.reader(f, delimiter=sep):
                parts = [x.strip() for x in row[1].split(",")] if sep == "," else [x.strip() for x in row[1].split(",")]
                if len(parts) < 3:
                    continue
                sides = {}
                for ph in parts[2].rstrip(". ").split(" and "):
                    w = ph.split()
                    side = "L" if "left" in w else "R" if "right" in w else None
                    code = "A" if "all" in w else "".join(c for t, c in zip(THIRDS, "UML", strict=True) if t in w)
                    if side and code:
                        sides[side] = code
                word = parts[1].split()[0] if parts[1] else ""
                if sides:
                    joint[(parts[0][:1].upper(), sides.get("L", ""), sides.get("R", ""))] += 1
                    counts[(len(sides), word)] += 1
    return {"joint": joint, "counts": counts}


if __name__ == "__main__":
    res = measure_corpus([Path(p) for p in sys.argv[1:]])
    for name, counter in res.items():
        print(name)
        for key, n in counter.most_common():
            print(f"  {key}: {n}")
