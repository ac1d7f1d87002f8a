"""DICOM input (pipeline_src/data/imageio.py): files built with pydicom decode to the expected pixels.

    .venv/bin/python -m pytest -q tests/test_dicom.py
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, JPEGLSNearLossless, SecondaryCaptureImageStorage

from pipeline_src.data.imageio import IntensityRule, read_grey

BITS = IntensityRule("bits")


def dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, syntax=None,
          encapsulated: bytes | None = None, **elements) -> bytes:
    """A single-frame DICOM Part-10 file of ``pixels`` (uint8/uint16/int16), with extra data elements;
    ``encapsulated``: the one frame's compressed bytes instead (for a compressed ``syntax``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for k, v in elements.items():
        setattr(ds, k, v)
    if encapsulated is None:
        ds.PixelData = pixels.tobytes()
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_monochrome2_uint8_is_read_as_is():
    px = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    assert np.array_equal(read_grey(dicom(px), "image", BITS), px)


def test_monochrome2_12_bit_without_window_follows_the_bits_rule_like_a_png():
    px = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 64)  # 0..4032: a 12-bit image
    got = read_grey(dicom(px, bits_stored=12), "image", BITS)
    assert np.array_equal(got, np.rint(px * (255 / 4095)).astype(np.uint8))


def test_monochrome1_is_inverted():
    px = np.array([[0, 100], [200, 255]], np.uint8)
    assert np.array_equal(read_grey(dicom(px, "MONOCHROME1"), "image", BITS), 255 - px)
    px16 = np.array([[0, 1000], [3000, 4095]], np.uint16)
    got = read_grey(dicom(px16, "MONOCHROME1", bits_stored=12), "image", BITS)
    assert np.array_equal(got, np.rint((4095 - px16) * (255 / 4095)).astype(np.uint8))


def test_rescale_then_window_maps_the_window_onto_0_255():
    px = np.array([[0, 400, 500, 700, 2000, 4095]], np.uint16)
    # Hounsfield-like: value = 2 * stored - 1024; window [-400, 600] (centre 100, width 1000)
    b = dicom(px, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=100, WindowWidth=1000)
    hu = px.astype(np.float64) * 2 - 1024
    # DICOM's linear window (PS3.3 C.11.2.1.2.1): ((x - (c - 0.5)) / (w - 1) + 0.5), clipped
    expect = np.clip(((hu - 99.5) / 999 + 0.5), 0, 1) * 255
    got = read_grey(b, "image", BITS)
    assert np.abs(got.astype(int) - np.rint(expect)).max() <= 1
    assert got[0, 0] == 0 and got[0, -1] == 255 and all(0 < v < 255 for v in got[0, 1:4])
    inverted = read_grey(dicom(px, "MONOCHROME1", bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                               WindowCenter=100, WindowWidth=1000), "image", BITS)
    assert np.array_equal(inverted, 255 - got)


def test_signed_rescaled_values_without_window_are_min_max_scaled():
    px = np.array([[-1000, 0], [500, 1000]], np.int16)
    got = read_grey(dicom(px, RescaleSlope=1, RescaleIntercept=0), "image", BITS)
    assert np.array_equal(got, np.rint((px + 1000) * (255 / 2000)).astype(np.uint8))


def test_rgb_dicom_becomes_luminance():
    px = np.zeros((4, 4, 3), np.uint8)
    px[..., 0] = 200
    got = read_grey(dicom(px, "RGB"), "image", BITS)
    from PIL import Image

    assert np.array_equal(got, np.asarray(Image.fromarray(px).convert("L")))


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEGLSNearLossless])  # no JPEG-LS plugin is pinned
def test_compressed_syntax_without_a_decoder_is_refused_clearly(syntax):
    from pydicom.pixels import get_decoder

    if get_decoder(syntax).is_available:
        pytest.skip(f"this installation decodes {syntax.name}")
    b = dicom(np.zeros((4, 4), np.uint8), syntax=syntax, encapsulated=b"\xff\xd8\xff\xf7 codestream \xff\xd9")
    with pytest.raises(ValueError, match=rf"unsupported image: DICOM compressed as {re.escape(syntax.name)}.*gdcmconv --raw"):
        read_grey(b, "image", BITS)


def test_multi_frame_is_refused():
    px = np.zeros((2, 4, 4), np.uint8)
    b = dicom(px.reshape(8, 4), NumberOfFrames=2)
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(b))
    ds.Rows = 4
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ValueError, match="multi-frame DICOM"):
        read_grey(buf.getvalue(), "image", BITS)


def test_truncated_dicom_is_corrupt():
    b = dicom(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="corrupt or unreadable image"):
        read_grey(b[:-40], "image", BITS)


def test_predict_reads_dicom_and_names_a_refused_file(tmp_path: Path):
    """The predict command's reader gives one MedrefError naming the DICOM it cannot decode."""
    from pipeline_src.errors import MedrefError
    from pipeline_src.inference.predict import load_image

    f = tmp_path / "scan.dcm"
    f.write_bytes(dicom(np.full((6, 6), 7, np.uint8)))
    assert np.array_equal(load_image(f, BITS), np.full((6, 6), 7, np.uint8))
    f.write_bytes(dicom(np.zeros((8, 8), np.uint8))[:-40])
    with pytest.raises(MedrefError, match=rf"{f}: corrupt or unreadable image.*accepted inputs"):
        load_image(f, BITS)


def test_voi_lut_sequence_is_applied():
    px = np.array([[0, 1], [2, 3]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 12]  # 4 entries from stored value 0, 12-bit output
    item.LUTData = [0, 1000, 3000, 4095]
    item["LUTData"].VR = "US"
    b = dicom(px, bits_stored=12, VOILUTSequence=[item])
    got = read_grey(b, "image", BITS)
    assert np.array_equal(got, np.rint(np.array([[0, 1000], [3000, 4095]]) * (255 / 4095)).astype(np.uint8))
