"""oneMKL's Conditional Numerical Reproducibility is on in every medref process (see pipeline_src/numerics.py).

Without it oneMKL may pick GEMM code by memory alignment, which differs from process to process, so two runs of
one training could differ in the last bits. MKL_VERBOSE prints the CNR mode of each call.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch build has no oneMKL")
GEMM = "import pipeline_src.cli, torch; torch.randn(64, 64) @ torch.randn(64, 64)"


def _cnr(env_extra: dict[str, str]) -> set[str]:
    drop = ("MKL_CBWR", "MEDREF_NUMERICS_SET", "MEDREF_CPU_NUMERICS")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"MKL_VERBOSE": "1", **env_extra}
    res = subprocess.run([sys.executable, "-c", GEMM], env=env, capture_output=True, text=True, check=True)
    modes = {w for line in res.stdout.splitlines() if "GEMM" in line for w in line.split() if w.startswith("CNR:")}
    assert modes, f"MKL_VERBOSE printed no GEMM call:\n{res.stdout[-2000:]}"
    return modes


def test_cli_import_turns_on_strict_cnr():
    # native: the CPU's own code path, made alignment-independent; portable (pipeline_src/numerics.py): the code
    # path every x86-64 CPU gives the same results on, strict too
    assert _cnr({"MEDREF_CPU_NUMERICS": "native"}) == {"CNR:AUTO,STRICT"}
    assert _cnr({"MEDREF_CPU_NUMERICS": "portable"}) == {"CNR:COMPATIBLE,STRICT"}


def test_a_users_own_mkl_cbwr_wins():
    assert _cnr({"MKL_CBWR": "AUTO"}) == {"CNR:AUTO"}
    assert _cnr({"MKL_CBWR": "AUTO", "MEDREF_CPU_NUMERICS": "native"}) == {"CNR:AUTO"}
