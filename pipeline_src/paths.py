"""Where every stage reads and writes, relative to the repository root.

dvc.yaml, the Snakemake rules and the CLI defaults all use these same paths; a test
checks that the two engines agree. The repository root is the folder holding dvc.yaml:
``medref`` started in a sub-folder of it runs from there (``repo_root``), so a default output
never lands in a second ``data/`` tree beside the caller.

    python -m pytest tests/test_bad_input_cli.py
"""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
SHARDS = Path("data/shards")
LABELS = Path("data/labels")
SPLITS = Path("data/splits")
MODELS = Path("models")
METRICS = Path("metrics")
EVAL = Path("eval")
REPORTS = Path("reports")
STUDIES = Path("studies")
# Checkpoints and submitit folders live outside DVC outputs: DVC deletes a stage's outs
# before it runs, and a resumable run must find its last checkpoint again.
RUNS = Path("runs")
PIPELINE_FILE = "dvc.yaml"


def repo_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds dvc.yaml, or None."""
    start = start.absolute()
    return next((d for d in (start, *start.parents) if (d / PIPELINE_FILE).is_file()), None)


def raw_dir(dataset: str) -> Path:
    return RAW / dataset


def shards_dir(dataset: str) -> Path:
    return SHARDS / dataset


def labels_file(dataset: str) -> Path:
    return LABELS / f"{dataset}.parquet"


def label_metrics_file(dataset: str) -> Path:
    # beside the labels, not under metrics/: the report depends on metrics/ (every regime's
    # result) and must not pull in the label stages of datasets no regime uses
    return LABELS / f"{dataset}.agreement.json"


def split_file(split: str) -> Path:
    return SPLITS / f"{split}.json"


def study_dir(study: str) -> Path:
    return STUDIES / study


def study_file(study: str) -> Path:
    # beside the folder, not in it: a DVC metric may not sit inside another output
    return STUDIES / f"{study}.json"


def model_dir(regime: str) -> Path:
    return MODELS / regime


def text_model_dir(dataset: str) -> Path:
    return MODELS / "text" / dataset  # pretrain_text's output; never a regime name (a regime folder is models/<r>)


def run_dir(regime: str) -> Path:
    return RUNS / regime


def metrics_file(regime: str) -> Path:
    return METRICS / f"{regime}.json"


def eval_dir(regime: str) -> Path:
    return EVAL / regime
