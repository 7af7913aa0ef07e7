"""canny's hysteresis as a tree reduce (pipeline.core.canny_tree): the same kept labels as the
whole-page join (pipeline.core.canny.hysteresis) for every bound, with leaves and nodes that
hold a bounded number of tile sides."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core import canny as canny_mod
from pipeline.core import canny_tree
from pipeline.core.grid import PageGrid


def _page_labels(rng: np.random.Generator, grid: PageGrid) -> dict[tuple[int, int], np.ndarray]:
    """Labels of every tile of a random edge map, as the stats step makes them: weak pixels
    (sparse, so components cross tiles and corners), some strong."""
    weak = rng.random((grid.height, grid.width)) < 0.45
    strong = weak & (rng.random(weak.shape) < 0.02)
    out = {}
    for row in range(grid.rows):
        for col in range(grid.cols):
            r = grid.core(row, col)
            out[(row, col)] = canny_mod.label_core(
                weak[r.y0:r.y1, r.x0:r.x1].astype(np.uint8),
                strong[r.y0:r.y1, r.x0:r.x1].astype(np.uint8))
    return out


def _reduce(grid: PageGrid, sides: dict, bound: int) -> tuple[dict, list, int]:
    """Run the tree as the steps do (leaves, then each level), resolve every tile."""
    nodes = canny_tree.tree(grid.rows, grid.cols, bound)
    ups, downs, held = {}, {}, 0
    for i, node in enumerate(nodes):  # children come before their parents
        if node.children:
            a, b = (ups[k] for k in node.children)
            held = max(held, sum(len(x[e]) for x in (a, b) for e in canny_tree.EDGES))
            ups[i], downs[i] = canny_tree.merge(node, a, b)
        else:
            ups[i], downs[i] = canny_tree.leaf(node, grid.cols, {
                (r, c): sides[(r, c)] for r in range(node.r0, node.r1)
                for c in range(node.c0, node.c1)})
    kept = {}
    for (row, col) in sides:
        labels = canny_tree.kept_labels(row * grid.cols + col,
                                        [downs[i] for i in canny_tree.path(nodes, row, col)])
        if labels.size:
            kept[(row, col)] = labels
    return kept, nodes, held


@pytest.mark.parametrize("seed,height,width,tile,bound", [
    (1, 70, 90, 8, 4), (2, 64, 64, 8, 8), (3, 33, 101, 7, 12), (4, 50, 50, 10, 1000),
    (5, 9, 200, 6, 4), (6, 200, 9, 6, 16)])
def test_the_tree_keeps_what_the_whole_page_join_keeps(seed, height, width, tile, bound):
    grid = PageGrid(height, width, tile, 0)
    sides = {t: canny_mod.borders(a) for t, a in _page_labels(np.random.default_rng(seed),
                                                              grid).items()}
    want = canny_mod.hysteresis(grid, sides)
    got, nodes, held = _reduce(grid, sides, bound)
    assert set(got) == set(want)
    for t in want:
        assert np.array_equal(got[t], want[t]), t
    assert sum(len(v) for v in want.values()) > 10  # the case joins across tiles at all
    leaves = [n for n in nodes if not n.children]
    assert all(4 * n.tiles <= max(bound, 4) for n in leaves)
    if bound < grid.count:
        assert nodes[-1].height >= 2  # several levels of the tree
    # a node holds its children's perimeters: bounded by the page's edges, not its area
    assert held <= 3 * (height + width)


def test_the_tree_covers_the_page_once_children_first():
    nodes = canny_tree.tree(5, 7, 8)  # 2 tiles per leaf
    leaves = [n for n in nodes if not n.children]
    cover = np.zeros((5, 7), int)
    for n in leaves:
        cover[n.r0:n.r1, n.c0:n.c1] += 1
        assert n.tiles <= 2
    assert (cover == 1).all()
    for i, n in enumerate(nodes):
        assert all(k < i and nodes[k].parent == i for k in n.children)
        assert n.height == (1 + max(nodes[k].height for k in n.children) if n.children else 0)
    assert nodes[-1].parent is None and (nodes[-1].r1, nodes[-1].c1) == (5, 7)
    p = canny_tree.path(nodes, 4, 6)
    assert p[-1] == len(nodes) - 1 and not nodes[p[0]].children
    assert nodes[p[0]].r0 <= 4 < nodes[p[0]].r1 and nodes[p[0]].c0 <= 6 < nodes[p[0]].c1


# --- on the local engine: the tree's levels run as ReduceLevel map runs ---------------------


def test_a_canny_with_a_small_bound_reduces_in_several_levels_exactly(tmp_path, monkeypatch):
    """Two pages of 8 x 11 and 4 x 5 tiles with 8 tile sides per node (2 tiles a leaf): the
    reduce tree has several levels, each of several nodes, run by ReduceLevel children; the
    output is bit-identical to cv2.Canny on the whole page (hysteresis along long edges that
    cross many tiles), and a chain with two cannies reduces both rounds by the tree."""
    import json

    import cv2
    import tifffile
    from test_global_ops import _long_edges

    from pipeline.engine.local import LocalEngine
    from pipeline.steps.canny_reduce import BOUND_VAR

    monkeypatch.setenv(BOUND_VAR, "8")
    pages = [_long_edges(700, 500), _long_edges(256, 300)]
    src = tmp_path / "edges.tif"
    tifffile.imwrite(src, pages[0], tile=(64, 64))
    tifffile.imwrite(src, pages[1], tile=(64, 64), append=True)
    ops = [{"op": "canny", "low": 8, "high": 60, "sigma": 1.0}]
    twice = ops + [{"op": "gaussian_blur", "sigma": 3}, {"op": "canny", "low": 5, "high": 30}]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"defaults": {"tile": 64, "output_options": {"tile": 64}},
                                    "jobs": [{"input": str(src), "output": str(tmp_path / n),
                                              "ops": o} for n, o in (("a.tif", ops),
                                                                     ("b.tif", twice))]}))
    nodes: list[dict] = []

    def listener(function, event, ok, payload):
        if event.get("action") == "reduce_node":
            nodes.append(event)
        if event.get("action") == "reduce_stats" and ok:
            nodes.append({"reduce_stats": payload})

    with LocalEngine(2, listener=listener) as engine:
        execution = engine.run({"manifest": str(manifest), "work": str(tmp_path / "work"),
                                "run_id": "t", "report": str(tmp_path / "r.json")}, name="t")
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["failed"] == 0, report

    def ref(page, chain):
        out = page
        for op in chain:
            if op["op"] == "canny":
                x = cv2.GaussianBlur(out, (0, 0), op["sigma"]) if op.get("sigma") else out
                out = cv2.Canny(x, op["low"], op["high"])
            else:
                out = cv2.GaussianBlur(out, (0, 0), op["sigma"])
        return out

    for name, chain in (("a.tif", ops), ("b.tif", twice)):
        with tifffile.TiffFile(tmp_path / name) as tf:
            for page, want in zip(tf.pages, pages, strict=True):
                got = page.asarray()
                assert np.array_equal(got, ref(want, chain)), name
    levels = [n["reduce_stats"] for n in nodes if "reduce_stats" in n and n["reduce_stats"]["tree"]]
    assert len({(lv["job"], lv["round"], lv["level"]) for lv in levels}) >= 6  # levels, rounds
    assert sum("node" in n for n in nodes) > 60  # the ReduceLevel children


def test_the_bound_keeps_the_leaves_of_a_job_within_one_map(monkeypatch, tmp_path):
    """Whatever bound is asked for, a job's leaves (every page's) fit one Map's items (10,000;
    50 here): the plan of two pages (headers only: make_plan reads no pixels)."""
    from pipeline.core.models import JobSpec, PageInfo
    from pipeline.core.plan import make_plan
    from pipeline.steps import canny_reduce

    monkeypatch.setattr(canny_reduce, "MAX_ITEMS", 50)

    def info(index: int, height: int, width: int) -> PageInfo:
        return PageInfo(index=index, height=height, width=width, channels=1, dtype="uint8",
                        photometric="minisblack", extrasamples=[], tiled=True,
                        segment_rows=512, compression="zstd")

    spec = JobSpec(input=str(tmp_path / "in.tif"), output=str(tmp_path / "out.tif"),
                   ops=[{"op": "canny", "low": 10, "high": 40}], tile=64)
    plan, problems = make_plan(0, spec, [info(0, 2000, 1500), info(1, 90, 4000)],
                               str(tmp_path / "work"), 0.0)
    assert problems == []
    monkeypatch.setenv(canny_reduce.BOUND_VAR, "4")
    bound = canny_reduce.choose_bound(plan)
    leaves = [node for (_, _, node), _ in canny_reduce.job_nodes(plan, bound)
              if not node.children]
    assert bound > 4 and len(leaves) <= 50
    assert sum(p.grid.count for p in plan.pages) > 50 * 10  # one tile a leaf would not fit
