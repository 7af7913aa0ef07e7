"""Benchmark inputs: deterministic photographic-like TIFFs, generated tile by tile.

``pipeline.sample`` draws sinusoids plus white grain: fine for tests, but nothing like a
photograph to a codec (white grain at every pixel is the hardest case for deflate and JPEG).
Here the content is fractal noise with a natural (1/f) spectrum: eight octaves of a smooth
random field, each a periodic random lattice upsampled by bicubic interpolation, plus hard
edges (a thresholded coarse octave, like object boundaries), correlated colour channels and a
little sensor grain. Every pixel is a function of its position only (tile origins are
multiples of the largest octave's cell), so any size is written in bounded memory, in
parallel, and the same file comes out every time.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import cv2
import numpy as np
import tifffile

#: input tile side; every octave's cell divides it, so tile origins fall on lattice points
TILE = 512
#: pixels per lattice cell of each octave (coarse to fine) and the lattice periods (primes)
CELLS = (512, 256, 128, 64, 32, 16, 8, 4, 2)
PERIODS = (281, 277, 271, 269, 263, 257, 251, 241, 239)
#: amplitude of an octave ~ cell ** HURST: 1 gives the 1/f^2 power spectrum of photographs
HURST = 0.5
GRAIN_SIZE = 4099  # the grain field's period (prime), pixels
GRAIN = 3.0  # its standard deviation, grey levels


@lru_cache(maxsize=64)
def _lattice(seed: int, channel: int, octave: int) -> np.ndarray:
    period = PERIODS[octave]
    rng = np.random.default_rng((seed, channel, octave, 7))
    return rng.standard_normal((period, period)).astype(np.float32)


@lru_cache(maxsize=2)
def _grain(seed: int) -> np.ndarray:
    rng = np.random.default_rng((seed, 99))
    return (rng.standard_normal((GRAIN_SIZE, GRAIN_SIZE)) * GRAIN).astype(np.float32)


def _octave(seed: int, channel: int, octave: int, y0: int, x0: int, h: int, w: int
            ) -> np.ndarray:
    """Octave ``octave`` over [y0, y0+h) x [x0, x0+w): the periodic lattice interpolated
    bicubically at lattice coordinate (position + 0.5) / cell - 0.5.

    Only the lattice points around the tile are read (a margin of 2 for the cubic kernel); the
    coordinates are made relative to them by subtracting an integer, so their fractions, and
    therefore the pixels, do not depend on the tile (origins are multiples of the cell).
    """
    cell, lat = CELLS[octave], _lattice(seed, channel, octave)
    ly, lx = y0 // cell - 2, x0 // cell - 2
    ny, nx = -(-h // cell) + 5, -(-w // cell) + 5
    crop = lat.take(np.arange(ly, ly + ny), axis=0, mode="wrap").take(
        np.arange(lx, lx + nx), axis=1, mode="wrap")
    u = ((np.arange(x0, x0 + w) + 0.5) / cell - 0.5 - lx).astype(np.float32)
    v = ((np.arange(y0, y0 + h) + 0.5) / cell - 0.5 - ly).astype(np.float32)
    map_x = np.broadcast_to(u[None, :], (h, w))
    map_y = np.broadcast_to(v[:, None], (h, w))
    return cv2.remap(crop, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y),
                     cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def _field(seed: int, channel: int, y0: int, x0: int, h: int, w: int,
           octaves: range) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    for k in octaves:
        out += _octave(seed, channel, k, y0, x0, h, w) * (CELLS[k] / CELLS[0]) ** HURST
    return out


def photo_tile(y0: int, x0: int, h: int, w: int, channels: int, seed: int = 0) -> np.ndarray:
    """uint8 pixels [y0, y0+h) x [x0, x0+w): (h, w) for one channel, else (h, w, channels)."""
    if y0 % CELLS[0] or x0 % CELLS[0]:
        raise ValueError(f"tile origins must be multiples of {CELLS[0]}, got ({y0}, {x0})")
    lum = _field(seed, 0, y0, x0, h, w, range(len(CELLS)))
    edges = np.where(_octave(seed, 9, 1, y0, x0, h, w) > 0.3, 28.0, 0.0).astype(np.float32)
    edges += np.where(_octave(seed, 10, 3, y0, x0, h, w) > 0.8, -20.0, 0.0).astype(np.float32)
    grain = np.take(np.take(_grain(seed), np.arange(y0, y0 + h), axis=0, mode="wrap"),
                    np.arange(x0, x0 + w), axis=1, mode="wrap")  # periodic in the position
    base = 118.0 + 46.0 * lum + edges + grain
    if channels == 1:
        return np.clip(base, 0, 255).round().astype(np.uint8)
    planes = []
    for c in range(channels):
        if c == 3:  # alpha: mostly opaque
            planes.append(np.full((h, w), 255, np.float32))
            continue
        chroma = _field(seed, 1 + c, y0, x0, h, w, range(4))  # colour varies slowly
        planes.append(base * (0.85 + 0.1 * c) + 22.0 * chroma)
    return np.clip(np.stack(planes, axis=-1), 0, 255).round().astype(np.uint8)


def write_photo_tiff(path: str, height: int, width: int, channels: int, pages: int = 1,
                     compression: str = "deflate", level: int = 1, threads: int = 2,
                     seed: int = 0) -> None:
    """A tiled (512 px) multi-page uint8 TIFF of photo-like pages, BigTIFF when large.

    Written to ``path + '.part'`` and renamed when complete, so a crash never leaves a file
    that a later run would take for a finished input.
    """
    raw = pages * height * width * channels
    part = path + ".part"
    with ThreadPoolExecutor(max(1, threads)) as pool, \
            tifffile.TiffWriter(part, bigtiff=raw > 2**31 - 2**25) as tw:
        for p in range(pages):
            shape = (height, width) + ((channels,) if channels > 1 else ())
            tw.write(_tiles(pool, height, width, channels, seed + p, threads), shape=shape,
                     dtype="uint8", tile=(TILE, TILE), compression=compression,
                     compressionargs={"level": level} if compression in ("deflate", "zstd")
                     else None, predictor=compression in ("deflate", "zstd", "lzw"),
                     photometric="rgb" if channels >= 3 else "minisblack",
                     extrasamples=[2] if channels in (2, 4) else None, metadata=None,
                     maxworkers=max(1, threads))
    os.replace(part, path)


def write_striped_tiff(path: str, height: int, width: int, channels: int = 3,
                       rows: int = 16, compression: str = "lzw", threads: int = 2,
                       seed: int = 0) -> None:
    """A one-page uint8 TIFF of a photo-like page in strips of ``rows`` rows, no predictor:
    as scanners, GDAL (without TILED=YES) and most archive software write them. Strips are
    made and encoded ``threads`` bands at a time and handed to tifffile as bytes as they come, so
    the page is never held whole; renamed into place when complete, as
    :func:`write_photo_tiff`'s files."""
    import imagecodecs

    encode = {"lzw": imagecodecs.lzw_encode, "deflate": imagecodecs.zlib_encode}[compression]
    part = path + ".part"

    if TILE % rows:
        raise ValueError(f"rows must divide {TILE} (the pattern's bands), got {rows}")

    def band(y0: int) -> list[bytes]:  # the pattern comes in bands of TILE rows
        pixels = photo_tile(y0, 0, min(TILE, height - y0), width, channels, seed)
        return [encode(pixels[y:y + rows].tobytes()) for y in range(0, len(pixels), rows)]

    def strips() -> Iterator[bytes]:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            ahead: deque = deque()
            for y0 in range(0, height, TILE):
                ahead.append(pool.submit(band, y0))
                if len(ahead) > threads:
                    yield from ahead.popleft().result()
            while ahead:
                yield from ahead.popleft().result()

    shape = (height, width) + ((channels,) if channels > 1 else ())
    with tifffile.TiffWriter(part, bigtiff=height * width * channels > 2**31 - 2**25) as tw:
        tw.write(strips(), shape=shape, dtype="uint8", rowsperstrip=rows,
                 compression=compression, photometric="rgb" if channels >= 3 else "minisblack",
                 metadata=None)
    os.replace(part, path)


def _tiles(pool: ThreadPoolExecutor, height: int, width: int, channels: int, seed: int,
           threads: int) -> Iterator[np.ndarray]:
    """Row-major full tiles (edges zero-padded), generated ahead by ``threads`` threads."""

    def make(origin: tuple[int, int]) -> np.ndarray:
        y0, x0 = origin
        h, w = min(TILE, height - y0), min(TILE, width - x0)
        t = photo_tile(y0, x0, h, w, channels, seed)
        if (h, w) != (TILE, TILE):
            full = np.zeros((TILE, TILE) + t.shape[2:], t.dtype)
            full[:h, :w] = t
            t = full
        return t

    origins = ((y, x) for y in range(0, height, TILE) for x in range(0, width, TILE))
    ahead: deque = deque()
    for origin in origins:
        ahead.append(pool.submit(make, origin))
        if len(ahead) > 4 * threads:
            yield ahead.popleft().result()
    while ahead:
        yield ahead.popleft().result()


def side_for(megapixels: float) -> int:
    """The side of a square page of about ``megapixels`` (a multiple of 16)."""
    return int(math.sqrt(megapixels * 1e6)) // 16 * 16
