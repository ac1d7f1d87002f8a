"""Share a result through a DVC remote, and prove it with `medref verify`.

Two-clone round trip with a local-directory remote and with a real S3 API (a moto server on
127.0.0.1, the dvc-s3 client, credentials from the test): the collaborator's clone pulls,
re-runs nothing and gets identical metrics; `medref verify` passes, and fails naming the
file when an output or a param has been tampered with.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline_utils import run, tool

pytestmark = pytest.mark.slow

REGIME = "qata_10pct"  # the regime of the session's `origin` repo (tests/conftest.py)


def ran_stages(stdout: str) -> list[str]:
    return [line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")]


def _clone(origin: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    return dest


def _round_trip(origin: Path, clone: Path, remote_args: list[str], local_cfg: list[list[str]],
                name: str = "shared") -> None:
    run([tool("dvc"), "remote", "add", "-d", "-f", name, *remote_args], origin)
    for cfg in local_cfg:
        run([tool("dvc"), "remote", "modify", "--local", name, *cfg], origin)
    run([tool("dvc"), "push", "--run-cache", "-r", name], origin)

    _clone(origin, clone)
    run([tool("dvc"), "remote", "add", "-d", "-f", name, *remote_args], clone)
    for cfg in local_cfg:
        run([tool("dvc"), "remote", "modify", "--local", name, *cfg], clone)
    # one command for the collaborator: fetch what each stage needs instead of recomputing
    out = run([tool("dvc"), "repro", "--pull", f"eval@{REGIME}"], clone)
    assert ran_stages(out.stdout) == [], out.stdout
    again = run([tool("dvc"), "repro", f"eval@{REGIME}"], clone)
    assert ran_stages(again.stdout) == [], again.stdout
    assert (clone / f"metrics/{REGIME}.json").read_bytes() == (origin / f"metrics/{REGIME}.json").read_bytes()
    assert (clone / f"models/{REGIME}/model.pt").read_bytes() == (origin / f"models/{REGIME}/model.pt").read_bytes()


def test_local_remote_round_trip_and_verify(origin, tmp_path):
    _round_trip(origin, tmp_path / "collab", [str(tmp_path / "remote")], [])
    # plain `dvc pull` in a second clone restores every output too
    other = _clone(origin, tmp_path / "collab2")
    run([tool("dvc"), "remote", "add", "-d", "-f", "shared", str(tmp_path / "remote")], other)
    run([tool("dvc"), "pull", "-r", "shared", "--with-deps", f"eval@{REGIME}"], other)
    st = run([tool("dvc"), "status", "--json", "--with-deps", f"eval@{REGIME}"], other)
    assert json.loads(st.stdout) == {}, st.stdout

    res = run([tool("medref"), "verify", REGIME], tmp_path / "collab", check=False)
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr


def test_verify_fails_on_tampered_output_and_param(origin, tmp_path):
    repo = _clone(origin, tmp_path / "tamper")
    run([tool("dvc"), "remote", "add", "-d", "-f", "shared", str(tmp_path / "remote")], origin)
    run([tool("dvc"), "push", "-r", "shared"], origin)
    run([tool("dvc"), "remote", "add", "-d", "-f", "shared", str(tmp_path / "remote")], repo)
    run([tool("dvc"), "pull", "-r", "shared", "--with-deps", f"eval@{REGIME}"], repo)

    metrics = repo / f"metrics/{REGIME}.json"
    data = json.loads(metrics.read_text())
    data["dice"] = 0.999
    metrics.write_text(json.dumps(data))
    res = run([tool("medref"), "verify", REGIME], repo, check=False)
    assert res.returncode == 1 and "FAIL" in res.stdout and f"metrics/{REGIME}.json" in res.stdout, res.stdout

    run([tool("dvc"), "checkout", "--force", f"metrics/{REGIME}.json"], repo)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["eval"]["threshold"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    res = run([tool("medref"), "verify", REGIME], repo, check=False)
    assert res.returncode == 1 and "eval.threshold" in res.stdout, res.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server():
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.s3
def test_s3_round_trip(origin, tmp_path, moto_server):
    import boto3

    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="medref")
    cfg = [
        ["endpointurl", moto_server],
        ["access_key_id", keys["AWS_ACCESS_KEY_ID"]],
        ["secret_access_key", keys["AWS_SECRET_ACCESS_KEY"]],
    ]
    _round_trip(origin, tmp_path / "collab-s3", ["s3://medref/cache"], cfg, name="s3")


def test_experiments_and_diffs(origin, tmp_path):
    """`dvc exp run -S` / `dvc exp show` for a regime; params and metrics diffs between commits."""
    exp = run([tool("dvc"), "exp", "run", "--temp", "-n", "lr-up", "-S", "train.lr=0.001", f"eval@{REGIME}"], origin)
    assert "lr-up" in exp.stdout + exp.stderr
    shown = json.loads(run([tool("dvc"), "exp", "show", "--json"], origin).stdout)
    flat = json.dumps(shown)
    assert "lr-up" in flat and "0.001" in flat

    repo = _clone(origin, tmp_path / "diffs")
    run([tool("dvc"), "remote", "add", "-d", "-f", "shared", str(tmp_path / "remote")], origin)
    run([tool("dvc"), "push", "-r", "shared"], origin)
    run([tool("dvc"), "remote", "add", "-d", "-f", "shared", str(tmp_path / "remote")], repo)
    run([tool("dvc"), "pull", "-r", "shared", "--with-deps", f"eval@{REGIME}"], repo)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["eval"]["threshold"] = 0.35
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = run([tool("dvc"), "repro", f"eval@{REGIME}"], repo)
    assert ran_stages(out.stdout) == [f"eval@{REGIME}"], out.stdout
    run(["git", "commit", "-qam", "lower threshold"], repo)
    pdiff = json.loads(run([tool("dvc"), "params", "diff", "HEAD~1", "--json"], repo).stdout)
    assert {k: pdiff["params.yaml"]["eval.threshold"][k] for k in ("old", "new")} == {"old": 0.5, "new": 0.35}
    mdiff = json.loads(run([tool("dvc"), "metrics", "diff", "HEAD~1", "--json"], repo).stdout)
    assert mdiff.get(f"metrics/{REGIME}.json"), mdiff  # a threshold change moves at least one metric
