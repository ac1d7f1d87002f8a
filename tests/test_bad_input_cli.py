"""Bad input at the CLI and the atomic writers: one clear error line, or correct handling.

    .venv/bin/python -m pytest -q tests/test_bad_input_cli.py

Covers the params file (duplicate keys, a folder, non-UTF-8, errors naming the file in use),
output permissions under the umask, strict JSON, a read-only output folder, running from a
sub-folder of the repository, and ``medref regions`` input handling.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline_src import cli
from pipeline_src import params as P
from pipeline_src.errors import MedrefError
from pipeline_src.utils import io as uio

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, command: str) -> str:
    lines = [x for x in err.strip().splitlines() if not x.startswith("[medref] ")]  # progress notes
    assert len(lines) == 1 and lines[0].startswith(f"medref {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- the params file ---------------------------------------------------------------------------


def test_duplicate_params_key_is_an_error_naming_key_and_line(tmp_path, capsys):
    f = tmp_path / "dup.yaml"
    f.write_text("base:\n  seed: 1\ntrain:\n  epochs: 1\n  epochs: 5\n")
    with pytest.raises(P.ParamsError, match=r"dup\.yaml: line 5: .*duplicate key 'epochs' on line 5 \(first on line 4\)"):
        P.load_raw(f)
    rc, _, err = run_cli(capsys, "--params", str(f), "download", "qata")
    assert rc == 2 and "duplicate key 'epochs'" in one_error_line(err, "download")


def test_duplicate_top_level_key_is_an_error(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("eval: {}\nreport: {}\neval: {}\n")
    with pytest.raises(P.ParamsError, match="duplicate key 'eval' on line 3"):
        P.load_raw(f)


def test_params_naming_a_folder_is_one_error(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "--params", str(tmp_path), "download", "qata")
    assert rc == 2 and f"{tmp_path}: not a file" in one_error_line(err, "download")


def test_params_not_utf8_is_one_error(tmp_path, capsys):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("base:\n  seed: 1  # r\xe9sum\xe9\n".encode("latin-1"))
    rc, _, err = run_cli(capsys, "--params", str(f), "download", "qata")
    assert rc == 2 and f"{f}: not UTF-8" in one_error_line(err, "download")


def test_errors_name_the_params_file_in_use(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    variant = next(iter(raw["variants"]))  # listed by no demo study: checked all the same
    raw["variants"][variant]["train"] = {"no_such_key": 1}
    f = tmp_path / "other.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(P.ParamsError) as e:
        P.load(f)
    assert str(e.value).startswith(f"{f}: variants.{variant}.train: no_such_key")
    assert "params.yaml" not in str(e.value)


# ---- the atomic writers ------------------------------------------------------------------------


@pytest.fixture
def umask():
    def set_to(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_to
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    import pyarrow as pa
    import pyarrow.parquet as pq

    umask(mask)
    uio.write_json(tmp_path / "m.json", {"a": 1})
    with uio.atomic_file(tmp_path / "w.bin") as f:
        f.write(b"x")
    with uio.atomic_dir(tmp_path / "shards") as d:  # a tree written by other code inside it
        (d / "train").mkdir()
        pq.write_table(pa.table({"x": [1, 2]}), d / "train" / "part-0.parquet")
        uio.write_json(d / "manifest.json", {"n": 2})
    with uio.atomic_dir(tmp_path / "shards") as d:  # replacing an existing folder
        (d / "x.txt").write_text("y")
    with uio.scratch_beside(tmp_path / "raw") as s:
        assert stat.S_IMODE(s.stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == file_mode
    with uio.atomic_dir(tmp_path / "tree") as d:
        (d / "train").mkdir()
        pq.write_table(pa.table({"x": [1, 2]}), d / "train" / "part-0.parquet")
        uio.write_json(d / "manifest.json", {"n": 2})
    assert modes(tmp_path / "tree") == {
        ".": dir_mode,
        "train": dir_mode,
        "train/part-0.parquet": file_mode,
        "manifest.json": file_mode,
    }
    assert modes(tmp_path / "shards") == {".": dir_mode, "x.txt": file_mode}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_json_writer_refuses_non_finite_numbers(tmp_path, bad):
    f = tmp_path / "agreement.json"
    with pytest.raises(MedrefError, match=r"agreement\.json: refusing to write a NaN or infinite number"):
        uio.write_json(f, {"kappa": [0.5, bad]})
    assert not f.exists() and list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(ValueError):
        uio.sha256_json({"x": bad})


def test_json_writer_writes_null_for_none(tmp_path):
    uio.write_json(tmp_path / "m.json", {"kappa": None})
    assert json.loads((tmp_path / "m.json").read_text()) == {"kappa": None}


@pytest.mark.parametrize("writer", ["atomic_file", "atomic_dir", "write_json", "scratch_beside"])
def test_read_only_output_folder_is_one_error_naming_it(tmp_path, monkeypatch, writer):
    out = tmp_path / "ro"
    out.mkdir()

    def denied(*a, dir=None, **kw):
        raise PermissionError(13, "Permission denied", str(dir))

    # The checks run as root here, which a chmod does not stop: make the OS call fail as it does
    # for an ordinary user on a read-only folder.
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    target = out / "x"
    with pytest.raises(MedrefError, match=rf"^{out}: cannot write an output here \(Permission denied\)"):
        if writer == "write_json":
            uio.write_json(target, {})
        else:
            with getattr(uio, writer)(target):
                pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_output_folder_real(tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    try:
        with pytest.raises(MedrefError, match=rf"^{out}: cannot write an output here"):
            uio.write_json(out / "m.json", {})
        with pytest.raises(MedrefError, match=rf"^{out / 'sub'}: cannot write an output here"):
            uio.write_json(out / "sub" / "m.json", {})
    finally:
        out.chmod(0o755)


# ---- running from a sub-folder -----------------------------------------------------------------


@pytest.fixture
def scratch_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "notes").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(repo / "notes")
    return repo


def test_stage_started_in_a_sub_folder_writes_under_the_repo_root(scratch_repo, monkeypatch, capsys):
    from pipeline_src.data import download

    seen = {}

    def fake_run(params, dataset, out):
        seen["out"], seen["cwd"] = Path(out).absolute(), Path.cwd()

    monkeypatch.setattr(download, "run", fake_run)
    rc, _, err = run_cli(capsys, "--params", "../params.yaml", "download", "qata")
    assert rc == 0, err
    assert seen == {"out": scratch_repo / "data/raw/qata", "cwd": scratch_repo}
    assert Path.cwd() == scratch_repo / "notes"  # restored for an in-process caller
    # a path typed on the command line still means what it meant where it was typed
    rc, _, err = run_cli(capsys, "--params", "../params.yaml", "download", "qata", "--out", "mine")
    assert rc == 0 and seen["out"] == scratch_repo / "notes/mine"


def test_provenance_and_verify_from_a_sub_folder(scratch_repo, capsys):
    regime = next(iter(yaml.safe_load((REPO / "workflow/grid.yaml").read_text())["runs"]))
    prov = scratch_repo / "models" / regime / "provenance.json"
    prov.parent.mkdir(parents=True)
    prov.write_text('{"model_sha256": "abc"}')
    rc, out, err = run_cli(capsys, "provenance", regime)
    assert rc == 0, err
    assert json.loads(out)["model"] == {"model_sha256": "abc"}
    rc, _, err = run_cli(capsys, "verify", regime)  # reaches the repo's (absent) dvc.lock
    assert rc == 2 and f"{scratch_repo / 'dvc.lock'}: not found" in one_error_line(err, "verify")


# ---- medref regions ----------------------------------------------------------------------------


def test_regions_without_input_is_an_error(capsys):
    rc, out, err = run_cli(capsys, "regions")
    assert rc == 2 and out == "" and "nothing to label" in one_error_line(err, "regions")


def test_regions_reads_standard_input(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"infection of the lower left lung\n\n")))
    rc, out, err = run_cli(capsys, "regions", "--texts-file", "-")
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["input"] for x in lines] == ["infection of the lower left lung"]
    assert lines[0]["regions"] is not None


@pytest.mark.parametrize("junk", [b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", b"abc\x00def\n"])
def test_regions_binary_texts_file_is_one_error_naming_it(tmp_path, capsys, junk):
    f = tmp_path / "junk.bin"
    f.write_bytes(junk)
    rc, out, err = run_cli(capsys, "regions", "--texts-file", str(f))
    assert rc == 2 and out == "" and f"{f}: --texts-file" in one_error_line(err, "regions")


def test_regions_honours_params(tmp_path, capsys):
    mask = np.zeros((64, 64), np.uint8)
    mask[40:60, 5:25] = 255
    m = tmp_path / "m.png"
    Image.fromarray(mask).save(m)
    rc, out, err = run_cli(capsys, "regions", "--masks", str(m))
    assert rc == 0, err
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.setdefault("pseudolabel", {})["no_such_constant"] = 1
    f = tmp_path / "other.yaml"
    f.write_text(yaml.safe_dump(raw))
    rc, out, err = run_cli(capsys, "--params", str(f), "regions", "--masks", str(m))
    assert rc == 2 and out == "" and f"{f}: pseudolabel.no_such_constant" in one_error_line(err, "regions")
    rc, _, err = run_cli(capsys, "--params", str(tmp_path / "missing.yaml"), "regions", "--masks", str(m))
    assert rc == 2 and "missing.yaml: params file not found" in one_error_line(err, "regions")


def test_verify_outside_a_repository_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "verify", "qata_10pct")
    assert rc == 2 and "run `medref verify` inside the repository" in one_error_line(err, "verify")


def test_unknown_regime_names_the_params_file_in_use(repo_root, tmp_path, capsys):
    import shutil

    from pipeline_src import cli

    other = tmp_path / "other-params.yaml"
    shutil.copy(repo_root / "params.yaml", other)
    assert cli.main(["--params", str(other), "split", "nope", "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert f"; the runs in {other} use:" in err, err
