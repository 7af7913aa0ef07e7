"""The shape of canny's reduce tree for a page, and what its largest invocation holds.

    PYTHONPATH=. .venv/bin/python bench/canny_reduce_tree.py [side_px] [tile] [bound]

Pure arithmetic on pipeline.core.canny_tree.tree (no pixels): leaves, levels, Map items per
level, and the most tile sides one invocation holds (a leaf: 4 per tile; a node: its two
children's perimeters), against the whole page's sides that the single reduce held before.
"""

from __future__ import annotations

import sys
from collections import Counter
from math import ceil

from pipeline.core.canny_tree import sides_held, tree
from pipeline.steps.canny_reduce import DEFAULT_BOUND


def main(side: int = 316_228, tile: int = 512, bound: int = DEFAULT_BOUND) -> None:
    rows = cols = ceil(side / tile)
    nodes = tree(rows, cols, bound)

    held = max(sides_held(nodes, i) for i in range(len(nodes)))
    levels = Counter(n.height for n in nodes)
    print(f"page {side} x {side} px ({side * side / 1e9:.0f} Gpx), tile {tile}: {rows} x {cols}"
          f" = {rows * cols:,} tiles, bound {bound} tile sides")
    print(f"tree: {len(nodes):,} nodes, {levels[0]:,} leaves, {max(levels) + 1} levels; "
          "nodes per level: " + ", ".join(f"{levels[h]}" for h in sorted(levels)))
    print(f"largest invocation: {held:,} tile sides = {held * tile * 8 / 2**20:.1f} MiB as "
          f"int64 ids (a leaf's int32 labels: {4 * bound // 4 * tile * 4 / 2**20:.1f} MiB)")
    whole = 4 * rows * cols
    print(f"the single reduce held {whole:,} tile sides = {whole * tile * 4 / 2**30:.2f} GiB "
          "of int32 labels")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
