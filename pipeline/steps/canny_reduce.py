"""A canny round's reduce as a tree (pipeline.core.canny_tree), level by level.

``reduce_stats`` (one task) runs a level itself when its nodes together hold at most ``bound``
tile sides (a page of up to ``bound / 4`` tiles reduces in that one task, as before), and hands
a larger level to the ``ReduceLevel`` Distributed Map (``reduce_node``, one node per
invocation), then goes on from the next level when it is called again. Every invocation holds
the sides of at most ``bound / 4`` tiles (a leaf, read from the batches' statistics) or two
children's perimeters (a node above), never a whole page's sides.

``bound`` is ``TIFFPIPE_CANNY_REDUCE_SIDES`` (default :data:`DEFAULT_BOUND` tile sides: ~8 MB
of int32 labels with 512-pixel tiles); it is chosen once per round and carried in the state,
and each page's ``stats_file`` records it for process, which finds a tile's leaf and
ancestors from it (pipeline.steps.evaluate).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.core import canny_tree
from pipeline.core.constants import CANNY_REDUCE_SIDES_ENV, env_int
from pipeline.core.events import NodeEvent, ReduceEvent, StatsRound
from pipeline.core.models import JobPlan
from pipeline.core.plan import MAX_ITEMS
from pipeline.steps import layout
from pipeline.steps.common import load_plan, recorded
from pipeline.steps.evaluate import load_part, save_npz

BOUND_VAR = CANNY_REDUCE_SIDES_ENV
DEFAULT_BOUND = 4096
Item = tuple[int, int, canny_tree.Node]  # (page, node index in the page's tree, node)


def choose_bound(plan: JobPlan) -> int:
    """The tile sides a node may hold: ``TIFFPIPE_CANNY_REDUCE_SIDES`` (at least 4: one
    tile), raised if the job's pages would otherwise have more leaves than a Map may have
    items (the ReduceLevel map of the leaves runs every page's)."""
    bound = env_int(BOUND_VAR, os.environ) or DEFAULT_BOUND
    tiles = sum(p.grid.count for p in plan.pages)  # a level's nodes: every page's
    # halving leaves a leaf at least about half full: twice the leaves of full ones at most
    return max(bound, 2 * 4 * -(-tiles // MAX_ITEMS))


def job_nodes(plan: JobPlan, bound: int) -> list[tuple[Item, int]]:
    """Every page's tree nodes, page by page (what ``NodeEvent.node`` indexes), each with the
    tile sides it holds."""
    out = []
    for page, p in enumerate(plan.pages):
        nodes = canny_tree.tree(p.grid.rows, p.grid.cols, bound)
        out += [((page, i, node), canny_tree.sides_held(nodes, i))
                for i, node in enumerate(nodes)]
    return out


def levels(items: list[tuple[Item, int]], bound: int, start: int = 0
           ) -> Iterator[tuple[int, list[int], bool]]:
    """(level, its nodes' indices in ``items``, whether it runs as a ReduceLevel Map) from
    ``start`` up: a level whose nodes hold at most ``bound`` tile sides together runs in
    reduce_stats, one node at a time."""
    top = max(item[2].height for item, _ in items)
    for level in range(start, top + 1):
        at = [g for g, (item, _) in enumerate(items) if item[2].height == level]
        yield level, at, sum(items[g][1] for g in at) > bound


def map_levels(plan: JobPlan) -> list[int]:
    """The node counts of one canny round's ReduceLevel Maps, in order (for the estimate)."""
    bound = choose_bound(plan)
    return [len(at) for _, at, mapped in levels(job_nodes(plan, bound), bound) if mapped]


def reduce_round(plan: JobPlan, event: ReduceEvent, rounds: int) -> dict[str, Any]:
    """reduce_stats for a canny round: the next level of several nodes for the Map, or, when
    every level is done, the round's end (each page's stats file names the bound)."""
    bound = event.bound or choose_bound(plan)
    items = job_nodes(plan, bound)
    for level, at, mapped in levels(items, bound, event.level):
        if mapped:
            return StatsRound.tree_level(event.round, rounds, level + 1, at, bound
                                         ).reply(plan.job)
        for g in at:
            _run(plan, event.round, items[g][0])
    for page in range(len(plan.pages)):
        save_npz(layout.stats_file(plan.work, event.round, page),
                 {"bound": np.array([bound], np.int64)})
    return StatsRound.next_round(event.round + 1, rounds).reply(plan.job)


def reduce_node(event: NodeEvent) -> dict[str, Any]:
    """ReduceLevel: join one tree node (a leaf's tiles, or a node's two children)."""
    plan = load_plan(event.plan)
    with recorded(plan, "reduce_node", event.node):
        _run(plan, event.round, job_nodes(plan, event.bound)[event.node][0])
    return {"job": plan.job, "node": event.node}


def _run(plan: JobPlan, round_: int, item: Item) -> None:
    page, index, node = item
    if node.children:
        a, b = (_read(layout.tree_file(plan.work, round_, page, k, "up"), "its child's")
                for k in node.children)
        up, down = canny_tree.merge(node, a, b)
    else:
        up, down = canny_tree.leaf(node, plan.pages[page].grid.cols,
                                   _leaf_sides(plan, round_, page, node))
    save_npz(layout.tree_file(plan.work, round_, page, index, "up"), up)
    save_npz(layout.tree_file(plan.work, round_, page, index, "down"), down)


def _leaf_sides(plan: JobPlan, round_: int, page: int, node: canny_tree.Node
                ) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """The sides of a leaf's tiles, from the statistics of the batches that hold them (a
    batch at a time: a batch is bounded)."""
    cols = plan.pages[page].grid.cols
    order = sorted(r * cols + c for r in range(node.r0, node.r1) for c in range(node.c0, node.c1))
    wanted = set(order)
    sides: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for b, batch in enumerate(plan.batches):
        at = bisect.bisect_left(order, batch.first)
        if batch.page != page or at == len(order) or order[at] >= batch.last:
            continue
        part = _read(layout.stats_part_file(plan.work, round_, b), "a batch's")
        for index in range(batch.first, batch.last):
            if index in wanted:
                row, col = divmod(index, cols)
                sides[(row, col)] = {e: part[layout.border_key(row, col, e)]
                                     for e in canny_tree.EDGES}
    return sides


def _read(url: str, what: str) -> dict[str, np.ndarray]:
    return load_part(url, f"{what} canny statistics are missing (did its task fail?)")
