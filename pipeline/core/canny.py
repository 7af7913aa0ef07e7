"""Exact tiled Canny: the edges of ``cv2.Canny(cv2.GaussianBlur(page, (0, 0), sigma), low,
high)`` on the whole page, computed tile by tile.

OpenCV's Canny keeps the pixels that are non-maximum-suppression (NMS) maxima with a gradient
magnitude above ``low`` ("weak") and lie in an 8-connected chain of such pixels that holds one
above ``high`` ("strong"). ``cv2.Canny(x, t, t)`` returns exactly the NMS maxima above ``t``
(with equal thresholds every candidate is strong), so:

- per tile (a local step, halo = blur radius + 2 for the 3x3 Sobel and the NMS neighbours):
  ``weak = Canny(x, low, low)``, ``strong = Canny(x, high, high)`` on the haloed tile, cropped
  to the core; the core's weak pixels are labelled in 8-connected components
  (``label_core``); a component holding a strong pixel gets a negative label;
- per page (``hysteresis``): the components that touch a tile border are joined with their
  neighbours across it (union-find over the border pixels of every tile); a component is kept
  when the joined chain holds a strong pixel anywhere on the page;
- per tile again (``edges``): a weak pixel is an edge when its label is negative or kept.

The pipeline runs the per-page join as a tree whose every node holds a bounded number of tile
sides (:mod:`pipeline.core.canny_tree`, the same joins); ``hysteresis`` is its whole-page
reference.

OpenCV swaps ``low`` and ``high`` when low > high; so does this module. Pure: arrays in,
arrays out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pipeline.core.grid import PageGrid
from pipeline.core.opencv import cv2, gaussian_radius

BORDERS = ("top", "bottom", "left", "right")


def blur_radius(sigma: float) -> int:
    """Radius of ``cv2.GaussianBlur(uint8, (0, 0), sigma)``; 0 without blur."""
    return gaussian_radius(sigma, np.dtype(np.uint8)) if sigma > 0 else 0


def reach(p: dict[str, Any], needed: int) -> int:
    """Input margin for exact weak/strong maps on a region grown by ``needed``."""
    return needed + blur_radius(p["sigma"]) + 2


def thresholds(p: dict[str, Any]) -> tuple[float, float]:
    low, high = p["low"], p["high"]
    return (low, high) if low <= high else (high, low)


def local_maps(img: np.ndarray, p: dict[str, Any],
               blur: Callable[[np.ndarray, dict[str, Any]], np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(weak, strong): the NMS maxima above ``low`` and above ``high`` of the whole array,
    blurred by ``blur(img, p)`` (pipeline.core.op_functions.canny_blur: ``cv2.GaussianBlur``
    of ``sigma``, none at 0, of the valid samples alone on a page with no-data or a mask;
    passed in, as that module imports this one)."""
    x = blur(img, p)
    low, high = thresholds(p)
    return cv2.Canny(x, low, low), cv2.Canny(x, high, high)


def label_core(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """int32 labels of the 8-connected components of ``weak`` (0: no edge pixel); components
    holding a pixel of ``strong`` are negative."""
    if weak.size == 0:
        return np.zeros(weak.shape, np.int32)
    n, labels = cv2.connectedComponents((weak > 0).astype(np.uint8), connectivity=8,
                                        ltype=cv2.CV_32S)
    sign = np.ones(n, np.int32)
    sign[labels[strong > 0]] = -1
    sign[0] = 0
    return labels * sign[labels]


def borders(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The labels along the four sides of a core."""
    if labels.size == 0:
        empty = np.zeros(0, np.int32)
        return dict.fromkeys(BORDERS, empty)
    return {"top": labels[0].copy(), "bottom": labels[-1].copy(),
            "left": labels[:, 0].copy(), "right": labels[:, -1].copy()}


def _touching(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of labels that touch across a border: ``a[i]`` and ``b[i + d]``, d in -1, 0, 1."""
    n = min(len(a), len(b))
    pa, pb = [], []
    for d in (-1, 0, 1):
        i = np.arange(max(0, -d), min(n, n - d))
        x, y = a[i], b[i + d]
        keep = (x != 0) & (y != 0)
        pa.append(x[keep])
        pb.append(y[keep])
    return np.concatenate(pa), np.concatenate(pb)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The root of every node 0..n-1 of the graph with edges (a[i], b[i]): vectorised
    union-find (roots hook to the smallest root they touch, then full pointer jumping)."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        ra, rb = ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))


def neighbour_sides(sides: dict[tuple[int, int], dict[str, np.ndarray]]
                    ) -> Iterator[tuple[tuple[int, int], np.ndarray, tuple[int, int], np.ndarray]]:
    """(tile, its side, neighbour, the neighbour's side) for every pair of tiles of ``sides``
    that touch: across a side (right, below) or a corner (the diagonals below, by the one
    pixel at each end of the bottom side)."""
    for (row, col), side in sides.items():
        right, down = (row, col + 1), (row + 1, col)
        if right in sides:
            yield (row, col), side["right"], right, sides[right]["left"]
        if down in sides:
            yield (row, col), side["bottom"], down, sides[down]["top"]
        diag, anti = (row + 1, col + 1), (row + 1, col - 1)
        if diag in sides and side["bottom"].size and sides[diag]["top"].size:
            yield (row, col), side["bottom"][-1:], diag, sides[diag]["top"][:1]
        if anti in sides and side["bottom"].size and sides[anti]["top"].size:
            yield (row, col), side["bottom"][:1], anti, sides[anti]["top"][-1:]


def hysteresis(grid: PageGrid, sides: dict[tuple[int, int], dict[str, np.ndarray]]
               ) -> dict[tuple[int, int], np.ndarray]:
    """The weak components of each tile that join a strong chain through other tiles.

    ``grid`` is the grid the labels were made on; ``sides[(row, col)]`` the ``borders`` of a
    tile's labels. Returns, per tile with any, the sorted positive labels to keep.
    """
    cols = grid.cols
    keys_a: list[np.ndarray] = []
    keys_b: list[np.ndarray] = []

    def link(t1: tuple[int, int], s1: np.ndarray, t2: tuple[int, int], s2: np.ndarray) -> None:
        la, lb = _touching(s1, s2)
        if la.size:
            keys_a.append(_key(t1, la, cols))
            keys_b.append(_key(t2, lb, cols))

    for t1, s1, t2, s2 in neighbour_sides(sides):
        link(t1, s1, t2, s2)
    if not keys_a:
        return {}
    ka, kb = np.concatenate(keys_a), np.concatenate(keys_b)
    nodes, inverse = np.unique(np.concatenate([ka, kb]), return_inverse=True)
    a, b = inverse[:ka.size], inverse[ka.size:]
    root = components(nodes.size, a, b)
    strong = np.zeros(nodes.size, bool)
    strong[root[(nodes & 1) == 1]] = True  # the low bit marks a negative (strong) label
    keep = strong[root] & ((nodes & 1) == 0)
    kept: dict[tuple[int, int], np.ndarray] = {}
    for key in nodes[keep]:
        tile, label = int(key) >> 33, (int(key) >> 1) & 0xFFFFFFFF
        kept.setdefault(divmod(tile, cols), []).append(label)  # type: ignore[arg-type]
    return {t: np.array(sorted(v), np.int32) for t, v in kept.items()}  # type: ignore[arg-type]


def _key(tile: tuple[int, int], labels: np.ndarray, cols: int) -> np.ndarray:
    """One int64 per (tile, label): tile index, |label|, and a low bit set for strong ones."""
    index = np.int64(tile[0] * cols + tile[1])
    lab = labels.astype(np.int64)
    return (index << 33) | (np.abs(lab) << 1) | (lab < 0)


def edges(labels: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
    """The final edges (uint8 0/255) of a tile's labels, given its kept weak labels."""
    keep = labels < 0
    if kept is not None and kept.size and labels.size:
        table = np.zeros(max(int(labels.max()), int(kept.max())) + 1, bool)
        table[kept] = True
        keep |= table[np.maximum(labels, 0)]
    return np.where(keep, np.uint8(255), np.uint8(0))
