"""base.cpu_numerics: portable caps the kernels in every medref process, gives the same weights every time
(through the SLURM launcher's job path and after a resume), and differs from native on this machine.

    .venv/bin/python -m pytest -q tests/test_numerics.py

The kernels a process ran are read from oneDNN's and oneMKL's own logs (ONEDNN_VERBOSE=1: one line per primitive
with its implementation, e.g. ``jit:avx2`` or ``brg_conv_fwd:avx512_core_amx``; MKL_VERBOSE=1: the CNR mode of
each call), as tests/test_mkl_cnr.py does for CNR. The SLURM job path is the job half of submitit without a
cluster: the caller builds the sbatch ``setup`` lines (launcher.job_parameters) and pickles the TrainJob; a fresh
shell runs those lines and a python that unpickles and calls it, started in an empty folder with no medref
variables in its environment, so the mode can only come from the lines. (tests/test_slurm_launcher.py runs the
real cluster.)
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline_src import numerics, provenance, verify
from tests.train_fixtures import make_dataset

REPO = Path(__file__).resolve().parents[1]
MEDREF = str(Path(sys.executable).with_name("medref"))
SMALL = {"model": {"image_encoder": "resnet10t", "text_width": 32, "text_layers": 1, "text_heads": 2,
                   "context_length": 24, "embed_dim": 16, "decoder_dim": 16, "decoder_heads": 2},
         "epochs": 2, "batch_size": 6, "unlabelled_batch_size": 6, "val_max": 0, "checkpoint_every": 3,
         "ssl": {"burn_in_epochs": 0.25, "ramp_epochs": 0.5, "confidence": 0.5}}
CAPS_OFF = re.compile(r"avx512|amx|avx10", re.I)
# the job half of submitit: unpickle (imports pipeline_src.launcher, hence pipeline_src, before torch), report
# what the import set, run
WORKER = ("import json, pickle, sys\n"
          "job = pickle.load(open(sys.argv[1], 'rb'))\n"
          "from pipeline_src import numerics\n"
          "print('NUMERICS', json.dumps(numerics.in_force()), flush=True)\n"
          "job()\n")


def _clean_env(**extra: str) -> dict[str, str]:
    drop = {*numerics.RECORDED, numerics.ENV, numerics.MARK, "ONEDNN_VERBOSE", "MKL_VERBOSE", "DNNL_VERBOSE"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"MEDREF_PROGRESS": "0", **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def _params_file(folder: Path, mode: str, **train) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["base"]["cpu_numerics"] = mode
    raw["regimes"] = {"tiny": {"dataset": next(iter(raw["datasets"])), "fraction": 0.25, "method": "semi_medref",
                               "train": {**SMALL, **train}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "dvc.yaml").write_text("stages: {}\n")  # a repository root: medref resolves params.yaml here
    return folder / "params.yaml"


def _paths(tiny, root: Path) -> dict[str, str]:
    return {"shards_dir": str(tiny["shards_dir"]), "labels_file": str(tiny["labels_file"]),
            "split_file": str(tiny["split_file"]), "out_dir": str(root / "model"), "run_dir": str(root / "run")}


def _slurm_job(tiny, root: Path, mode: str, resume: bool = True, verbose: bool = False, **train) -> dict:
    """Train through the launcher's SLURM job path; the job's stdout, what its import set, and the model folder."""
    from pipeline_src import launcher
    from pipeline_src.utils.io import sha256_file

    params = _params_file(root / "caller", mode, **train)
    # the caller: a `medref train --launcher slurm` process started in that repository builds the job
    caller = subprocess.run(
        [sys.executable, "-c", "import json; from pipeline_src import launcher as l; "
         "print(json.dumps(l.job_parameters(l.SlurmSettings(setup=['echo site setup']), 'tiny')['slurm_setup']))"],
        cwd=params.parent, env=_clean_env(), capture_output=True, text=True, check=True)
    setup = json.loads(caller.stdout)
    assert setup[-1] == "echo site setup", "the cluster config's own setup lines come after medref's"
    job = launcher.TrainJob(regime="tiny", params_file=str(params), params_sha256=sha256_file(params),
                            paths=_paths(tiny, root), resume=resume, cwd=str(params.parent))
    pkl = root / "job.pkl"
    pkl.write_bytes(pickle.dumps(job))
    (root / "sbatch-cwd").mkdir(exist_ok=True)
    script = "\n".join([*setup, f"exec {shlex.quote(sys.executable)} -c {shlex.quote(WORKER)} {shlex.quote(str(pkl))}"])
    env = _clean_env(PYTHONPATH=str(REPO), **({"ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"} if verbose else {}))
    res = subprocess.run(["bash", "-c", script], cwd=root / "sbatch-cwd", env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"job failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    got = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("NUMERICS "))[9:])
    return {"out": res.stdout, "numerics": got, "model": root / "model"}


def _kernels(log: str) -> tuple[set[str], set[str]]:
    """(oneDNN implementations of executed primitives, oneMKL CNR modes) in a verbose log."""
    impls = {ln.split(",")[6] for ln in log.splitlines() if ln.startswith("onednn_verbose,") and ",exec,cpu," in ln}
    cnr = {w for ln in log.splitlines() if ln.startswith("MKL_VERBOSE") for w in ln.split() if w.startswith("CNR:")}
    return impls, cnr


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=False)
    sd = next(v for k, v in blob.items() if isinstance(v, dict) and v and all(torch.is_tensor(t) for t in v.values()))
    return sd


def _assert_capped(log: str, where: str) -> None:
    impls, cnr = _kernels(log)
    assert impls, f"{where}: ONEDNN_VERBOSE printed no primitive (oneDNN not used?)"
    assert not {i for i in impls if CAPS_OFF.search(i)}, f"{where}: uncapped oneDNN kernels ran: {sorted(impls)}"
    assert any("avx2" in i for i in impls), f"{where}: no avx2 kernel among {sorted(impls)}"
    if torch.backends.mkl.is_available():
        assert cnr == {"CNR:" + numerics.PORTABLE_ENV["MKL_CBWR"]}, f"{where}: oneMKL ran {cnr}"


@pytest.mark.slow
def test_portable_same_bits_capped_kernels_slurm_path_cli_and_resume(tiny, tmp_path):
    # 1. the SLURM job path, twice: capped kernels, the mode came from the setup lines, identical files
    a = _slurm_job(tiny, tmp_path / "a", "portable", max_steps=6, verbose=True)
    assert a["numerics"]["mode"] == "portable" and a["numerics"]["caps"] == numerics.PORTABLE_ENV
    _assert_capped(a["out"], "SLURM job")
    b = _slurm_job(tiny, tmp_path / "b", "portable", max_steps=6)
    assert (a["model"] / "model.pt").read_bytes() == (b["model"] / "model.pt").read_bytes()
    prov = json.loads((a["model"] / "provenance.json").read_text())
    assert prov["numerics"]["mode"] == "portable" and prov["numerics"]["caps"] == numerics.PORTABLE_ENV
    assert prov["numerics"]["threads"] == yaml.safe_load((REPO / "params.yaml").read_text())["base"]["cpu_threads"]
    assert prov["cpu"] == provenance.cpu_model() and numerics.recorded_portable(prov)

    # 2. a crash after 3 of 6 steps, then the requeued job (checkpoint(): a fresh copy with resume=True)
    c = tmp_path / "c"
    _slurm_job(tiny, c, "portable", resume=False, max_steps=3)
    assert torch.load(c / "run" / "last.pt", weights_only=False)["step"] == 3
    (c / "job.pkl").unlink()
    resumed = _slurm_job(tiny, c, "portable", resume=True, max_steps=6)
    assert (resumed["model"] / "model.pt").read_bytes() == (a["model"] / "model.pt").read_bytes()

    # 3. the console script DVC and Snakemake run, as a child of a native medref process (which left its
    # MKL_CBWR and its mark in the environment): the child's own params decide, and it runs the same bits
    d = tmp_path / "d"
    params = _params_file(d, "portable", max_steps=6)
    p = _paths(tiny, d)
    parent = {numerics.MARK: json.dumps(numerics.NATIVE_ENV), **numerics.NATIVE_ENV}
    res = subprocess.run([MEDREF, "train", "tiny", "--shards", p["shards_dir"], "--labels", p["labels_file"],
                          "--split", p["split_file"], "--out", p["out_dir"], "--run-dir", p["run_dir"]],
                         cwd=params.parent, env=_clean_env(ONEDNN_VERBOSE="1", MKL_VERBOSE="1", **parent),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_capped(res.stdout, "medref train")
    assert (d / "model" / "model.pt").read_bytes() == (a["model"] / "model.pt").read_bytes()


@pytest.mark.slow
def test_native_and_portable_differ_on_this_machine(tiny, tmp_path):
    portable = _slurm_job(tiny, tmp_path / "p", "portable", max_steps=3)
    native = _slurm_job(tiny, tmp_path / "n", "native", max_steps=3, verbose=True)
    assert native["numerics"]["mode"] == "native" and not numerics.recorded_portable(
        json.loads((native["model"] / "provenance.json").read_text()))
    impls, _ = _kernels(native["out"])
    if not any(CAPS_OFF.search(i) for i in impls):
        # a CPU without AVX-512/AMX: native already runs the AVX2 kernels, so the bits may well be equal; the
        # switch still reached the process (the caps are asserted in the test above)
        pytest.skip(f"this CPU's native kernels are already AVX2-class ({sorted(impls)}); nothing to tell apart")
    wp, wn = _weights(portable["model"]), _weights(native["model"])
    assert wp.keys() == wn.keys()
    assert any(not torch.equal(wp[k], wn[k]) for k in wp), "native and portable trained the same bits"


def _in_force(mode_env: dict[str, str], cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", "import json, pipeline_src; from pipeline_src import numerics; "
                          "print(json.dumps(numerics.in_force()))"], cwd=cwd, env=_clean_env(**mode_env),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_mode_comes_from_params_yaml_then_env_and_a_users_variable_wins(tmp_path):
    _params_file(tmp_path / "repo", "portable")
    (tmp_path / "repo" / "sub").mkdir()
    got = _in_force({}, tmp_path / "repo" / "sub")  # a sub-folder: the repository's params.yaml
    assert got["mode"] == "portable" and got["caps"] == numerics.PORTABLE_ENV
    assert _in_force({numerics.ENV: "native"}, tmp_path / "repo")["caps"] == {
        "ONEDNN_MAX_CPU_ISA": None, "ATEN_CPU_CAPABILITY": None, "MKL_CBWR": "AUTO,STRICT"}
    mine = _in_force({"MKL_CBWR": "AUTO,STRICT"}, tmp_path / "repo")
    assert mine["mode"] == "portable" and mine["caps"]["MKL_CBWR"] == "AUTO,STRICT"
    assert not numerics.recorded_portable({"numerics": mine}), "a user's own variable makes it a native result"


def test_a_bad_mode_is_refused_with_its_source(tmp_path):
    _params_file(tmp_path, "fast")
    res = subprocess.run([MEDREF, "split", "qata_10pct"], cwd=tmp_path, env=_clean_env(), capture_output=True,
                         text=True)
    assert res.returncode == 2 and "cpu_numerics" in res.stderr, res.stderr


def test_verify_picks_its_comparison_from_the_provenance():
    here = provenance.cpu_model()
    portable = {"numerics": {"mode": "portable", "caps": dict(numerics.PORTABLE_ENV)}}
    assert verify.comparison({"cpu": here}) == verify.SAME_CPU
    assert verify.comparison({"cpu": "GenuineIntel family 6 model 85, x86_64, avx512", **portable}) == verify.PORTABLE
    assert verify.comparison({"cpu": "GenuineIntel family 6 model 85, x86_64, avx512"}) == verify.NATIVE_OTHER_CPU
    assert verify.comparison({"device": "cuda", "cpu": None}) == verify.GPU


def test_metric_tolerance_and_cpu_blind_bytes(tmp_path):
    a = {"dice": 0.50, "hd95": 40.0, "n": 200, "provenance": {"cpu": "x"}}
    assert verify._metrics_close(a, {**a, "dice": 0.515, "hd95": 40.6}, 0.02) is None
    assert verify._metrics_close(a, {**a, "dice": 0.53}, 0.02) == "dice: 0.5 -> 0.53"
    assert verify._metrics_close(a, {**a, "n": 199}, 0.02) == "n: 200 -> 199"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "provenance.json").write_text(json.dumps({"cpu": "AMD", "x": 1}))
    (tmp_path / "b" / "provenance.json").write_text(json.dumps({"cpu": "Intel", "x": 1}))
    assert verify._same_but_cpu(tmp_path / "a", tmp_path / "b") is None
    (tmp_path / "b" / "provenance.json").write_text(json.dumps({"cpu": "Intel", "x": 2}))
    assert verify._same_but_cpu(tmp_path / "a", tmp_path / "b") == "provenance.json"


@pytest.mark.slow
def test_cpu_bf16_reaches_the_model_keeps_its_bits_and_needs_native(tiny, tmp_path):
    """train.cpu_bf16 (README "CPU training variants"): bf16 autocast on CPU gives other weights than fp32, the same
    ones twice; under portable numerics (no bf16 kernels at the AVX2 cap) it is refused before any work."""
    fp32 = _slurm_job(tiny, tmp_path / "f", "native", max_steps=3)
    a = _slurm_job(tiny, tmp_path / "a", "native", max_steps=3, cpu_bf16=True)
    b = _slurm_job(tiny, tmp_path / "b", "native", max_steps=3, cpu_bf16=True)
    assert (a["model"] / "model.pt").read_bytes() == (b["model"] / "model.pt").read_bytes()
    wf, wa = _weights(fp32["model"]), _weights(a["model"])
    assert any(not torch.equal(wf[k], wa[k]) for k in wf), "cpu_bf16 trained the fp32 bits"
    d = tmp_path / "p"
    params = _params_file(d, "portable", max_steps=3, cpu_bf16=True)
    p = _paths(tiny, d)
    res = subprocess.run([MEDREF, "train", "tiny", "--shards", p["shards_dir"], "--labels", p["labels_file"],
                          "--split", p["split_file"], "--out", p["out_dir"], "--run-dir", p["run_dir"]],
                         cwd=params.parent, env=_clean_env(), capture_output=True, text=True)
    assert res.returncode == 2 and "train.cpu_bf16" in res.stderr and "native" in res.stderr, res.stderr[-2000:]
    assert not (d / "model").exists() and not (d / "run" / "last.pt").exists()
