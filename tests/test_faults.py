"""Fault tolerance: kill -9 mid-stage, concurrent `dvc repro`, disk full, bad params, corrupted cache.

Every stage writes through atomic_dir / atomic_file, so whatever moment a process dies at, a final path
either does not exist or holds a complete, valid output; a re-run completes, and training resumes from
runs/<regime>/last.pt to the same bytes as an uninterrupted run (CPU).

The text parser fuzz (random and adversarial strings, hypothesis) lives in tests/test_labels.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline_src import cli
from pipeline_src import params as P
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import sha256_file
from tests.pipeline_utils import BIN, deep_merge, env, make_scratch_repo, run, tool

SEED = int(os.environ.get("MEDREF_FAULT_SEED", "20240611"))
SMALL_MODEL = {"text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 24, "embed_dim": 16,
               "decoder_dim": 16, "decoder_heads": 2}
FT = {  # the training regime of these tests: 40 labelled of 160, 10 steps, a checkpoint every 2
    "dataset": "qata", "fraction": 0.25, "method": "supervised",
    "train": {"model": SMALL_MODEL, "epochs": 2, "max_steps": 10, "batch_size": 8, "checkpoint_every": 2,
              "val_max": 8, "precise_bn_batches": 2, "device": "cpu", "small_labelled": "error"},
}


def write_params(dest: Path, overrides: dict | None = None) -> Path:
    raw = P.load_raw(Path(__file__).resolve().parents[1] / "params.yaml")
    raw["datasets"] = {"qata": deep_merge(raw["datasets"]["qata"], {"source": "synthetic", "synthetic": {
        "n_train": 160, "n_val": 16, "n_test": 16, "image_size": 64}})}
    raw["regimes"] = {k: v for k, v in raw["regimes"].items() if v.get("dataset") == "qata"}
    raw["studies"] = {k: v for k, v in raw["studies"].items() if v.get("dataset") == "qata"}
    raw["regimes"]["ft"] = FT
    raw = deep_merge(raw, {"preprocess": {"image_size": 64, "row_group_size": 16, "shard_rows": 32},
                           "train": {"small_labelled": "cap"}})
    if overrides:
        raw = deep_merge(raw, overrides)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def medref(*args: str, params: Path) -> list[str]:
    return [str(BIN / "medref"), "--params", str(params), *args]


def kill_at_random_point(cmd: list[str], cwd: Path, ready, rng: random.Random, max_delay: float):
    """Start ``cmd``; once ``ready()`` is true, wait a seeded random delay and SIGKILL it (if still running)."""
    e = {**env(), "MEDREF_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, max_delay))
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    if not killed:
        assert proc.returncode == 0, out
    return killed, out


def assert_shards_complete_or_absent(out: Path) -> bool:
    if not out.exists():
        return False
    m = json.loads((out / "manifest.json").read_text())
    for split in m["splits"].values():
        for s in split["shards"]:
            assert sha256_file(out / s["path"]) == s["sha256"], s
            assert pq.read_metadata(out / s["path"]).num_rows == s["rows"]
    return True


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Raw synthetic data + params in a scratch folder (the CLI is called with explicit paths)."""
    root = tmp_path_factory.mktemp("faults")
    pfile = write_params(root / "params.yaml")
    res = subprocess.run(medref("download", "qata", "--out", str(root / "raw"), params=pfile), cwd=root, env=env(),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return {"root": root, "params": pfile, "raw": root / "raw"}


@pytest.fixture(scope="module")
def shards(ws):
    out = ws["root"] / "shards"
    rng = random.Random(SEED)
    killed, _ = kill_at_random_point(
        medref("preprocess", "qata", "--raw", str(ws["raw"]), "--out", str(out), params=ws["params"]), ws["root"],
        lambda: any(ws["root"].glob(".shards.*.tmp")), rng, 1.0)
    ws["preprocess_killed"] = killed
    ws["preprocess_litter"] = sorted(p.name for p in ws["root"].glob(".shards.*"))
    return out


def test_kill_during_preprocess_leaves_nothing_partial_then_rerun_completes(ws, shards):
    assert_shards_complete_or_absent(shards)  # killed after the rename (while logging) is fine: it is complete
    res = subprocess.run(medref("preprocess", "qata", "--raw", str(ws["raw"]), "--out", str(shards),
                                params=ws["params"]), cwd=ws["root"], env=env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert assert_shards_complete_or_absent(shards)
    # The killed writer's temp sibling (if the kill left one) is swept by the re-run.
    assert not list(ws["root"].glob(".shards.*")), list(ws["root"].iterdir())
    for name in ws["preprocess_litter"]:
        assert f"removed {ws['root'] / name}" in res.stderr


@pytest.fixture(scope="module")
def labelled(ws, shards):
    """Shards (complete), then pseudolabel killed at a seeded point and re-run, then the ft split."""
    if not (shards / "manifest.json").exists():
        run(medref("preprocess", "qata", "--raw", str(ws["raw"]), "--out", str(shards), params=ws["params"]),
            ws["root"])
    labels, metrics = ws["root"] / "labels.parquet", ws["root"] / "labels.json"
    cmd = medref("pseudolabel", "qata", "--shards", str(shards), "--out", str(labels), "--metrics", str(metrics),
                 params=ws["params"])
    t0 = time.monotonic()
    killed, _ = kill_at_random_point(cmd, ws["root"], lambda: time.monotonic() - t0 > 1.0, random.Random(SEED + 1), 3.0)
    state = {"killed": killed, "labels": labels.exists(), "metrics": metrics.exists()}
    if labels.exists():  # complete or absent
        assert pq.read_table(labels).num_rows == 192
    if metrics.exists():
        json.loads(metrics.read_text())
    run(cmd, ws["root"])
    split = ws["root"] / "split.json"
    run(medref("split", P.split_name("qata", FT["fraction"]), "--shards", str(shards), "--out", str(split), params=ws["params"]), ws["root"])
    return {"shards": shards, "labels": labels, "split": split, "pseudolabel_kill": state}


def test_kill_during_pseudolabel_leaves_nothing_partial(labelled):
    assert pq.read_table(labelled["labels"]).num_rows == 192
    assert json.loads(Path(labelled["labels"]).with_suffix(".json").read_text())


def _train_cmd(ws, labelled, name: str) -> list[str]:
    return medref("train", "ft", "--shards", str(labelled["shards"]), "--labels", str(labelled["labels"]),
                  "--split", str(labelled["split"]), "--out", str(ws["root"] / name / "model"),
                  "--run-dir", str(ws["root"] / name / "run"), "--launcher", "local", params=ws["params"])


@pytest.fixture(scope="module")
def reference_model(ws, labelled) -> Path:
    run(_train_cmd(ws, labelled, "ref"), ws["root"], env={**env(), "MEDREF_PROGRESS": "0"})
    return ws["root"] / "ref" / "model"


@pytest.mark.slow
def test_kill_during_train_resumes_to_identical_weights(ws, labelled, reference_model):
    cmd = _train_cmd(ws, labelled, "killed")
    last = ws["root"] / "killed" / "run" / "last.pt"
    model = ws["root"] / "killed" / "model"
    killed, _ = kill_at_random_point(cmd, ws["root"], last.exists, random.Random(SEED + 2), 1.0)
    if model.exists():  # killed after the final rename: it must be complete
        assert {p.name for p in model.iterdir()} >= {"model.pt", "config.json", "provenance.json", "live"}
    ckpt_step = torch.load(last, weights_only=False)["step"] if killed and last.exists() else None
    res = run(cmd, ws["root"], env={**env(), "MEDREF_PROGRESS": "0"})
    if ckpt_step is not None and ckpt_step < 10:
        assert f"resumed from {last} at step {ckpt_step}/10" in res.stdout + res.stderr
    ref = torch.load(reference_model / "model.pt", weights_only=True)["state_dict"]
    got = torch.load(model / "model.pt", weights_only=True)["state_dict"]
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ from the uninterrupted run"
    assert sha256_file(model / "model.pt") == sha256_file(reference_model / "model.pt")


# ---- two dvc repro at once --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_dvc_repro_at_once_one_waits_or_fails_clearly(tmp_path):
    repo = make_scratch_repo(tmp_path / "repo", regimes=["qata_10pct"])
    cmd = [tool("dvc"), "repro", "eval@qata_10pct"]
    first = subprocess.Popen(cmd, cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 120
    # wait until the split is written: the first then starts `train` (seconds: a process start with torch and
    # open_clip imports, then training), so it certainly still holds the repo lock when the second starts.
    # (The data stages alone take ~3 s in all; waiting on them raced with a fast first run.)
    while not (repo / "data/splits/qata_10pct.json").exists() and first.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    assert first.poll() is None, "the first dvc repro finished before the second could start"
    second = subprocess.run(cmd, cwd=repo, env=env(), capture_output=True, text=True)
    out1 = first.communicate()[0]
    assert first.returncode == 0, out1
    assert second.returncode != 0, second.stdout
    # the repo lock ("Unable to acquire lock") or the output rwlock ("... is busy, it is being blocked by: (PID")
    assert re.search(r"Unable to acquire lock|is busy, it is being blocked by", second.stdout + second.stderr), second
    status = run([tool("dvc"), "status", "eval@qata_10pct"], repo)
    assert "up to date" in status.stdout or status.stdout.strip() in ("", "{}"), status.stdout
    again = run(cmd, repo)
    assert "Running stage" not in again.stdout, again.stdout
    assert json.loads((repo / "data/splits/qata_10pct.json").read_text())["labelled"]


# ---- disk full --------------------------------------------------------------------------------------------------


def _no_tmp_siblings(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())


def test_disk_full_while_writing_shards_is_one_clear_error(ws, tmp_path, monkeypatch):
    from pipeline_src.data import preprocess

    calls = {"n": 0}
    real = pq.ParquetWriter.write_table

    def full(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    out = tmp_path / "shards"
    with pytest.raises(MedrefError) as e:
        preprocess.run(P.load(ws["params"]), "qata", ws["raw"], out)
    msg = str(e.value)
    assert str(out) in msg and "disk full" in msg and "medref preprocess qata" in msg and "\n" not in msg
    _no_tmp_siblings(out)


def test_disk_full_on_a_real_tiny_tmpfs(ws, tmp_path):
    from pipeline_src.data import preprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root); the patched-writer test covers the same path")
    try:
        with pytest.raises(MedrefError, match="disk full"):
            preprocess.run(P.load(ws["params"]), "qata", ws["raw"], mnt / "shards")
        _no_tmp_siblings(mnt / "shards")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---- bad params: exit 2, one line naming the key, before any work -----------------------------------------------


def _bad(ws, tmp_path, capsys, overrides: dict, regime: str = "ft", expect: tuple[str, ...] = ()) -> str:
    pfile = write_params(tmp_path / "bad.yaml", overrides)
    if "regimes" in overrides and overrides["regimes"].get("ft") is None:
        raw = yaml.safe_load(pfile.read_text())
        raw["regimes"]["ft"] = deep_merge(FT, overrides["regimes"].get("ft_merge", {}))
        raw["regimes"].pop("ft_merge", None)
        pfile.write_text(yaml.safe_dump(raw, sort_keys=False))
    out, rd = tmp_path / "model", tmp_path / "run"
    shards = ws["root"] / "shards"
    rc = cli.main(["--params", str(pfile), "train", regime, "--shards", str(shards), "--labels", str(tmp_path / "l"),
                   "--split", str(tmp_path / "no-split.json"), "--out", str(out), "--run-dir", str(rd),
                   "--launcher", "local"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for s in expect:
        assert s in err, err
    assert not out.exists() and not rd.exists(), "work started before the params were checked"
    return err


@pytest.mark.parametrize(
    "overrides,regime,expect",
    [
        ({}, "nope", ("unknown run 'nope'",)),
        ({"regimes": {"ft_merge": {"fraction": 1.5}}}, "ft", ("regimes.ft.fraction",)),
        ({"regimes": {"ft_merge": {"fraction": 0.0}}}, "ft", ("regimes.ft.fraction",)),
        ({"regimes": {"ft_merge": {"method": "magic"}}}, "ft", ("regimes.ft.method", "magic")),
        ({"train": {"model": {"arch": "unet9000"}}}, "ft", ("train.model.arch",)),
        ({"train": {"model": {"image_weights": "/nonexistent/enc.pth"}}}, "ft",
         ("train.model.image_weights", "/nonexistent/enc.pth")),
        ({"train": {"model": {"text_weights": "local-dir:/nonexistent/clip"}}}, "ft",
         ("train.model.text_weights", "/nonexistent/clip")),
        # 1 % of 160 = 2 labelled < batch 8, with small_labelled: error (the ft regime's setting)
        ({"regimes": {"ft_merge": {"fraction": 0.01}}}, "ft", ("regimes.ft.fraction", "2 labelled", "batch_size = 8")),
    ],
    ids=["unknown-regime", "fraction>1", "fraction=0", "unknown-method", "unknown-arch", "missing-image-weights",
         "missing-text-weights", "labelled<batch"],
)
def test_bad_params_fail_before_any_work(ws, shards, tmp_path, capsys, overrides, regime, expect):
    if not (shards / "manifest.json").exists():
        run(medref("preprocess", "qata", "--raw", str(ws["raw"]), "--out", str(shards), params=ws["params"]),
            ws["root"])
    _bad(ws, tmp_path, capsys, overrides, regime, expect)


# ---- corrupted cache --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_shard_is_named_with_recovery(labelled, tmp_path, damage):
    from pipeline_src.data.dataset import ShardDataset
    from pipeline_src.data.shards import read_table

    copy = tmp_path / "shards"
    shutil.copytree(labelled["shards"], copy)
    part = sorted((copy / "train").glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    for load in (lambda: ShardDataset(copy, "train")[0], lambda: read_table(copy, "train", ["id"])):
        with pytest.raises(MedrefError) as e:
            load()
        assert str(part) in str(e.value) and f"dvc checkout {copy}" in str(e.value)


def test_a_column_the_shards_lack_is_named_not_dropped(labelled):
    """read_table reads each file with ParquetFile (no pyarrow.dataset, so no pandas import), whose read() would
    drop an absent column silently; a caller asking for one (a by-case split on image shards) gets it named."""
    from pipeline_src.data.shards import read_table

    assert read_table(labelled["shards"], "train", ["text", "id"]).column_names == ["text", "id"]
    with pytest.raises(MedrefError) as e:
        read_table(labelled["shards"], "train", ["id", "case_id"])
    assert "part-" in str(e.value) and "['case_id']" in str(e.value) and "dvc checkout" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_modified_model_file_is_named_with_recovery(reference_model, tmp_path, damage):
    from pipeline_src.inference.predictor import load_predictor

    model = tmp_path / "ft"
    shutil.copytree(reference_model, model)
    load_predictor(model)  # intact: loads
    f = model / "model.pt"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(MedrefError) as e:
        load_predictor(model)
    assert str(f) in str(e.value) and f"dvc checkout {model}" in str(e.value)
