"""Synthetic TIFFs with photographic-like content, written tile by tile (bounded memory).

Used by ``tiffpipe demo``, the tests and the benchmarks: content is a deterministic function
of the pixel position, so any size can be written without holding a page in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tifffile


@dataclass(frozen=True)
class SamplePage:
    height: int
    width: int
    channels: int = 3
    dtype: str = "uint8"


def sample_tile(y0: int, x0: int, h: int, w: int, channels: int, dtype: str,
                seed: int = 0) -> np.ndarray:
    """Pixels [y0, y0+h) x [x0, x0+w): smooth structure at several scales, edges, and grain."""
    y = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    x = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    planes = []
    for c in range(channels):
        phase = 1.7 * c + 0.3 * seed
        v = (0.5 + 0.22 * np.sin(x / (211 + 37 * c) + phase) * np.cos(y / (173 + 29 * c))
             + 0.12 * np.sin((x + 2 * y) / 41.0 + phase)
             + 0.08 * np.sign(np.sin(x / 503.0 + phase) * np.sin(y / 389.0)))
        grain = np.random.default_rng((seed, c, y0, x0)).standard_normal((h, w)) * 0.03
        planes.append(np.clip(v + grain, 0.0, 1.0))
    img = np.stack(planes, axis=-1) if channels > 1 else planes[0]
    if np.dtype(dtype).kind == "f":
        return img.astype(dtype)
    return np.rint(img * np.iinfo(dtype).max).astype(dtype)


def write_sample(path: str, pages: list[SamplePage], tile: int = 512,
                 compression: str | None = "zstd", bigtiff: bool | None = None,
                 seed: int = 0) -> None:
    """Write a tiled multi-page TIFF of ``pages`` without holding any page in memory."""
    raw = sum(p.height * p.width * p.channels * np.dtype(p.dtype).itemsize for p in pages)
    with tifffile.TiffWriter(path, bigtiff=raw > 2**31 if bigtiff is None else bigtiff) as tw:
        for i, p in enumerate(pages):
            shape = (p.height, p.width) + ((p.channels,) if p.channels > 1 else ())
            tw.write(_tiles(p, tile, seed + i), shape=shape, dtype=p.dtype, tile=(tile, tile),
                     compression=compression, photometric="rgb" if p.channels >= 3 else
                     "minisblack", extrasamples=[2] if p.channels in (2, 4) else None,
                     metadata=None, maxworkers=2)


def _tiles(p: SamplePage, tile: int, seed: int) -> Iterator[np.ndarray]:
    for y0 in range(0, p.height, tile):
        for x0 in range(0, p.width, tile):
            h, w = min(tile, p.height - y0), min(tile, p.width - x0)
            t = sample_tile(y0, x0, h, w, p.channels, p.dtype, seed)
            if (h, w) != (tile, tile):
                full = np.zeros((tile, tile) + t.shape[2:], t.dtype)
                full[:h, :w] = t
                t = full
            yield t
