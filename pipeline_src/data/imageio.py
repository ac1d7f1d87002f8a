"""One decoder for every 2-D image medref reads: any PNG/JPEG/TIFF/BMP file -> a grey uint8 array.

    from pipeline_src.data.imageio import read_grey, read_mask
    img = read_grey(path.read_bytes(), "image", IntensityRule("bits"))      # uint8 [H, W]

Used by ``medref preprocess`` (pipeline_src/data/preprocess.py ``load_pair``) and meant for a future
``medref predict``, so a picture gives the same pixels whichever command reads it.

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
native array (the bit depth kept). A DICOM reader adds one entry there (``data[128:132] == b"DICM"``) whose
array then goes through the same intensity rule (or the file's own window).
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


# (sniff(first bytes) -> bool, decode(bytes) -> native grey array); the first match decodes the file
DECODERS: list[tuple[Callable[[bytes], bool], Callable[[bytes], np.ndarray]]] = [(_any, _decode_pil)]


def decode(data: bytes, what: str) -> np.ndarray:
    """The native grey array of ``data``; a file no decoder reads is ``ValueError("corrupt or unreadable ...")``."""
    decoder = next(dec for sniff, dec in DECODERS if sniff(data))
    try:
        return decoder(data)
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
