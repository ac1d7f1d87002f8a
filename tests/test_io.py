"""pipeline_src/utils/io.py: atomic writes and the sweep of temp siblings left by killed writers."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from pipeline_src.utils.io import atomic_dir, atomic_file, scratch_beside, sweep_stale_temps


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _litter(parent: Path, name: str) -> dict[str, Path]:
    host = socket.gethostname()
    dead = _dead_pid()
    paths = {
        "dead_file": parent / f".{name}.{host}-{dead}.ab12cd_3.tmp",
        "dead_dir": parent / f".{name}.{host}-{dead}.zz9y8x7w.tmp",
        "dead_old": parent / f".{name}.{host}-{dead}.qq1w2e3r.old",
        "live": parent / f".{name}.{host}-{os.getpid()}.aaaaaaaa.tmp",
        "other_host": parent / f".{name}.not-{host}-{dead}.bbbbbbbb.tmp",
        "other_name": parent / f".other.{host}-{dead}.cccccccc.tmp",
        "user_file": parent / f".{name}.notes",
    }
    for key, p in paths.items():
        if key in ("dead_dir", "dead_old"):
            p.mkdir()
            (p / "part-0.parquet").write_bytes(b"half")
        else:
            p.write_bytes(b"half")
    return paths


@pytest.mark.parametrize("writer", ["file", "dir", "scratch"])
def test_next_writer_sweeps_only_dead_writers_temps_on_this_host(tmp_path, capsys, writer):
    out = tmp_path / "shards"
    litter = _litter(tmp_path, "shards")
    if writer == "file":
        with atomic_file(out) as f:
            f.write(b"x")
    elif writer == "dir":
        with atomic_dir(out) as d:
            (d / "a").write_text("x")
    else:
        with scratch_beside(out) as d:
            assert d.parent == tmp_path and d.name.startswith(f".shards.{socket.gethostname()}-{os.getpid()}.")
    gone = {k for k, p in litter.items() if not p.exists()}
    assert gone == {"dead_file", "dead_dir", "dead_old"}
    err = capsys.readouterr().err
    assert all(f"removed {litter[k]}" in err for k in gone)
    if writer != "scratch":
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([out.name, *(litter[k].name for k in litter.keys() - gone)])


def test_a_failed_write_leaves_no_sibling_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as d:
        (d / "w").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "w").write_text("new, half")
        raise RuntimeError("killed")
    assert (out / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_sweep_of_a_missing_folder_is_a_no_op(tmp_path):
    assert sweep_stale_temps(tmp_path / "nowhere" / "x") == []
