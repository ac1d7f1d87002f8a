"""The bad-input matrix: each broken input -> one clear MedrefError naming the file, and no partial output.

.venv/bin/pytest tests/test_data_bad_inputs.py -q
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_src.data import download, preprocess, synthetic
from pipeline_src.data import shards as shardio
from pipeline_src.errors import MedrefError
from pipeline_src.params import Params


def make_params(source: str, sha256: str | None = None, on_invalid: str = "error") -> Params:
    return Params.model_validate(
        {
            "datasets": {"d": {"kind": "qata", "source": source, "sha256": sha256}},
            "preprocess": {"image_size": 48, "row_group_size": 4, "on_invalid": on_invalid},
            "regimes": {"r": {"dataset": "d", "fraction": 0.5}},
        }
    )


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return synthetic.generate(tmp_path / "src", n_train=6, n_val=2, n_test=2, image_size=48, seed=1, progress=False)


def _png(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(b, format="PNG")
    return b.getvalue()


def _first(src: Path, sub: str) -> Path:
    return sorted((src / "train" / sub).iterdir())[0]


def _corrupt_png(src: Path) -> str:
    f = _first(src, "images")
    f.write_bytes(f.read_bytes()[:60])  # truncated
    return f"train/images/{f.name}"


def _size_mismatch(src: Path) -> str:
    f = _first(src, "masks")
    f.write_bytes(_png(np.zeros((40, 48))))
    return f"train/images/{f.name.removeprefix('mask_')}"


def _non_binary_mask(src: Path) -> str:
    f = _first(src, "masks")
    f.write_bytes(_png(np.tile(np.arange(48) * 5, (48, 1))))
    return f"train/images/{f.name.removeprefix('mask_')}"


def _edit_text(src: Path, name: str, new: str | None) -> None:
    csv = src / "text" / "train.csv"
    lines = csv.read_text().splitlines(keepends=True)
    key = name if name.startswith("mask_") else f"mask_{name}"
    out = [ln for ln in lines if not ln.lower().startswith(key.lower() + ",")]
    assert len(out) == len(lines) - 1
    if new is not None:
        out.append(f'{key},"{new}"\n')
    csv.write_text("".join(out))


def _missing_text(src: Path) -> str:
    f = _first(src, "images")
    _edit_text(src, f.name, None)
    return f"train/images/{f.name}"


def _empty_text(src: Path) -> str:
    f = _first(src, "images")
    _edit_text(src, f.name, "  ")
    return f"train/images/{f.name}"


@pytest.mark.parametrize(
    "breaker,reason",
    [
        (_corrupt_png, "corrupt"),
        (_size_mismatch, "size mismatch"),
        (_non_binary_mask, "not binary"),
        (_missing_text, "no text row"),
        (_empty_text, "empty text"),
    ],
)
def test_invalid_pair_fails_with_one_error_and_no_output(tmp_path: Path, src: Path, breaker, reason: str) -> None:
    bad = breaker(src)
    second = sorted((src / "valid" / "images").iterdir())[0]
    second.write_bytes(b"not a png at all")  # a second bad file: both must be listed in the ONE error
    p = make_params(str(src))
    raw, shards = tmp_path / "raw", tmp_path / "shards"
    download.run(p, "d", raw)
    with pytest.raises(MedrefError) as e:
        preprocess.run(p, "d", raw, shards)
    msg = str(e.value)
    assert bad in msg and reason in msg and f"valid/images/{second.name}" in msg and "2 invalid" in msg
    assert not shards.exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".shards")]  # no temp dir left behind


def test_drop_records_reason_in_manifest(tmp_path: Path, src: Path) -> None:
    bad = _non_binary_mask(src)
    p = make_params(str(src), on_invalid="drop")
    raw, shards = tmp_path / "raw", tmp_path / "shards"
    download.run(p, "d", raw)
    preprocess.run(p, "d", raw, shards)
    m = shardio.load_manifest(shards)
    assert [d["file"] for d in m["dropped"]] == [bad] and "not binary" in m["dropped"][0]["reason"]
    assert m["splits"]["train"]["rows"] == 5


def test_failed_preprocess_keeps_previous_output(tmp_path: Path, src: Path) -> None:
    p = make_params(str(src))
    raw, shards = tmp_path / "raw", tmp_path / "shards"
    download.run(p, "d", raw)
    preprocess.run(p, "d", raw, shards)
    before = (shards / "manifest.json").read_bytes()
    (raw / "val" / "images").joinpath(sorted((raw / "val" / "images").iterdir())[0].name).write_bytes(b"x")
    with pytest.raises(MedrefError):
        preprocess.run(p, "d", raw, shards)
    assert (shards / "manifest.json").read_bytes() == before


def _tar_with(path: Path, name: str, data: bytes = b"x", link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            t.addfile(info)
        else:
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda d: _tar_with(d / "a.tar.gz", "../evil.png"),
        lambda d: _tar_with(d / "a.tar.gz", "/etc/evil.png"),
        lambda d: _tar_with(d / "a.tar.gz", "qata/link", link="/etc/passwd"),
    ],
)
def test_unsafe_archive_member(tmp_path: Path, make) -> None:
    arc = make(tmp_path)
    raw = tmp_path / "raw"
    with pytest.raises(MedrefError, match="unsafe archive member"):
        download.run(make_params(str(arc)), "d", raw)
    assert not raw.exists() and not (tmp_path.parent / "evil.png").exists()


def test_unsafe_zip_member(tmp_path: Path) -> None:
    arc = tmp_path / "a.zip"
    with zipfile.ZipFile(arc, "w") as z:
        z.writestr("ok/../../evil.png", b"x")
    with pytest.raises(MedrefError, match=r"unsafe archive member .*\.\."):
        download.run(make_params(str(arc)), "d", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_archive_source_and_checksum_mismatch(tmp_path: Path, src: Path) -> None:
    arc = tmp_path / "qata.tar.gz"
    with tarfile.open(arc, "w:gz") as t:
        t.add(src, arcname="QaTa")
    good = download.sha256_file(arc)
    raw = tmp_path / "raw"
    download.run(make_params(str(arc), good), "d", raw)
    assert (raw / "pairs.csv").is_file()
    with pytest.raises(MedrefError, match="checksum mismatch") as e:
        download.run(make_params(str(arc), "0" * 64), "d", tmp_path / "raw2")
    assert str(arc) in str(e.value) and good in str(e.value)
    assert not (tmp_path / "raw2").exists()


def test_url_source_says_where_to_place_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = make_params("https://example.org/files/QaTa-COV19.zip", "ab" * 32)
    with pytest.raises(MedrefError) as e:
        download.run(p, "d", tmp_path / "raw")
    msg = str(e.value)
    assert "data/downloads/QaTa-COV19.zip" in msg and "ab" * 32 in msg
    (tmp_path / "data" / "downloads").mkdir(parents=True)
    (tmp_path / "data" / "downloads" / "QaTa-COV19.zip").write_bytes(b"wrong")
    with pytest.raises(MedrefError, match="checksum mismatch"):
        download.run(p, "d", tmp_path / "raw")
    with pytest.raises(MedrefError, match="sha256 is not set"):
        download.run(make_params("https://example.org/x.zip"), "d", tmp_path / "raw")


def test_missing_source_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(MedrefError, match="does not exist"):
        download.run(make_params(str(tmp_path / "nope")), "d", tmp_path / "raw")


@pytest.mark.parametrize("content", ['{"dataset": "qata", "splits": {', '["not", "a", "manifest"]'])
def test_damaged_manifest_names_the_file_and_the_fix(tmp_path, content):
    from pipeline_src.data.shards import load_manifest

    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(MedrefError, match=r"manifest\.json: not a") as e:
        load_manifest(tmp_path)
    assert "dvc checkout" in str(e.value) and "medref preprocess" in str(e.value)


def test_row_selector_keeps_the_given_order_and_names_missing_ids():
    from pipeline_src.data.shards import select_rows

    assert select_rows(["a", "b", "c"], ["c", "a"], "shards/train").tolist() == [2, 0]
    with pytest.raises(MedrefError, match=r"shards/train: 1 ids not in the shards, e.g. \['z'\]"):
        select_rows(["a", "b"], ["a", "z"], "shards/train")
