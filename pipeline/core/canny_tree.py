"""canny's hysteresis as a tree reduce: every node holds a bounded number of tile sides.

:func:`pipeline.core.canny.hysteresis` joins the border labels of every tile of a page at
once. Here the page's tile grid is cut in halves (the longer side first) until a rectangle
has at most ``bound / 4`` tiles (four sides each): those rectangles are the leaves. A leaf
joins its tiles' sides (as ``hysteresis`` does); a node above joins its two children along
the one seam between them. What goes up is a node's *perimeter*: the component ids along its
four outer edges, pixel by pixel (0: no edge pixel), and which of those components hold a
strong pixel. What a node holds is its children's perimeters: at most about three times the
tile sides along its own edges, whatever the page's area.

A component is named by the smallest key of its members (a key is a tile and a label of its
core: :func:`pipeline.core.canny._key`, low bit set when the label is strong), so ids are
unique on the page and need no renumbering. Each node also keeps, for the pixels' way down,
which ids it renamed and which components are strong at its level (:func:`kept_labels`): a
weak component is kept when it is strong at any level up to the root. Joins along the seams
pair the pixels ``a[i]`` and ``b[i + d]``, d in -1, 0, 1, which is 8-connectivity across
the seam, its tile corners included: exact as ``hysteresis``. Pure: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.canny import _key, _touching, components, neighbour_sides

Arrays = dict[str, np.ndarray]
EDGES = ("top", "bottom", "left", "right")
_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class Node:
    """A rectangle of tiles, rows [r0, r1) and columns [c0, c1); a leaf has no children. A
    node's two children are split by a vertical seam (left | right) or a horizontal one."""

    r0: int
    c0: int
    r1: int
    c1: int
    height: int  # 0 for a leaf, else 1 + the highest child's
    children: tuple[int, ...] = ()
    vertical: bool = False
    parent: int | None = None

    @property
    def tiles(self) -> int:
        return (self.r1 - self.r0) * (self.c1 - self.c0)


def tree(rows: int, cols: int, bound: int) -> list[Node]:
    """The nodes of a page of ``rows`` x ``cols`` tiles, children before parents (the root
    last), leaves of at most ``max(1, bound // 4)`` tiles."""
    per_leaf = max(1, bound // 4)
    nodes: list[Node] = []

    def build(r0: int, c0: int, r1: int, c1: int) -> int:
        if (r1 - r0) * (c1 - c0) <= per_leaf:
            nodes.append(Node(r0, c0, r1, c1, 0))
            return len(nodes) - 1
        vertical = c1 - c0 >= r1 - r0
        if vertical:
            mid = (c0 + c1) // 2
            kids = (build(r0, c0, r1, mid), build(r0, mid, r1, c1))
        else:
            mid = (r0 + r1) // 2
            kids = (build(r0, c0, mid, c1), build(mid, c0, r1, c1))
        nodes.append(Node(r0, c0, r1, c1, 1 + max(nodes[k].height for k in kids), kids,
                          vertical))
        return len(nodes) - 1

    build(0, 0, max(rows, 1), max(cols, 1))
    out = list(nodes)
    for i, node in enumerate(nodes):
        for k in node.children:
            out[k] = Node(**{**out[k].__dict__, "parent": i})
    return out


def sides_held(nodes: list[Node], i: int) -> int:
    """The tile sides node ``i`` holds while it runs: 4 per tile of a leaf, else its two
    children's perimeters (in tile sides)."""
    node = nodes[i]
    if not node.children:
        return 4 * node.tiles
    return sum(2 * ((nodes[k].r1 - nodes[k].r0) + (nodes[k].c1 - nodes[k].c0))
               for k in node.children)


def path(nodes: list[Node], row: int, col: int) -> list[int]:
    """The leaf holding tile (row, col), then its ancestors up to the root."""
    i = len(nodes) - 1
    down = [i]
    while nodes[i].children:
        i = next(k for k in nodes[i].children
                 if nodes[k].r0 <= row < nodes[k].r1 and nodes[k].c0 <= col < nodes[k].c1)
        down.append(i)
    return down[::-1]


def _tile_keys(side: np.ndarray, tile: tuple[int, int], cols: int) -> np.ndarray:
    """A side's labels as keys (0 where no edge pixel)."""
    keys = np.zeros(side.shape, np.int64)
    nz = side != 0
    if nz.any():
        keys[nz] = _key(tile, side[nz], cols)
    return keys


def leaf(node: Node, cols: int, sides: dict[tuple[int, int], dict[str, np.ndarray]]
         ) -> tuple[Arrays, Arrays]:
    """(up, down) of a leaf from the ``borders`` of each of its tiles (an empty tile of a
    downsampled grid: empty sides). ``cols``: the page's tile columns (the keys' tile index)."""
    keyed = {(r, c): {e: _tile_keys(sides[(r, c)][e], (r, c), cols) for e in EDGES}
             for r in range(node.r0, node.r1) for c in range(node.c0, node.c1)}
    pairs = [_touching(s1, s2) for _, s1, _, s2 in neighbour_sides(keyed)]
    every = [s for k in keyed.values() for s in k.values()]
    keys, root = _join(every, [a for a, _ in pairs], [b for _, b in pairs])
    strong = np.unique(root[(keys & 1) == 1])
    perimeter = _edges(
        [keyed[(node.r0, c)]["top"] for c in range(node.c0, node.c1)],
        [keyed[(node.r1 - 1, c)]["bottom"] for c in range(node.c0, node.c1)],
        [keyed[(r, node.c0)]["left"] for r in range(node.r0, node.r1)],
        [keyed[(r, node.c1 - 1)]["right"] for r in range(node.r0, node.r1)])
    return _up(perimeter, keys, root, strong), {"from": keys, "to": root, "strong": strong}


def merge(node: Node, a: Arrays, b: Arrays) -> tuple[Arrays, Arrays]:
    """(up, down) of a node from the ``up`` of its two children (left/top one first)."""
    if node.vertical:
        seam = _touching(a["right"], b["left"])
        perimeter = _edges([a["top"], b["top"]], [a["bottom"], b["bottom"]], [a["left"]],
                           [b["right"]])
    else:
        seam = _touching(a["bottom"], b["top"])
        perimeter = _edges([a["top"]], [b["bottom"]], [a["left"], b["left"]],
                           [a["right"], b["right"]])
    every = [a[e] for e in EDGES] + [b[e] for e in EDGES]
    ids, root = _join(every, [seam[0]], [seam[1]])
    was_strong = np.isin(ids, np.concatenate([a["strong"], b["strong"]]))
    strong = np.unique(root[was_strong])
    moved = root != ids
    return _up(perimeter, ids, root, strong), {"from": ids[moved], "to": root[moved],
                                               "strong": strong}


def _join(arrays: list[np.ndarray], pa: list[np.ndarray], pb: list[np.ndarray]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, root of each): the sorted nonzero ids of ``arrays`` and the smallest id of the
    component each joins through the pairs ``pa[i][j]``-``pb[i][j]``."""
    ids = np.unique(np.concatenate([x.ravel() for x in arrays] + [_EMPTY]))
    ids = ids[ids != 0]
    a = np.concatenate(pa + [_EMPTY])
    b = np.concatenate(pb + [_EMPTY])
    if ids.size == 0:
        return ids, ids
    parent = components(ids.size, np.searchsorted(ids, a), np.searchsorted(ids, b))
    return ids, ids[parent]


def _edges(top: list[np.ndarray], bottom: list[np.ndarray], left: list[np.ndarray],
           right: list[np.ndarray]) -> Arrays:
    return {name: np.concatenate(parts + [_EMPTY])
            for name, parts in zip(EDGES, (top, bottom, left, right), strict=True)}


def _up(perimeter: Arrays, ids: np.ndarray, root: np.ndarray, strong: np.ndarray) -> Arrays:
    """The perimeter renamed to its components' ids, and the strong ones among them."""
    out: Arrays = {}
    for name, values in perimeter.items():
        renamed = np.zeros(values.shape, np.int64)
        nz = values != 0
        if nz.any():
            renamed[nz] = root[np.searchsorted(ids, values[nz])]
        out[name] = renamed
    on_edge = np.unique(np.concatenate(list(out.values())))
    out["strong"] = strong[np.isin(strong, on_edge)]
    return out


def kept_labels(index: int, downs: list[Arrays]) -> np.ndarray:
    """The weak labels of tile ``index`` (row * cols + col) that join a strong component, from
    the ``down`` arrays of its leaf and of each ancestor up to the root (in that order)."""
    first = downs[0]
    lo, hi = np.searchsorted(first["from"], [np.int64(index) << 33, np.int64(index + 1) << 33])
    keys, ids = first["from"][lo:hi], first["to"][lo:hi]
    keep = np.isin(ids, first["strong"])
    for down in downs[1:]:
        if down["from"].size:
            at = np.minimum(np.searchsorted(down["from"], ids), down["from"].size - 1)
            ids = np.where(down["from"][at] == ids, down["to"][at], ids)
        keep |= np.isin(ids, down["strong"])
    weak = keep & ((keys & 1) == 0)
    return np.sort(((keys[weak] >> 1) & 0xFFFFFFFF).astype(np.int32))
