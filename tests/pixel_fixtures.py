"""Image files PIL cannot write, built byte by byte for the decoder tests: 16-bit RGB / RGBA / grey+alpha PNGs.

    from tests.pixel_fixtures import png16
    data = png16(rgb16, rng=np.random.default_rng(0))   # uint16 [H, W, C], C = 2 (LA), 3 (RGB) or 4 (RGBA)
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

COLOUR_TYPE = {2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey+alpha, RGB, RGBA)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter(row: np.ndarray, prev: np.ndarray, kind: int, bpp: int) -> bytes:
    """One scanline filtered with PNG filter ``kind`` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth), as bytes."""
    x = row.astype(np.int32)
    a = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
    b = prev.astype(np.int32)
    c = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])
    pred = [np.zeros_like(x), a, b, (a + b) // 2, _paeth(a, b, c)][kind]
    return bytes([kind]) + ((x - pred) % 256).astype(np.uint8).tobytes()


def png16(arr: np.ndarray, rng: np.random.Generator | None = None) -> bytes:
    """A 16-bit PNG of ``arr`` (uint16 [H, W, C]), each row with a random filter type when ``rng`` is given."""
    h, w, ch = arr.shape
    rows = arr.astype(">u2").reshape(h, w * ch).view(np.uint8).reshape(h, w * ch * 2)
    raw, prev = b"", np.zeros(w * ch * 2, np.uint8)
    for y in range(h):
        raw += _filter(rows[y], prev, int(rng.integers(0, 5)) if rng is not None else 0, ch * 2)
        prev = rows[y]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, COLOUR_TYPE[ch], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares ``w`` x ``h`` 8-bit grey pixels and holds none: decoding it would fail as truncated, so a
    size refusal on it shows that the size was checked before any pixel was decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(
        b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
