"""One decoder for every 2-D image medref reads: any PNG/JPEG/TIFF/BMP/DICOM file -> a grey uint8 array.

    from pipeline_src.data.imageio import read_grey, read_mask
    img = read_grey(path.read_bytes(), "image", IntensityRule("bits"))      # uint8 [H, W]

Used by ``medref preprocess`` (pipeline_src/data/preprocess.py ``load_pair``) and ``medref predict``
(pipeline_src/inference/predict.py), so a picture gives the same pixels whichever command reads it.

Intensity rule (``preprocess.intensity``), applied only to images deeper than 8 bits; 8-bit images (grey,
palette, RGB, RGBA: converted to luminance by PIL, the alpha channel is ignored) are returned as they are:
  bits        the range the pixels really use: 0 .. 2**b - 1 with b the smallest of 8, 10, 12, 14, 16 (or
              up to 32 for 32-bit integer TIFFs) that holds the image's maximum, mapped linearly onto
              0..255 and rounded. A 16-bit twin of an 8-bit image (v * 257) gives back exactly v; a 12-bit
              image stored in 16 bits is scaled by 255/4095 rather than clipped to white. Float images have
              no bit depth: they are min-max scaled.
  minmax      the image's own minimum .. maximum -> 0..255.
  percentile  the ``preprocess.intensity_percentiles`` [lo, hi] window -> 0..255, values outside clipped
              (robust to a few hot or dead pixels).
PIL reads 16-bit RGB PNGs as 8-bit RGB itself (the high byte), which is the ``bits`` rule for them.

Masks (``read_mask``): the same decoding under the ``bits`` rule; a mask whose values are exactly {0, 1} (a
common export) is read as {0, 255}, so that it binarises like its {0, 255} twin.

Extension point: ``DECODERS`` maps a sniffing test on the first bytes to a function returning the file's
native array (the bit depth kept). DICOM (``data[128:132] == b"DICM"``, pydicom) is one entry there: rescale,
then the file's own VOI LUT / window onto 0..255 (without one, the rescaled array goes through the intensity
rule), MONOCHROME1 inverted; a compressed transfer syntax no installed plugin decodes, and multi-frame files,
are refused with a message that says what to do (``_decode_dicom``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Rule = Literal["bits", "minmax", "percentile"]


@dataclass(frozen=True)
class IntensityRule:
    mode: Rule = "bits"
    percentiles: tuple[float, float] = (1.0, 99.0)  # percentile mode only


def _decode_pil(data: bytes) -> np.ndarray:
    """PIL: grey [H, W] array in the file's own depth (uint8, uint16, int32 or float32)."""
    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    if im.mode in ("I", "F"):
        return np.asarray(im)
    # 1-bit, palette, grey+alpha, RGB(A), CMYK, YCbCr: PIL's luminance, as every 8-bit reader here always did
    return np.asarray(im.convert("L"))


def _any(data: bytes) -> bool:
    return True


class Unsupported(ValueError):
    """A well-formed file this reader refuses on purpose (e.g. a compressed DICOM it cannot decode): the message
    says why and what to do, and is not reworded as "corrupt"."""


def _is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def _decode_dicom(data: bytes) -> np.ndarray:
    """DICOM (pydicom): the displayed grey image of a single-frame file.

    Rescale Slope/Intercept (or a Modality LUT) first, then the file's own VOI LUT or window (the first one)
    mapped onto 0..255 -> uint8, so the file's window decides the picture, as in a viewer. Without a window
    the rescaled values go through the intensity rule like any deep image (float values: min-max).
    MONOCHROME1 (0 = white) is inverted so that bright means dense, like every other input.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom: RuntimeError / NotImplementedError when no plugin decodes the syntax
        if syntax is not None and syntax.is_compressed:
            raise Unsupported(f"DICOM compressed as {syntax.name} ({syntax}), which this installation cannot "
                              f"decode ({type(e).__name__}: {' '.join(str(e).split())}); convert it to an "
                              "uncompressed transfer syntax first, e.g. `gdcmconv --raw in.dcm out.dcm` or `dcmdjpeg in.dcm out.dcm`") from None
        raise
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise Unsupported(f"multi-frame DICOM ({ds.NumberOfFrames} frames); export the frame to segment as its "
                          "own single-frame file")
    if not photometric.startswith("MONOCHROME"):  # RGB / YBR / palette: luminance, like a colour PNG
        from pydicom.pixels import convert_color_space

        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        if arr.ndim == 3:
            return np.asarray(Image.fromarray(np.asarray(arr, np.uint8)).convert("L"))
        return np.asarray(arr, np.uint8)
    arr = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        out = np.asarray(apply_voi_lut(arr, ds, index=0), np.float64)
        lo, hi = _voi_range(ds)
        a = np.rint(np.clip((out - lo) * (255.0 / (hi - lo)), 0.0, 255.0)).astype(np.uint8)
        return 255 - a if photometric == "MONOCHROME1" else a
    if arr.dtype.kind == "i":
        arr = arr.astype(np.float64)  # signed (CT-like) values have no bit-depth rule: min-max
    if photometric == "MONOCHROME1":
        if arr.dtype.kind == "u":
            arr = (2 ** int(ds.BitsStored) - 1) - arr.astype(np.int64)
            return arr.astype(np.uint16 if int(ds.BitsStored) > 8 else np.uint8)
        arr = arr.max() + arr.min() - arr
    return arr


def _voi_range(ds) -> tuple[float, float]:
    """The output range of pydicom's ``apply_voi_lut`` for ``ds``: a VOI LUT's entries span its descriptor's bit
    depth; a window maps onto the stored pixels' range after rescaling (pydicom's ``apply_windowing``)."""
    if ds.get("VOILUTSequence"):
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None and not ds.get(
            "ModalityLUTSequence"):
        slope, icpt = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + icpt, hi * slope + icpt))
    return lo, hi


# (sniff(first bytes) -> bool, decode(bytes) -> native grey array); the first match decodes the file
DECODERS: list[tuple[Callable[[bytes], bool], Callable[[bytes], np.ndarray]]] = [
    (_is_dicom, _decode_dicom), (_any, _decode_pil)]


def decode(data: bytes, what: str) -> np.ndarray:
    """The native grey array of ``data``; a file no decoder reads is ``ValueError("corrupt or unreadable ...")``,
    one it refuses on purpose ``ValueError("unsupported ...: <why>")``."""
    decoder = next(dec for sniff, dec in DECODERS if sniff(data))
    try:
        return decoder(data)
    except Unsupported as e:
        raise ValueError(f"unsupported {what}: {e}") from None
    except Exception as e:  # decoders raise many types for corrupt files; all mean the same thing here
        raise ValueError(f"corrupt or unreadable {what}: {type(e).__name__}: {e}") from None


def _bits_range(a: np.ndarray) -> tuple[float, float]:
    top = int(a.max()) if a.size else 0
    bits = max(8, top.bit_length() + top.bit_length() % 2)  # 8, 10, 12, 14, 16 ... (even depths)
    return 0.0, float(2**bits - 1)


def to_uint8(a: np.ndarray, rule: IntensityRule) -> np.ndarray:
    """Map a native grey array to uint8 by ``rule`` (see the module docstring); uint8 input is returned as is."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "i" and a.size and int(a.min()) < 0:
        raise ValueError(f"signed image with negative values (min {int(a.min())}): no grey rule applies")
    a64 = a.astype(np.float64)
    if rule.mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(a64, rule.percentiles))
    elif rule.mode == "minmax" or a.dtype.kind == "f":
        lo, hi = float(a64.min()), float(a64.max())
    else:
        lo, hi = _bits_range(a)
    if hi <= lo:  # a flat image: every pixel is the same grey, keep it black rather than divide by zero
        return np.zeros(a.shape, np.uint8)
    return np.rint(np.clip((a64 - lo) * (255.0 / (hi - lo)), 0.0, 255.0)).astype(np.uint8)


def read_grey(data: bytes, what: str, rule: IntensityRule) -> np.ndarray:
    """Any supported image file's bytes -> uint8 [H, W] by ``rule``; unreadable -> ValueError naming ``what``."""
    a = decode(data, what)
    try:
        return to_uint8(a, rule)
    except ValueError as e:
        raise ValueError(f"unsupported {what}: {e}") from None


def read_mask(data: bytes, what: str = "mask") -> np.ndarray:
    """A mask file -> uint8 [H, W]; {0, 1} masks become {0, 255} (see the module docstring)."""
    m = read_grey(data, what, IntensityRule("bits"))
    if m.size and int(m.max()) == 1 and int(m.min()) == 0:
        return m * np.uint8(255)
    return m
