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


def test_stage_block_records_the_device_and_the_cpu_only_on_cpu(tmp_path):
    from pathlib import Path

    from pipeline_src import params as P

    prm = P.load(Path(__file__).resolve().parents[1] / "params.yaml")
    (tmp_path / "x.txt").write_text("x")
    cpu = provenance.stage_block(prm, ["base"], {"x": tmp_path / "x.txt"}, device="cpu", extra={"steps": 3})
    gpu = provenance.stage_block(prm, ["base"], {"x": tmp_path / "x.txt"}, device="cuda", extra={"steps": 3})
    assert cpu["device"] == "cpu" and cpu["cpu"] == provenance.cpu_model() and "numerics" in cpu
    assert gpu["device"] == "cuda" and "cpu" not in gpu and "numerics" not in gpu
    assert cpu["steps"] == gpu["steps"] == 3 and cpu["params_digest"] == gpu["params_digest"]


def test_train_provenance_names_the_device_it_trained_on(tmp_path):
    # It recorded "cpu" whatever trained the weights: a GPU run's provenance said cpu (and carried no CPU kind then).
    from pathlib import Path

    from pipeline_src import params as P
    from pipeline_src.train.train import _provenance

    prm = P.load(Path(__file__).resolve().parents[1] / "params.yaml")
    block = _provenance(prm, "qata_10pct", tmp_path, tmp_path / "l.parquet", tmp_path / "s.json", 7, "cuda")
    assert block["device"] == "cuda" and "cpu" not in block and block["steps"] == 7


def test_torch_device_sets_the_threads_and_names_the_setting_when_cuda_is_missing():
    import pytest
    import torch

    from pipeline_src.errors import MedrefError
    from pipeline_src.utils.stage import torch_device

    before = torch.get_num_threads()
    try:
        assert torch_device("cpu", threads=1) == "cpu" and torch.get_num_threads() == 1
        assert torch_device("auto", threads=None) == ("cuda" if torch.cuda.is_available() else "cpu")
        assert torch.get_num_threads() == 1  # None leaves torch's count alone
        if not torch.cuda.is_available():
            with pytest.raises(MedrefError, match="train.device: no cuda here"):
                torch_device("cuda", threads=None, unavailable="train.device: no cuda here")
    finally:
        torch.set_num_threads(before)
