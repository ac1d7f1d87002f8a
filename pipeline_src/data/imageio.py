"""One decoder for every 2-D image medref reads: any PNG/JPEG/TIFF/BMP/DICOM file -> a grey uint8 array.

    from pipeline_src.data.imageio import read_grey, read_mask
    img = read_grey(path.read_bytes(), "image", IntensityRule("bits", bits=12), name=str(path), limits=Limits())
    m = read_mask(path.read_bytes(), "mask", name=str(path), limits=Limits())             # uint8 [H, W]

Every image and mask that ``medref preprocess`` (pipeline_src/data/preprocess.py ``load_pair``), ``medref
predict`` (pipeline_src/inference/predict.py) and ``medref regions --masks`` read goes through ``decode``, so a
picture gives the same pixels whichever command reads it. Each PIL mode is handled explicitly; what is not in
this list is refused, naming the mode (``Unsupported``), never guessed:

  1, L                 as they are (1 -> {0, 255})
  LA, PA, P            the grey channel / the palette's luminance (alpha ignored); masks: see below
  RGB, RGBA, RGBX, CMYK, YCbCr   PIL's ITU-R 601 luminance ("L"), as every 8-bit reader here always did
  I;16, I;16B, I;16L, I;16N      uint16, whatever the byte order of the file
  I                    int32 (negative values refused)
  F                    float32 (NaN / inf refused); float images have no bit depth: min-max scaled
  16-bit RGB/RGBA/LA PNG  PIL keeps only the high byte of these (a 12-bit image comes out nearly black); they
                       are decoded here to their full 16 bits (both bytes, through PIL's own PNG decoder), then
                       to luminance in 16 bits. 16-bit colour in any other container is refused.
  multi-page / multi-frame files (TIFF, GIF, APNG, multi-frame DICOM) are refused, not read as page 0.
  DICOM                see ``_decode_dicom``.

Sizes (``Limits``, from ``preprocess.min_image_side`` / ``preprocess.max_megapixels``; predict uses the values
recorded with the model): an image smaller than ``min_side`` on a side, or larger than ``max_megapixels``, is
refused with its size and the key, before its pixels are decoded (the header gives the size), so a 10000 x 10000
file costs no memory and gives no raw ``DecompressionBombWarning`` (this module turns PIL's own check off, see
``Image.MAX_IMAGE_PIXELS`` below). The readers' default, ``ANY_SIZE``, keeps the maximum and has no minimum.

Intensity rule (``preprocess.intensity``), applied only to images deeper than 8 bits; 8-bit images are returned as
they are:
  bits        0 .. 2**b - 1 mapped linearly onto 0..255 and rounded, with ``b`` the DATASET's bit depth
              (``IntensityRule.bits``), decided once by preprocess (``decide_bits``): ``preprocess.bits_stored`` if
              set, else the largest of each deep image's depth (its DICOM BitsStored, or the smallest of 8, 10,
              12, 14, 16 (up to 32) that holds its maximum), and recorded in manifest.json and the model's
              config.json, so two images of one scanner get one scale and predict repeats it. A pixel above the
              dataset's range is refused. Without a decided depth (``bits=None``) each image's own depth is used.
              A 16-bit twin of an 8-bit image (v * 257) gives back exactly v.
  minmax      the image's own minimum .. maximum -> 0..255.
  percentile  the ``preprocess.intensity_percentiles`` [lo, hi] window -> 0..255, values outside clipped.

Masks (``read_mask``): deep masks by their own depth; a mask whose maximum is at most ``LABEL_MAX`` is a label
mask ({0, 1}): every non-zero pixel is lesion -> {0, 255}. A label mask in a lossy format (JPEG) is refused: JPEG
rounds a one-level step away (measured: at quality 75 about half the lesion pixels flip, at 50 and below the whole
mask becomes 0), so no rule can recover it. {0, 255} JPEG masks binarise at the threshold like their PNG twins.
A paletted mask whose used palette entries are grey is read by those greys ({0, 255} or {0, 1}); one with coloured
entries (VOC-style, index 0 = background) by its palette indices.

Extension point: ``DECODERS`` maps a sniffing test on the first bytes to a function returning the file's
``Native`` array (the bit depth kept). DICOM (``data[128:132] == b"DICM"``, pydicom) is one entry there.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Rule = Literal["bits", "minmax", "percentile"]

# ``Limits`` replaces PIL's decompression-bomb check (a bare DecompressionBombWarning at 89.5 megapixels, an error
# at twice that, whatever the params say): every file medref reads comes through ``decode``, which checks the
# header's size against the limit from params and names the key. PIL documents None as the way to turn its own off.
Image.MAX_IMAGE_PIXELS = None

LOSSY = ("JPEG", "MPO", "WEBP")  # formats whose compression changes pixel values
LABEL_MAX = 7  # a mask whose maximum is <= this is a label mask ({0, 1} and its JPEG copies), see read_mask


@dataclass(frozen=True)
class IntensityRule:
    mode: Rule = "bits"
    percentiles: tuple[float, float] = (1.0, 99.0)  # percentile mode only
    bits: int | None = None  # bits mode: the dataset's bit depth (decide_bits); None: each image's own


@dataclass(frozen=True)
class Limits:
    """Image sizes a command accepts; ``where`` is the params group (or file) the message names."""

    min_side: int = 32
    max_megapixels: float = 64.0
    where: str = "preprocess"


ANY_SIZE = Limits(min_side=1)  # the default of the readers: no minimum, the default maximum (memory)


@dataclass(frozen=True)
class Native:
    """A decoded file: grey [H, W] in its own depth (uint8, uint16, int32, float32/64) and the bit depth the file
    declares (DICOM BitsStored), if any."""

    pixels: np.ndarray
    declared_bits: int | None = None
    format: str = ""  # PIL's format name ("PNG", "JPEG", ...) or "DICOM"


class Unsupported(ValueError):
    """A well-formed file this reader refuses on purpose (e.g. a compressed DICOM it cannot decode): the message
    says why and what to do, and is not reworded as "corrupt"."""


def _check_size(w: int, h: int, limits: Limits) -> None:
    if min(w, h) < limits.min_side:
        raise Unsupported(f"{w}x{h} pixels, smaller than the minimum of {limits.min_side} pixels per side "
                          f"({limits.where}.min_image_side): too small to hold a segmentable image")
    if w * h > limits.max_megapixels * 1e6:
        raise Unsupported(f"{w}x{h} pixels ({w * h / 1e6:.1f} megapixels), over the limit of "
                          f"{limits.max_megapixels:g} megapixels ({limits.where}.max_megapixels); downscale it first "
                          f"(e.g. `convert in.png -resize 4096x4096 out.png`) or raise the limit")


def _luminance16(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance of 16-bit RGB, like PIL's "L" of 8-bit RGB (R*299 + G*587 + B*114) / 1000."""
    r, g, b = (rgb[..., i].astype(np.uint64) for i in range(3))
    return ((r * 299 + g * 587 + b * 114 + 500) // 1000).astype(np.uint16)


def _png16_colour(data: bytes, im: Image.Image, rawmode: str) -> np.ndarray:
    """The full 16 bits of a 16-bit RGB(A) or grey+alpha PNG, which PIL reads as 8-bit (the high byte).

    PIL's own PNG decoder is run with another unpacker, so the unfiltering (Sub/Up/Average/Paeth, interlace) is
    PIL's: RGB(A) twice, once per byte ("RGB;16B" = high bytes, "RGB;16L" on the same big-endian data = low
    bytes); grey+alpha once as big-endian 32-bit integers ("I;32B"), whose high half is the grey sample."""
    def decode_as(mode: str, raw: str) -> np.ndarray:
        x = Image.open(io.BytesIO(data))
        x.tile = [x.tile[0]._replace(args=raw)]
        if mode != x.mode:
            x._mode = mode  # the same bytes per pixel (4), unpacked as one integer instead of two samples
        x.load()
        return np.asarray(x)

    if rawmode == "LA;16B":
        return (decode_as("I", "I;32BS").view(np.uint32) >> 16).astype(np.uint16)
    hi = np.asarray(im).astype(np.uint16)
    lo = decode_as(im.mode, rawmode.replace(";16B", ";16L")).astype(np.uint16)
    return _luminance16((hi << 8) | lo)


def _grey_palette(im: Image.Image) -> bool:
    """Whether every palette entry the image uses is a grey (r == g == b)."""
    pal = np.asarray(im.getpalette("RGB") or [], np.int32).reshape(-1, 3)
    used = np.unique(np.asarray(im))
    used = used[used < len(pal)]
    return bool(np.all((pal[used, 0] == pal[used, 1]) & (pal[used, 1] == pal[used, 2])))


def _decode_pil(data: bytes, limits: Limits = ANY_SIZE, mask: bool = False) -> Native:
    """PIL: grey [H, W] in the file's own depth; each mode handled explicitly (the module docstring)."""
    im = Image.open(io.BytesIO(data))
    fmt, mode = im.format or "image", im.mode
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and fmt != "MPO":  # MPO: frame 0 is the picture by the format's definition (the rest previews)
        raise Unsupported(f"multi-page {fmt} ({frames} pages); medref reads one 2-D image per file: save the page "
                          "to segment as its own file")
    _check_size(*im.size, limits)
    rawmode = im.tile[0].args if im.tile and isinstance(im.tile[0].args, str) else ""
    if ";16" in rawmode and mode in ("RGB", "RGBA"):
        if fmt == "PNG" and rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
            return Native(_png16_colour(data, im, rawmode), format=fmt)
        raise Unsupported(f"16-bit colour {fmt} ({mode}, {rawmode}): PIL keeps only its high byte; save it as "
                          "16-bit grey, or as a 16-bit PNG")
    im.load()
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return Native(np.asarray(im).astype(np.uint16), format=fmt)
    if mode == "I":
        return Native(np.asarray(im).astype(np.int32), format=fmt)
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        if not np.isfinite(a).all():
            raise Unsupported(f"float {fmt} with NaN or infinite pixels ({int((~np.isfinite(a)).sum())} of them)")
        return Native(a, format=fmt)
    if mode in ("P", "PA") and mask and not _grey_palette(im.convert("P") if mode == "PA" else im):
        # a coloured label palette (VOC-style: index 0 = background): the indices are the labels
        return Native(np.asarray(im)[..., 0] if mode == "PA" else np.asarray(im), format=fmt)
    if mode == "PA":
        return Native(np.asarray(im.convert("RGBA").convert("L")), format=fmt)
    if mode in ("1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        return Native(np.asarray(im.convert("L")), format=fmt)
    raise Unsupported(f"{fmt} in PIL mode {mode!r}, which medref does not decode; save it as grey or RGB")


def _any(data: bytes) -> bool:
    return True


def _is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def _decode_dicom(data: bytes, limits: Limits = ANY_SIZE, mask: bool = False) -> Native:
    """DICOM (pydicom): the displayed grey image of a single-frame file.

    Rescale Slope/Intercept (or a Modality LUT) first, then the file's own VOI LUT or window (the first one)
    mapped onto 0..255 -> uint8, so the file's window decides the picture, as in a viewer. Without a window
    the rescaled values go through the intensity rule like any deep image (float values: min-max), with the file's
    BitsStored as its declared depth. MONOCHROME1 (0 = white) is inverted so that bright means dense, like every
    other input. Multi-frame files and sizes outside ``limits`` are refused before the pixels are decoded.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise Unsupported(f"multi-frame DICOM ({ds.NumberOfFrames} frames); export the frame to segment as its "
                          "own single-frame file")
    if "Rows" in ds and "Columns" in ds:
        _check_size(int(ds.Columns), int(ds.Rows), limits)
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
    if not photometric.startswith("MONOCHROME"):  # RGB / YBR / palette: luminance, like a colour PNG
        from pydicom.pixels import convert_color_space

        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        if arr.ndim == 3:
            return Native(np.asarray(Image.fromarray(np.asarray(arr, np.uint8)).convert("L")), format="DICOM")
        return Native(np.asarray(arr, np.uint8), format="DICOM")
    arr = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        out = np.asarray(apply_voi_lut(arr, ds, index=0), np.float64)
        lo, hi = _voi_range(ds)
        a = np.rint(np.clip((out - lo) * (255.0 / (hi - lo)), 0.0, 255.0)).astype(np.uint8)
        return Native(255 - a if photometric == "MONOCHROME1" else a, format="DICOM")
    if arr.dtype.kind == "i":
        arr = arr.astype(np.float64)  # signed (CT-like) values have no bit-depth rule: min-max
    bits = int(ds.BitsStored) if arr.dtype.kind == "u" and int(ds.BitsStored) > 8 else None
    if photometric == "MONOCHROME1":
        if arr.dtype.kind == "u":
            arr = (2 ** int(ds.BitsStored) - 1) - arr.astype(np.int64)
            return Native(arr.astype(np.uint16 if int(ds.BitsStored) > 8 else np.uint8), bits, "DICOM")
        arr = arr.max() + arr.min() - arr
    return Native(arr, bits, "DICOM")


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


# (sniff(first bytes) -> bool, decode(bytes, limits, mask) -> Native); the first match decodes the file
DECODERS: list[tuple[Callable[[bytes], bool], Callable[..., Native]]] = [
    (_is_dicom, _decode_dicom), (_any, _decode_pil)]

_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _clean(msg: str, name: str | None) -> str:
    """A library message without object reprs (``<_io.BytesIO object at 0x...>``): the file's name instead."""
    return " ".join(_REPR.sub(name or "the file", msg).split())


def decode(data: bytes, what: str, *, name: str | None = None, limits: Limits = ANY_SIZE,
           mask: bool = False) -> Native:
    """The ``Native`` array of ``data``; a file no decoder reads is ``ValueError("corrupt or unreadable ...")``,
    one it refuses on purpose (a mode, a size) ``ValueError("unsupported ...: <why>")``. ``name`` (the file) replaces
    the object reprs some libraries print."""
    from PIL import UnidentifiedImageError

    decoder = next(dec for sniff, dec in DECODERS if sniff(data))
    try:
        return decoder(data, limits, mask)
    except Unsupported as e:
        raise ValueError(f"unsupported {what}: {e}") from None
    except UnidentifiedImageError:
        raise ValueError(f"corrupt or unreadable {what}: not a PNG, JPEG, TIFF, BMP or DICOM file "
                         "(its first bytes match no image format)") from None
    except Exception as e:  # decoders raise many types for corrupt files; all mean the same thing here
        raise ValueError(f"corrupt or unreadable {what}: {type(e).__name__}: {_clean(str(e), name)}") from None


def _depth_of_max(top: int) -> int:
    return max(8, top.bit_length() + top.bit_length() % 2)  # 8, 10, 12, 14, 16 ... (even depths)


def image_bits(native: Native) -> int | None:
    """The bit depth of one deep integer image (its declared BitsStored, else the depth its maximum needs);
    None for 8-bit and float images, which the bits rule does not scale by a depth."""
    a = native.pixels
    if a.dtype == np.uint8 or a.dtype.kind == "f":
        return None
    if native.declared_bits is not None:
        return native.declared_bits
    return _depth_of_max(int(a.max()) if a.size else 0)


def decide_bits(depths: Iterable[int | None], declared: int | None = None) -> tuple[int | None, str]:
    """The dataset's bit depth and how it was decided: ``declared`` (``preprocess.bits_stored``) if given, else the
    largest per-image depth (``image_bits``) over the images; None when no image is deeper than 8 bits."""
    if declared is not None:
        return declared, "preprocess.bits_stored"
    d = [b for b in depths if b is not None]
    if not d:
        return None, "no image deeper than 8 bits"
    return max(d), f"the largest depth over the dataset's {len(d)} deeper-than-8-bit image(s)"


def to_uint8(a: np.ndarray, rule: IntensityRule, declared_bits: int | None = None) -> np.ndarray:
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
        bits = rule.bits or image_bits(Native(a, declared_bits))
        lo, hi = 0.0, float(2**bits - 1)
        top = int(a.max()) if a.size else 0
        if top > hi:
            raise ValueError(f"pixel values up to {top}, above the {bits}-bit range (0..{int(hi)}) decided for the "
                             "dataset (manifest.json intensity.bits, set by preprocess.bits_stored or the dataset's "
                             "images)")
    if hi <= lo:  # a flat image: every pixel is the same grey, keep it black rather than divide by zero
        return np.zeros(a.shape, np.uint8)
    return np.rint(np.clip((a64 - lo) * (255.0 / (hi - lo)), 0.0, 255.0)).astype(np.uint8)


def read_grey(data: bytes, what: str, rule: IntensityRule, *, name: str | None = None,
              limits: Limits = ANY_SIZE) -> np.ndarray:
    """Any supported image file's bytes -> uint8 [H, W] by ``rule``; unreadable -> ValueError naming ``what``."""
    n = decode(data, what, name=name, limits=limits)
    try:
        return to_uint8(n.pixels, rule, n.declared_bits)
    except ValueError as e:
        raise ValueError(f"unsupported {what}: {e}") from None


def surely_8bit(data: bytes) -> bool:
    """True when the file's header alone shows an 8-bit (or 1-bit) PIL image, whose pixels the bits rule keeps as
    they are: preprocess then skips decoding it when it decides the dataset's depth. Never raises."""
    if _is_dicom(data):
        return False
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - not decodable: the real decode reports it, with its reason
        return False
    raw = im.tile[0].args if im.tile and isinstance(im.tile[0].args, str) else ""
    return im.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr") and ";16" not in raw


def read_mask(data: bytes, what: str = "mask", *, name: str | None = None,
              limits: Limits = ANY_SIZE) -> np.ndarray:
    """A mask file -> uint8 [H, W] on the 0..255 scale; label masks -> {0, 255} (see the module docstring)."""
    n = decode(data, what, name=name, limits=limits, mask=True)
    try:
        m = to_uint8(n.pixels, IntensityRule("bits"), n.declared_bits)  # a mask's scale is its own
    except ValueError as e:
        raise ValueError(f"unsupported {what}: {e}") from None
    if m.size and 0 < int(m.max()) <= LABEL_MAX:
        if n.format in LOSSY:
            raise ValueError(f"unsupported {what}: a {{0, 1}} label mask stored as lossy {n.format} (values "
                             f"0..{int(m.max())}): the compression rounds a one-level step away (at quality 75 about "
                             "half of the lesion pixels flip, at 50 and below all of them), so the mask cannot be "
                             "recovered; export the masks as PNG, or as {0, 255}")
        return np.where(m > 0, np.uint8(255), np.uint8(0))
    return m
