"""Dev-time tool: the share of the real report texts (../shared/data) that the text parser gives a region vector.

    PYTHONPATH=. .venv/bin/python tools/parser_coverage.py

Not part of the runtime package: no stage runs it.
"""

from __future__ import annotations

from pipeline_src.labels.text_parser import parse


def main() -> None:
    """Print the share of real texts (../shared/data) that get a region vector."""
    import csv
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    files = {
        "qata/train.csv": (root / "qata_sample/text/train.csv", ",", "Description"),
        "qata/test.csv": (root / "qata_sample/text/test.csv", ",", "Description"),
    }
    for name in ("train", "val", "test"):
        files[f"mosmed/{name}.csv"] = (root / f"mosmed_text/{name}.csv", ";", "text")
    for name, (path, sep, col) in files.items():
        with open(path, newline="") as f:
            texts = [row[col] for row in csv.DictReader(f, delimiter=sep, quoting=csv.QUOTE_MINIMAL)]
        ps = [parse(t) for t in texts]
        known = sum(p.regions is not None for p in ps)
        zeros = sum(p.regions == (0,) * 6 for p in ps)
        counts = sum(p.n_areas is not None for p in ps)
        print(f"{name:18s} n={len(ps):5d} regions={known / len(ps):.4f} (all-zero {zeros}) n_areas={counts / len(ps):.4f}")


if __name__ == "__main__":
    main()
