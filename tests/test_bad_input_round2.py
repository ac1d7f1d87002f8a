"""Issue 24, family A: pixels and texts that were stored wrong without a word, now decoded right or refused.

    .venv/bin/python -m pytest -q tests/test_bad_input_round2.py

Each test is one probe of the issue, run through the command that met it (preprocess on a copy of real QaTa pairs,
predict's image reader, train's preflight); each failed on ab354c9.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline_src.data import layouts
from pipeline_src.errors import MedrefError
from pipeline_src.inference import predict as P
from pipeline_src.params import Params, load_raw
from tests.pixel_fixtures import png16, png_header_only
from tests.test_bad_input_ingest import _ingest
from tests.test_bad_input_ingest import make_params as ingest_params


def make_params(source: str, **pp) -> Params:
    return ingest_params(source, preprocess_over=pp)


def ingest(tmp_path: Path, src: Path, tag: str, **pp) -> tuple[Path, dict]:
    return _ingest(tmp_path, src, tag, preprocess_over=pp)


def rows(shards: Path, split: str = "train", cols=("image", "mask")) -> dict[str, tuple]:
    t = pq.read_table(sorted((shards / split).glob("part-*.parquet"))[0], columns=["id", *cols])
    return {i: tuple(t[c][k].as_py() for c in cols) for k, i in enumerate(t["id"].to_pylist())}


def img_of(shards: Path, id_: str) -> np.ndarray:
    return np.frombuffer(rows(shards)[id_][0], np.uint8).reshape(64, 64)


def mask_of(shards: Path, id_: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(rows(shards)[id_][1], np.uint8))[:64 * 64].reshape(64, 64).astype(bool)


def grey8(src: Path, id_: str) -> np.ndarray:
    return np.asarray(Image.open(src / "train" / "images" / f"{id_}.png").convert("L"))


# ---- A1: {0,1} masks saved as JPEG ------------------------------------------------------------------------------


def test_01_jpeg_mask_is_refused_not_stored_empty(tmp_path: Path, mini: Path) -> None:
    f = mini / "train" / "masks" / "mask_covid_100.png"
    m = np.asarray(Image.open(f).convert("L")) > 127
    f.unlink()
    Image.fromarray(m.astype(np.uint8)).save(f.with_suffix(".jpg"), quality=75)
    with pytest.raises(MedrefError, match=r"mask_covid_100\.jpg.*\{0, 1\} label mask stored as lossy JPEG"):
        ingest(tmp_path, mini, "j01")


def test_0_255_jpeg_mask_gives_its_png_twins_mask(tmp_path: Path, mini: Path) -> None:
    ref, _ = ingest(tmp_path, mini, "ref")
    f = mini / "train" / "masks" / "mask_covid_100.png"
    m = np.asarray(Image.open(f).convert("L"))
    f.unlink()
    Image.fromarray(m).save(f.with_suffix(".jpg"), quality=90)
    twin, man = ingest(tmp_path, mini, "j255")
    a, b = mask_of(ref, "covid_100"), mask_of(twin, "covid_100")
    assert a.any() and (a != b).sum() <= 0.02 * a.sum() and man["empty_masks"] == {}


# ---- A2 / A3: deep images, and one depth per dataset -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RGB", "LA"])
def test_12bit_in_16bit_rgb_or_la_png_is_its_8bit_twin(tmp_path: Path, mini: Path, kind: str) -> None:
    ref, _ = ingest(tmp_path, mini, "ref")
    a8 = grey8(mini, "covid_1")
    a12 = np.rint(a8.astype(np.float64) * 4095 / 255).astype(np.uint16)  # a 12-bit detector in 16-bit files
    chans = [a12] * 3 if kind == "RGB" else [a12, np.full_like(a12, 65535)]
    (mini / "train" / "images" / "covid_1.png").write_bytes(png16(np.dstack(chans), np.random.default_rng(0)))
    twin, man = ingest(tmp_path, mini, kind)
    assert man["intensity"] == {"rule": "bits", "bits": 12, "decided_from":
                                "the largest depth over the dataset's 1 deeper-than-8-bit image(s)"}
    assert np.array_equal(img_of(twin, "covid_1"), img_of(ref, "covid_1"))  # was mean 5-10 against ~145


def test_bit_depth_is_decided_once_per_dataset(tmp_path: Path, mini: Path) -> None:
    """Two 12-bit images of one scanner with maxima 1023 and 1024: raw 1000 maps to one grey (was 249 and 62)."""
    for id_, top in (("covid_1", 1023), ("covid_100", 1024)):
        a = np.full((224, 224), 1000, np.uint16)
        a[-1, -1] = top
        Image.fromarray(a).save(mini / "train" / "images" / f"{id_}.png")
    shards, man = ingest(tmp_path, mini, "two")
    assert man["intensity"]["bits"] == 12
    assert img_of(shards, "covid_1")[10, 10] == img_of(shards, "covid_100")[10, 10] == round(1000 * 255 / 4095)


def test_declared_bits_stored_refuses_a_pixel_above_it(tmp_path: Path, mini: Path) -> None:
    a = np.full((224, 224), 1000, np.uint16)
    a[0, 0] = 5000
    Image.fromarray(a).save(mini / "train" / "images" / "covid_1.png")
    with pytest.raises(MedrefError, match=r"covid_1\.png.*pixel values up to 5000, above the 12-bit range"):
        ingest(tmp_path, mini, "decl", bits_stored=12)
    Image.fromarray(np.minimum(a, 4095)).save(mini / "train" / "images" / "covid_1.png")
    _, man = ingest(tmp_path, mini, "decl2", bits_stored=12)
    assert man["intensity"] == {"rule": "bits", "bits": 12, "decided_from": "preprocess.bits_stored"}


def test_predict_maps_a_deep_image_by_the_models_recorded_depth(tmp_path: Path) -> None:
    config = {"input": {"image_size": 64, "intensity": "bits", "bits": 12, "min_image_side": 32,
                        "max_megapixels": 64.0}}
    size, rule = P.input_spec(config, tmp_path, None)
    assert rule.bits == 12
    a = np.full((64, 64), 1000, np.uint16)
    a[0, 0] = 1023  # alone, this image would be read as 10-bit: 1000 -> 249
    Image.fromarray(a).save(tmp_path / "x.png")
    assert P.load_image(tmp_path / "x.png", rule, P.input_limits(config, tmp_path))[5, 5] == 62
    a[0, 0] = 40000
    Image.fromarray(a).save(tmp_path / "x.png")
    with pytest.raises(MedrefError, match=r"x\.png: unsupported image: pixel values up to 40000, above the 12-bit"):
        P.load_image(tmp_path / "x.png", rule)


# ---- A4 / sizes: 1x1 and 10000x10000 ----------------------------------------------------------------------------


def test_1x1_image_is_refused_by_preprocess_and_predict(tmp_path: Path, mini: Path) -> None:
    Image.fromarray(np.full((1, 1), 90, np.uint8)).save(mini / "train" / "images" / "covid_1.png")
    with pytest.raises(MedrefError, match=r"train/images/covid_1\.png.*: unsupported image: 1x1 pixels, smaller than "
                                          r"the minimum of 32 pixels per side \(preprocess\.min_image_side\)"):
        ingest(tmp_path, mini, "tiny")
    f = mini / "train" / "images" / "covid_1.png"
    with pytest.raises(MedrefError, match=rf"{f}: unsupported image: 1x1 pixels.*\(preprocess \(defaults\)\.min_"):
        P.load_image(f, P.input_spec({"input": {"image_size": 64}}, tmp_path, None)[1], P.input_limits({}, tmp_path))


def test_huge_image_is_refused_from_its_header_without_pils_warning(tmp_path: Path) -> None:
    f = tmp_path / "huge.png"
    f.write_bytes(png_header_only(10000, 10000))  # no pixel data: decoding it would fail as truncated
    lim = P.input_limits({"input": {"max_megapixels": 64.0, "min_image_side": 32}}, tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would raise here
        with pytest.raises(MedrefError, match=rf"{f}: unsupported image: 10000x10000 pixels \(100\.0 megapixels\), "
                                              r"over the limit of 64 megapixels \(.*m/config\.json input\.max_meg"):
            P.load_image(f, P.input_spec({"input": {"image_size": 64}}, tmp_path, None)[1], lim)
        with pytest.raises(ValueError, match="over the limit of 64 megapixels"):  # the readers' default too
            from pipeline_src.data.imageio import IntensityRule, read_grey

            read_grey(f.read_bytes(), "image", IntensityRule())


# ---- A5: multi-page TIFF ----------------------------------------------------------------------------------------


def test_multi_page_tiff_is_refused_not_read_as_page_0(tmp_path: Path, mini: Path) -> None:
    f = mini / "train" / "images" / "covid_1.png"
    a = np.asarray(Image.open(f).convert("L"))
    f.unlink()
    Image.fromarray(a).save(f.with_suffix(".tif"), save_all=True, append_images=[Image.fromarray(255 - a)])
    with pytest.raises(MedrefError, match=r"covid_1\.tif.*multi-page TIFF \(2 pages\)"):
        ingest(tmp_path, mini, "tiff")


# ---- A6 and text limits ------------------------------------------------------------------------------------------


def test_nul_and_control_characters_are_stripped_and_counted(tmp_path: Path, mini: Path) -> None:
    csv = mini / "text" / "train.csv"
    lines = csv.read_text().splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if ln.startswith("mask_covid_1.png,"))
    key, text = lines[i].split(",", 1)
    lines[i] = f"{key},{text[:5]}\x00{text[5:9]}\x1b\x7f{text[9:]}"
    csv.write_text("".join(lines))
    shards, man = ingest(tmp_path, mini, "nul")
    stored = rows(shards, cols=("text",))["covid_1"][0]
    assert "\x00" not in stored and "\x1b" not in stored and stored == text.rstrip("\n").strip('"')
    assert man["text_control_chars"] == {"removed": 3, "rows": {"train/covid_1": 3}}
    assert layouts.clean_text("a\tb\nc\x00") == ("a\tb\nc", 1)  # tab and line breaks are whitespace: kept


def test_text_cell_over_csvs_default_limit_is_read_up_to_the_stated_maximum(tmp_path: Path, mini: Path) -> None:
    csv = mini / "text" / "train.csv"
    lines = csv.read_text().splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if ln.startswith("mask_covid_1.png,"))
    long_text = "Unilateral pulmonary infection, one infected area, lower left lung. " * 3000  # 204 000 characters
    lines[i] = f'mask_covid_1.png,"{long_text}"\n'
    csv.write_text("".join(lines))
    shards, _ = ingest(tmp_path, mini, "long")
    assert rows(shards, cols=("text",))["covid_1"][0] == long_text
    lines[i] = f'mask_covid_1.png,"{"x" * (layouts.MAX_TEXT_CHARS + 1)}"\n'
    csv.write_text("".join(lines))
    with pytest.raises(MedrefError, match=rf"{csv}:\d+: .*longer than 1,048,576 characters .*unclosed quote"):
        layouts.read_text_table(csv)


# ---- error messages name the file, not an object -----------------------------------------------------------------


def test_unidentified_file_is_named_not_an_object_repr(tmp_path: Path) -> None:
    f = tmp_path / "notes.png"
    f.write_bytes(b"this is a text file, not a picture" * 4)
    with pytest.raises(MedrefError) as e:
        P.load_image(f, P.input_spec({"input": {"image_size": 64}}, tmp_path, None)[1])
    assert str(e.value).startswith(f"{f}: corrupt or unreadable image: not a PNG, JPEG")
    assert "object at 0x" not in str(e.value)
    from pipeline_src.data.imageio import _clean

    assert _clean("cannot identify image file <_io.BytesIO object at 0x7f3a2c>", "a.png") == \
        "cannot identify image file a.png"


# ---- preflight: an image size the encoder cannot train on ------------------------------------------------------


@pytest.mark.parametrize("size, match", [(16, r"image_size 16 \(preprocess\.image_size\) is too small for resnet18 "
                                                r".*leaves a 1x1 feature map .*>= 64"),
                                         (48, r"image_size 48 .*not a multiple of the stride 32")])
def test_preflight_refuses_an_image_size_too_small_for_the_deepest_stage(tmp_path: Path, repo_root: Path,
                                                                          size: int, match: str) -> None:
    from pipeline_src.train.preflight import preflight
    from tests.train_fixtures import make_dataset

    data = make_dataset(tmp_path / "d", size=size)
    raw = load_raw(repo_root / "params.yaml")
    raw["regimes"]["tiny"] = {"dataset": "qata", "fraction": 0.25, "method": "supervised",
                              "train": {"batch_size": 4}}
    with pytest.raises(MedrefError, match=match):
        preflight(Params.model_validate(raw), "tiny", shards_dir=data["shards_dir"], labels_file=data["labels_file"],
                  split_file=data["split_file"])


def test_demo_pixels_unchanged_for_8bit_pngs(tmp_path: Path, mini: Path) -> None:
    """Inputs that were decoded right keep their bytes: the real 8-bit PNG pairs give the pixels PIL's "L" gives."""
    shards, man = ingest(tmp_path, mini, "ref")
    a = np.asarray(Image.fromarray(grey8(mini, "covid_1")).resize((64, 64), Image.Resampling.BILINEAR))
    assert np.array_equal(img_of(shards, "covid_1"), a)
    assert man["intensity"]["bits"] is None and man["text_control_chars"]["removed"] == 0
