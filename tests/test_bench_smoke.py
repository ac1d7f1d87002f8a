"""bench/run_all.py at its smallest size: it runs every bench, prints the table and writes the JSON.

No timing assertions (CI machines vary); the figures themselves are checked to be present and positive.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_run_all_smallest_prints_table_and_writes_json(repo_root):
    res = subprocess.run([sys.executable, "bench/run_all.py", "--smallest"], cwd=repo_root, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "medref benchmarks (smallest)" in res.stdout
    for figure in ("shard Dataset vs PNG Dataset", "loader / train step", "no-op dvc repro", "snakemake -n",
                   "medref --help imports torch", "predict / eval inner loop", "medref predict start-up"):
        assert figure in res.stdout, figure
    summary = json.loads((repo_root / "bench/results/run_all.json").read_text())
    assert summary["mode"] == "smallest" and summary["load_before"]
    values = {r["figure"]: r["value"] for r in summary["rows"]}
    assert all(v is not None for v in values.values()), values
    assert values["medref --help imports torch"] is False
    for name in ("bench_data.json", "bench_train.json", "bench_pipeline.json", "bench_predict.json"):
        assert json.loads((repo_root / "bench/results" / name).read_text())


def test_gpu_check_runs_on_cpu_at_tiny_sizes(repo_root):
    """bench/gpu_check.py --tiny: the GPU check's three parts run on CPU (the figures are the GPU machine's job)."""
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny"], cwd=repo_root, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads((repo_root / "bench/results/gpu_check.json").read_text())
    assert out["size"] == "tiny" and out["throughput"][0]["samples_per_s"] > 0
    assert out["throughput"][0]["tflop_per_step"] > 0
    assert out["parity"]["ok"] and out["parity"]["max_abs"] <= out["parity"]["tolerance"]["max"]
    assert out["pipeline"]["method"] == "semi_medref" and 0.0 <= out["pipeline"]["dice"] <= 1.0
