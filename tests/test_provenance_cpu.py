"""The CPU kind in train/eval provenance, and what `medref verify` says when a CPU re-run differs."""

from __future__ import annotations

import platform

from pipeline_src import provenance


def test_cpu_model_names_the_kind_not_the_host():
    s = provenance.cpu_model()
    assert platform.machine() in s
    assert platform.node() not in s.split(), "a host name would make the provenance differ between twin machines"
    assert provenance.cpu_model() == s  # stable within a machine: same bytes on a re-run


def test_cpu_hint_only_when_the_recorded_kind_differs():
    assert provenance.cpu_hint(None) == ""
    assert provenance.cpu_hint(provenance.cpu_model()) == ""
    hint = provenance.cpu_hint("GenuineIntel family 6 model 85, x86_64, avx512")
    assert "recorded on GenuineIntel family 6 model 85" in hint and provenance.cpu_model() in hint


def test_train_provenance_names_the_device_it_trained_on(tmp_path):
    # It recorded "cpu" whatever trained the weights: a GPU run's provenance said cpu (and carried no CPU kind then).
    from pathlib import Path

    from pipeline_src import params as P
    from pipeline_src.train.train import _provenance

    prm = P.load(Path(__file__).resolve().parents[1] / "params.yaml")
    block = _provenance(prm, "qata_10pct", tmp_path, tmp_path / "l.parquet", tmp_path / "s.json", 7, "cuda")
    assert block["device"] == "cuda" and "cpu" not in block and block["steps"] == 7

