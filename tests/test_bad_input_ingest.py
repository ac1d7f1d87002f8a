"""Bad inputs at ingest (download, layouts, preprocess): 16-bit images, {0,1} masks, text tables, archives, disk full.

.venv/bin/pytest tests/test_bad_input_ingest.py -q

Fixtures are copies of a few real QaTa PNGs (../shared/data/qata_sample) or tiny synthetic files in tmp_path.
"""

from __future__ import annotations

import errno
import io
import shutil
import tarfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline_src import cli
from pipeline_src.data import download, imageio, layouts, preprocess
from pipeline_src.data import shards as shardio
from pipeline_src.errors import MedrefError
from pipeline_src.params import Params
from tests.conftest import MINI_TRAIN, MINI_VALID

TRAIN, VALID = MINI_TRAIN, MINI_VALID  # the pairs of conftest's ``mini`` release


def make_params(source: str, sha256: str | None = None, preprocess_over: dict | None = None,
                archive: dict | None = None) -> Params:
    ds = {"kind": "qata", "source": source, "sha256": sha256}
    if archive:
        ds["archive"] = archive
    return Params.model_validate({
        "datasets": {"d": ds},
        "preprocess": {"image_size": 64, "row_group_size": 4, **(preprocess_over or {})},
        "regimes": {"r": {"dataset": "d", "fraction": 0.5}},
    })


def _ingest(tmp_path: Path, src: Path, tag: str, **kw) -> tuple[Path, dict]:
    p = make_params(str(src), **kw)
    raw, shards = tmp_path / f"raw-{tag}", tmp_path / f"shards-{tag}"
    download.run(p, "d", raw)
    preprocess.run(p, "d", raw, shards)
    return shards, shardio.load_manifest(shards)


def _rows(shards: Path, split: str = "train") -> dict[str, tuple[bytes, bytes]]:
    t = pq.read_table(sorted((shards / split).glob("part-*.parquet"))[0], columns=["id", "image", "mask"])
    return {i: (im, mk) for i, im, mk in zip(t["id"].to_pylist(), t["image"].to_pylist(), t["mask"].to_pylist(),
                                             strict=True)}


def _save(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path)


# ---- 16-bit images ----------------------------------------------------------------------------------------------


def test_16bit_twin_round_trips_to_the_8bit_pixels(tmp_path: Path, mini: Path) -> None:
    ref, _ = _ingest(tmp_path, mini, "ref")
    f = mini / "train" / "images" / "covid_1.png"
    a8 = np.asarray(Image.open(f))
    _save(a8.astype(np.uint16) * 257, f)
    assert Image.open(f).mode == "I;16"
    twin, _ = _ingest(tmp_path, mini, "twin")
    before, after = _rows(ref), _rows(twin)
    assert after["covid_1"][0] == before["covid_1"][0]  # clipped to white before: mean 254.5 instead of 145.6
    assert np.frombuffer(after["covid_1"][0], np.uint8).mean() < 200


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_read_grey_bits_rule_for_16_and_12_bit(fmt: str) -> None:
    rng = np.random.default_rng(0)
    a8 = rng.integers(20, 230, (16, 16), dtype=np.uint8)  # not the full 0..255 range: min-max would stretch it
    rule = imageio.IntensityRule("bits")

    def enc(a: np.ndarray) -> bytes:
        b = io.BytesIO()
        Image.fromarray(a).save(b, format=fmt)
        return b.getvalue()

    assert np.array_equal(imageio.read_grey(enc(a8.astype(np.uint16) * 257), "image", rule), a8)
    a12 = np.rint(a8.astype(np.float64) * 4095 / 255).astype(np.uint16)  # 12-bit-in-16
    assert np.array_equal(imageio.read_grey(enc(a12), "image", rule), a8)
    assert np.array_equal(imageio.read_grey(enc(a8), "image", rule), a8)  # 8-bit: as is


def test_minmax_and_percentile_windows_from_params(tmp_path: Path, mini: Path) -> None:
    a = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    a[0, 0] = 60000  # one hot pixel
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="PNG")
    mm = imageio.read_grey(b.getvalue(), "image", imageio.IntensityRule("minmax"))
    pc = imageio.read_grey(b.getvalue(), "image", imageio.IntensityRule("percentile", (1.0, 99.0)))
    assert mm.min() == 0 and mm.max() == 255 and mm[32, 32] < 20  # the hot pixel squeezes min-max
    assert pc.min() == 0 and pc.max() == 255 and 100 < pc[32, 32] < 155  # the window ignores it
    assert preprocess.intensity_rule(make_params("x", preprocess_over={"intensity": "percentile"}).preprocess) \
        == imageio.IntensityRule("percentile", (1.0, 99.0))
    with pytest.raises(ValueError, match="intensity_percentiles"):
        make_params("x", preprocess_over={"intensity_percentiles": [99.0, 1.0]})


def test_rgb_rgba_and_jpeg_images_are_read_grey() -> None:
    g = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    for arr, fmt in ((np.stack([g] * 3, -1), "PNG"), (np.dstack([g, g, g, np.full_like(g, 7)]), "PNG"),
                     (np.stack([g] * 3, -1), "BMP")):
        b = io.BytesIO()
        Image.fromarray(arr).save(b, format=fmt)
        assert np.array_equal(imageio.read_grey(b.getvalue(), "image", imageio.IntensityRule()), g)
    with pytest.raises(ValueError, match="corrupt or unreadable image"):
        imageio.read_grey(b"\x89PNG not really", "image", imageio.IntensityRule())


# ---- {0,1} masks and all-empty masks ------------------------------------------------------------------------------


def test_01_mask_gives_the_same_packed_mask_as_its_0_255_twin(tmp_path: Path, mini: Path) -> None:
    ref, _ = _ingest(tmp_path, mini, "ref")
    f = mini / "train" / "masks" / "mask_covid_100.png"
    m = np.asarray(Image.open(f))
    _save((m > 127).astype(np.uint8), f)  # {0, 1}: today all below mask_threshold 127 -> an empty mask
    twin, _ = _ingest(tmp_path, mini, "twin")
    assert _rows(twin)["covid_100"][1] == _rows(ref)["covid_100"][1]
    assert any(_rows(twin)["covid_100"][1])


def test_all_empty_mask_among_lesion_masks_is_reported_in_the_manifest(tmp_path: Path, mini: Path) -> None:
    f = mini / "train" / "masks" / "mask_covid_1000.png"
    _save(np.zeros((224, 224), np.uint8), f)
    _, m = _ingest(tmp_path, mini, "e")
    assert m["empty_masks"] == {"train": {"count": 1, "ids": ["covid_1000"]}}  # valid: its one mask is not empty


@pytest.mark.parametrize("fg", [1, 255, 65535, 4095])
def test_read_mask_binarises_01_masks_of_any_depth(fg: int) -> None:
    m = np.zeros((8, 8), np.uint16 if fg > 255 else np.uint8)
    m[2:5, 3:6] = fg
    b = io.BytesIO()
    Image.fromarray(m).save(b, format="PNG")
    out = imageio.read_mask(b.getvalue())
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255} and (out[2:5, 3:6] == 255).all()
    if fg == 1:  # 8-bit and 16-bit containers alike
        b = io.BytesIO()
        Image.fromarray(m.astype(np.uint16)).save(b, format="PNG")
        assert np.array_equal(imageio.read_mask(b.getvalue()), out)


# ---- text tables --------------------------------------------------------------------------------------------------


def test_conflicting_duplicate_text_key_names_both_lines(tmp_path: Path, mini: Path) -> None:
    csv = mini / "text" / "train.csv"
    lines = csv.read_text().splitlines(keepends=True)
    first = 1 + next(i for i, ln in enumerate(lines) if ln.startswith("mask_covid_100.png,"))
    # a different case of the same key (lookups are case-insensitive), and another text: last-one-wins before
    csv.write_text("".join(lines) + "MASK_covid_100.png,\"another text, all right lung.\"\n")
    with pytest.raises(MedrefError) as e:
        layouts.read_layout("qata", mini)
    msg = str(e.value)
    assert "MASK_covid_100.png" in msg and f"lines {first} and 6" in msg and str(csv) in msg
    csv.write_text("".join(lines + [lines[first - 1]]))  # an identical repeat passes
    assert len(layouts.read_layout("qata", mini)) == 4


def test_same_key_in_train_and_test_tables_with_two_texts_names_both_files(mini: Path) -> None:
    train = mini / "text" / "train.csv"
    test = mini / "text" / "test.csv"
    test.write_text("Image,Description\nmask_covid_1.png,\"No pulmonary infection.\"\n")
    with pytest.raises(MedrefError) as e:
        layouts.read_layout("qata", mini)
    assert "'mask_covid_1.png'" in str(e.value) and str(train) in str(e.value) and str(test) in str(e.value)


def test_latin1_text_csv_is_one_cli_error_naming_file_and_line(tmp_path: Path, mini: Path, capsys) -> None:
    csv = mini / "text" / "train.csv"
    lines = csv.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace("lung", "poumon gauche \u00e9tendu", 1)
    csv.write_bytes("".join(lines).encode("latin-1"))
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(make_params(str(mini)).model_dump(mode="json")))
    rc = cli.main(["--params", str(params), "download", "d", "--out", str(tmp_path / "raw")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"{csv}:4" in err and "UTF-8" in err and "0xe9" in err
    assert not (tmp_path / "raw").exists()


def test_nfd_file_name_matches_its_nfc_key(tmp_path: Path, mini: Path) -> None:
    nfc_name = "caf\u00e9_1"
    nfd_name = unicodedata.normalize("NFD", nfc_name)
    assert nfd_name != nfc_name
    (mini / "train" / "images" / "covid_1.png").rename(mini / "train" / "images" / f"{nfd_name}.png")
    (mini / "train" / "masks" / "mask_covid_1.png").rename(mini / "train" / "masks" / f"mask_{nfd_name}.png")
    csv = mini / "text" / "train.csv"
    csv.write_text(csv.read_text().replace("mask_covid_1.png", f"mask_{nfc_name}.png"))
    pair = next(p for p in layouts.read_layout("qata", mini) if p.id.startswith("caf"))
    assert pair.id == nfc_name and pair.mask is not None and pair.text and pair.text.startswith("Bilateral")


def test_jpeg_image_with_png_mask_finds_its_text_row(tmp_path: Path, mini: Path) -> None:
    f = mini / "train" / "images" / "covid_1.png"
    Image.open(f).save(f.with_suffix(".jpg"), quality=95)
    f.unlink()
    pair = next(p for p in layouts.read_layout("qata", mini) if p.id == "covid_1")
    assert pair.image.suffix == ".jpg" and pair.mask.name == "mask_covid_1.png"
    assert pair.text is not None and pair.text.startswith("Bilateral")  # "no text row" before


# ---- invalid-pair listing -----------------------------------------------------------------------------------------


def test_invalid_pair_listing_prints_each_source_path_once(tmp_path: Path, mini: Path) -> None:
    (mini / "train" / "images" / "covid_100.png").write_bytes(b"not a png")
    p = make_params(str(mini))
    download.run(p, "d", tmp_path / "raw")
    with pytest.raises(MedrefError) as e:
        preprocess.run(p, "d", tmp_path / "raw", tmp_path / "shards")
    msg = str(e.value)
    assert "\n  train/images/covid_100.png (mask train/masks/mask_covid_100.png): corrupt" in msg
    assert "train/train/" not in msg


# ---- archives -----------------------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return path


def _targz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for n, data in members.items():
            info = tarfile.TarInfo(n)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


BOMB = {"QaTa/text/train.csv": b"Image,Description\n", "QaTa/train/images/huge.png": bytes(4 * 2**20)}


@pytest.mark.parametrize("make", [_zip, _targz], ids=["zip", "tar.gz"])
def test_compression_bomb_is_refused_before_extracting(tmp_path: Path, make, monkeypatch) -> None:
    arc = make(tmp_path / ("a.zip" if make is _zip else "a.tar.gz"), BOMB)
    assert arc.stat().st_size < 64 * 2**10
    calls = []
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: calls.append(a))
    with pytest.raises(MedrefError) as e:
        download.run(make_params(str(arc)), "d", tmp_path / "raw")
    msg = str(e.value)
    assert str(arc) in msg and "datasets.d.archive.max_ratio" in msg and "QaTa/train/images/huge.png" in msg
    assert not calls and not (tmp_path / "raw").exists()


@pytest.mark.parametrize("make", [_zip, _targz], ids=["zip", "tar.gz"])
@pytest.mark.parametrize("limit,expect", [({"max_members": 1}, "max_members=1"),
                                          ({"max_unpacked_gib": 2**-30 * 100}, "max_unpacked_gib")])
def test_archive_limits_from_params_name_the_member(tmp_path: Path, make, limit: dict, expect: str) -> None:
    arc = make(tmp_path / ("a.zip" if make is _zip else "a.tar.gz"),
               {"QaTa/text/train.csv": b"Image,Description\n", "QaTa/b.png": b"x" * 200})
    with pytest.raises(MedrefError) as e:
        download.run(make_params(str(arc), archive=limit), "d", tmp_path / "raw")
    assert expect in str(e.value) and "'QaTa/b.png'" in str(e.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_not_a_zip_or_truncated_zip_names_the_archive(tmp_path: Path, mini: Path, damage: str, capsys) -> None:
    arc = tmp_path / "qata.zip"
    shutil.make_archive(str(arc.with_suffix("")), "zip", mini)
    data = arc.read_bytes()
    arc.write_bytes(b"<html>not found</html>" if damage == "garbage" else data[: len(data) // 2])
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(make_params(str(arc)).model_dump(mode="json")))
    rc = cli.main(["--params", str(params), "download", "d", "--out", str(tmp_path / "raw")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(arc) in err and "not a zip or tar archive" in err


def test_url_download_without_suffix_is_detected_by_content(tmp_path: Path, mini: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    placed = tmp_path / "data" / "downloads" / "download"
    placed.parent.mkdir(parents=True)
    shutil.make_archive(str(tmp_path / "rel"), "zip", mini)
    shutil.move(tmp_path / "rel.zip", placed)
    p = make_params("https://example.org/files/download?id=123", download.sha256_file(placed))
    download.run(p, "d", tmp_path / "raw")  # was extracted as a tar and failed on a valid zip
    assert len(download.read_pairs(tmp_path / "raw")) == 4


def _no_temps(d: Path) -> None:
    assert not [q.name for q in d.iterdir() if q.name.startswith(".raw")]


@pytest.mark.parametrize("where", ["extract", "normalise"])
def test_disk_full_in_download_is_one_error_naming_folder_and_space(tmp_path: Path, mini: Path, where: str,
                                                                     monkeypatch) -> None:
    arc = tmp_path / "qata.zip"
    shutil.make_archive(str(arc.with_suffix("")), "zip", mini)
    out = tmp_path / "out" / "raw"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "extract":
        monkeypatch.setattr(zipfile.ZipFile, "extractall", full)
    else:
        monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(MedrefError) as e:
        download.run(make_params(str(arc)), "d", out)
    msg = str(e.value)
    need = 2 * download.unpacked_size(arc) / 2**20
    assert str(out.parent) in msg and "disk full" in msg and f"about {need:.0f} MiB" in msg and "\n" not in msg
    assert not out.exists()
    _no_temps(out.parent)
