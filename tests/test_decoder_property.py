"""The one pixel decoder (pipeline_src/data/imageio.py), property-tested across every PIL mode and bit depth.

    .venv/bin/python -m pytest -q tests/test_decoder_property.py

For random 8-bit grey pictures (hypothesis), every mode and depth PIL can write, plus the 16-bit RGB / RGBA /
grey+alpha PNGs it cannot (tests/pixel_fixtures.py), decodes to the same 8-bit pixels as its 8-bit twin (within one
level, where a colour conversion rounds), and every binary mask, {0, 1}, {0, 255}, 1-bit, paletted, 16-bit or a
{0, 255} JPEG, reads back as the same mask. What cannot be decoded faithfully is refused with a message naming it:
multi-page TIFF/GIF, multi-frame DICOM, a {0, 1} mask stored as JPEG.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from pipeline_src.data import imageio
from pipeline_src.data.imageio import IntensityRule, read_grey, read_mask
from tests.pixel_fixtures import png16

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.tuples(st.integers(2, 24), st.integers(2, 24))
grey = arrays(np.uint8, shapes)
BITS = IntensityRule("bits")


def enc(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, format=fmt, **kw)
    return b.getvalue()


def lum(rgb: np.ndarray) -> np.ndarray:
    """The 8-bit twin of a colour picture: PIL's own luminance."""
    return np.asarray(Image.fromarray(rgb[..., :3]).convert("L"))


def close(a: np.ndarray, b: np.ndarray, tol: int = 1) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max(initial=0)) <= tol


def deep(a8: np.ndarray, bits: int) -> np.ndarray:
    """The ``bits``-deep twin of an 8-bit picture (0..255 -> 0..2**bits-1)."""
    return np.rint(a8.astype(np.float64) * (2**bits - 1) / 255).astype(np.uint16 if bits <= 16 else np.int32)


# ---- images ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(a8=grey, fmt=st.sampled_from(["PNG", "TIFF", "BMP"]))
def test_L_and_1(a8, fmt):
    assert np.array_equal(read_grey(enc(Image.fromarray(a8), fmt), "image", BITS), a8)
    b = np.where(a8 > 127, 255, 0).astype(np.uint8)
    assert np.array_equal(read_grey(enc(Image.fromarray(b).convert("1"), fmt), "image", BITS), b)


@SETTINGS
@given(a8=grey, alpha=st.integers(0, 255), fmt=st.sampled_from(["PNG", "TIFF"]))
def test_LA_ignores_alpha(a8, alpha, fmt):
    im = Image.fromarray(np.dstack([a8, np.full_like(a8, alpha)]), mode="LA")
    assert np.array_equal(read_grey(enc(im, fmt), "image", BITS), a8)


@SETTINGS
@given(a8=grey, seed=st.integers(0, 2**16), fmt=st.sampled_from(["PNG", "TIFF"]))
def test_P_by_its_palette(a8, seed, fmt):
    im = Image.fromarray(a8, mode="L").convert("P")  # a grey palette: the twin exactly
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.putdata(a8.ravel().tolist())
    assert np.array_equal(read_grey(enc(im, fmt), "image", BITS), a8)
    pal = np.random.default_rng(seed).integers(0, 256, (256, 3), dtype=np.uint8)  # a colour palette
    im.putpalette(pal.ravel().tolist())
    assert close(read_grey(enc(im, fmt), "image", BITS), lum(pal[a8]))


@SETTINGS
@given(rgb=arrays(np.uint8, st.tuples(st.integers(2, 24), st.integers(2, 24), st.just(4))),
       fmt=st.sampled_from(["PNG", "TIFF"]))
def test_RGB_RGBA_CMYK_by_luminance(rgb, fmt):
    twin = lum(rgb)
    assert np.array_equal(read_grey(enc(Image.fromarray(rgb[..., :3]), fmt), "image", BITS), twin)
    assert np.array_equal(read_grey(enc(Image.fromarray(rgb, "RGBA"), fmt), "image", BITS), twin)
    g = np.repeat(rgb[..., :1], 3, axis=2)  # grey stored as RGB: the grey itself
    assert np.array_equal(read_grey(enc(Image.fromarray(g), fmt), "image", BITS), g[..., 0])
    cmyk = Image.fromarray(rgb[..., :3]).convert("CMYK")
    assert close(read_grey(enc(cmyk, "TIFF"), "image", BITS), twin)


@SETTINGS
@given(a8=grey, bits=st.sampled_from([16, 12, 10]),
       mode_fmt=st.sampled_from([("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF"), ("I;16L", "TIFF"),
                                 ("I;16B", "PNG")]))
def test_I16_in_every_byte_order(a8, bits, mode_fmt):
    mode, fmt = mode_fmt
    a = deep(a8, bits)
    im = Image.frombytes(mode, a8.shape[::-1], a.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    data = enc(im, fmt)
    assert np.array_equal(read_grey(data, "image", IntensityRule("bits", bits=bits)), a8)
    if int(a.max()) >= 2 ** (bits - 1):  # without a dataset depth, the image's own range decides: the same here
        assert np.array_equal(read_grey(data, "image", BITS), a8)


@SETTINGS
@given(a8=grey, bits=st.sampled_from([16, 20, 24]))
def test_I_int32(a8, bits):
    a = deep(a8, bits).astype(np.int32)
    assert np.array_equal(read_grey(enc(Image.fromarray(a, "I"), "TIFF"), "image", IntensityRule(bits=bits)), a8)


@SETTINGS
@given(a8=grey)
def test_F_float_is_min_max_scaled(a8):
    a8 = a8.copy()
    a8.flat[0], a8.flat[-1] = 0, 255  # min-max of the twin is the identity
    f = Image.fromarray(a8.astype(np.float32) / 255.0, "F")
    assert close(read_grey(enc(f, "TIFF"), "image", BITS), a8)
    bad = a8.astype(np.float32)
    bad.flat[0] = np.nan
    with pytest.raises(ValueError, match="unsupported image: float TIFF with NaN"):
        read_grey(enc(Image.fromarray(bad, "F"), "TIFF"), "image", BITS)


@SETTINGS
@given(rgb=arrays(np.uint8, st.tuples(st.integers(2, 24), st.integers(2, 24), st.just(4))),
       bits=st.sampled_from([16, 12]), seed=st.integers(0, 2**16))
def test_16bit_RGB_RGBA_LA_png_at_full_depth(rgb, bits, seed):
    """PIL keeps the high byte of these (a 12-bit picture comes out nearly black); the decoder reads both bytes."""
    rng = np.random.default_rng(seed)  # random PNG row filters: PIL's unfiltering is exercised
    rule = IntensityRule("bits", bits=bits)
    twin = lum(rgb)
    assert close(read_grey(png16(deep(rgb[..., :3], bits), rng), "image", rule), twin)
    assert close(read_grey(png16(deep(rgb, bits), rng), "image", rule), twin)
    la = np.dstack([deep(rgb[..., 0], bits), deep(rgb[..., 3], bits)])
    assert np.array_equal(read_grey(png16(la, rng), "image", rule), rgb[..., 0])


@SETTINGS
@given(a8=grey, pages=st.integers(2, 3))
def test_multi_page_files_are_refused(a8, pages):
    frames = [Image.fromarray(a8 ^ np.uint8(64 * k)) for k in range(pages)]  # distinct (GIF merges repeats)
    for fmt in ("TIFF", "GIF"):
        data = enc(frames[0], fmt, save_all=True, append_images=frames[1:])
        with pytest.raises(ValueError, match=rf"unsupported image: multi-page {fmt} \({pages} pages\)"):
            read_grey(data, "image", BITS)
    assert np.array_equal(read_grey(enc(frames[0], "TIFF"), "image", BITS), a8)  # one page: read as it is


@SETTINGS
@given(a8=grey)
def test_jpeg_is_pils_own_decoding(a8):
    data = enc(Image.fromarray(a8), "JPEG", quality=90)
    assert np.array_equal(read_grey(data, "image", BITS), np.asarray(Image.open(io.BytesIO(data)).convert("L")))


@SETTINGS
@given(a8=grey)
def test_dicom_8_and_12_bit_and_multi_frame(a8):
    from tests.test_dicom import dicom

    assert np.array_equal(read_grey(dicom(a8), "image", BITS), a8)
    # 12 bits stored in 16: the file's BitsStored is its depth, whatever its maximum
    assert np.array_equal(read_grey(dicom(deep(a8, 12), bits_stored=12), "image", BITS), a8)
    b = dicom(np.concatenate([a8, a8]), NumberOfFrames=2)
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(b))
    ds.Rows = a8.shape[0]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"unsupported image: multi-frame DICOM \(2 frames\)"):
        read_grey(buf.getvalue(), "image", BITS)


def test_modes_outside_the_list_are_refused_by_name():
    lab = Image.new("LAB", (4, 4))
    with pytest.raises(ValueError, match=r"unsupported image: TIFF in PIL mode 'LAB'"):
        read_grey(enc(lab, "TIFF"), "image", BITS)


# ---- masks ----------------------------------------------------------------------------------------------------

masks = arrays(np.bool_, st.tuples(st.integers(8, 40), st.integers(8, 40)))


@SETTINGS
@given(m=masks)
def test_every_binary_mask_encoding_reads_back_as_the_mask(m):
    want = m.astype(np.uint8) * 255
    u8 = m.astype(np.uint8)
    encodings = {
        "{0,1} PNG": enc(Image.fromarray(u8), "PNG"),
        "{0,255} PNG": enc(Image.fromarray(want), "PNG"),
        "{0,1} TIFF": enc(Image.fromarray(u8), "TIFF"),
        "1-bit PNG": enc(Image.fromarray(want).convert("1"), "PNG"),
        "16-bit {0,65535}": enc(Image.fromarray(u8.astype(np.uint16) * 65535), "PNG"),
        "16-bit {0,1}": enc(Image.fromarray(u8.astype(np.uint16)), "PNG"),
        "16-bit {0,4095}": enc(Image.fromarray(u8.astype(np.uint16) * 4095), "PNG"),
        "RGB {0,255}": enc(Image.fromarray(np.repeat(want[..., None], 3, 2)), "PNG"),
    }
    for name, grey_pal in (("P grey {0,255}", (0, 0, 0, 255, 255, 255)), ("P grey {0,1}", (0, 0, 0, 1, 1, 1)),
                           ("P coloured (VOC)", (0, 0, 0, 128, 0, 0))):
        p = Image.fromarray(u8, "L").convert("P")
        p.putdata(u8.ravel().tolist())
        p.putpalette(list(grey_pal) + [0, 0, 0] * 254)
        encodings[name] = enc(p, "PNG")
    for name, data in encodings.items():
        got = read_mask(data)
        assert np.array_equal(got > 127, m), name
        assert set(np.unique(got)) <= {0, 255}, name


def _only_at_edges(got: np.ndarray, m: np.ndarray) -> bool:
    """Every wrong pixel touches (3x3) a pixel of the other class: JPEG moves edges, never whole regions."""
    pad = np.pad(m, 1, mode="edge")
    h, w = m.shape
    win = np.stack([pad[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    mixed = win.any(0) & ~win.all(0)
    return bool(((got != m) <= mixed).all())


@SETTINGS
@given(y=st.integers(0, 20), x=st.integers(0, 20), h=st.integers(8, 20), w=st.integers(8, 20))
def test_jpeg_masks_0_255_binarise_and_0_1_are_refused(y, x, h, w):
    m = np.zeros((48, 48), bool)
    m[y:y + h, x:x + w] = True
    got = read_mask(enc(Image.fromarray(m.astype(np.uint8) * 255), "JPEG", quality=75)) > 127
    assert _only_at_edges(got, m)
    with pytest.raises(ValueError, match=r"unsupported mask: a \{0, 1\} label mask stored as lossy JPEG"):
        read_mask(enc(Image.fromarray(m.astype(np.uint8)), "JPEG", quality=95))


def test_decide_bits_is_per_dataset():
    """Two 12-bit images of one scanner, maxima 1023 and 1024: one depth, so raw 1000 maps to one grey."""
    a = np.full((4, 4), 1000, np.uint16)
    a[0, 0] = 1023
    b = a.copy()
    b[0, 0] = 1024
    depths = [imageio.image_bits(imageio.Native(x)) for x in (a, b)]
    assert depths == [10, 12]  # what the per-image guess used to apply: 249 and 62
    bits, how = imageio.decide_bits(depths + [None])
    assert bits == 12 and "2 deeper-than-8-bit" in how
    r = IntensityRule("bits", bits=bits)
    assert imageio.to_uint8(a, r)[1, 1] == imageio.to_uint8(b, r)[1, 1] == 62
    assert imageio.decide_bits([None, None]) == (None, "no image deeper than 8 bits")
    assert imageio.decide_bits(depths, declared=14)[0] == 14
    with pytest.raises(ValueError, match=r"pixel values up to 1024, above the 10-bit range"):
        imageio.to_uint8(b, IntensityRule("bits", bits=10))
