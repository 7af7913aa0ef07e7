"""The geometry of pyramid levels: their shapes, and how many of them the units build. Pure."""

from __future__ import annotations

from math import ceil

from pipeline.core.models import JobPlan
from pipeline.core.ops import chain_turns

#: processing tiles a band of a turned (or masked) page's levels spans (:func:`band_level_count`): a
#: band holds a tile row per level across its width (8 tiles of 1,024 px: 4 MiB of gray)
BAND_TILES = 8


def level_shapes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """(height, width) of each reduced level, largest first: halved (rounding up) until the
    level fits in one ``tile`` x ``tile`` tile. Empty when the page already fits."""
    shapes = []
    while height > tile or width > tile:
        height, width = ceil(height / 2), ceil(width / 2)
        shapes.append((height, width))
    return shapes


def unit_level_count(plan: JobPlan, page: int) -> int:
    """How many pyramid levels the units of a page build themselves (fused units as they
    process, a job that is not fused in its level units): the levels k with ``2**k``
    dividing the processing tile (in output pixels), so that no level pixel needs two units
    (0: no pyramid, or merge builds them band by band: a turned page's, a page's that
    carries its mask, a "nearest" page's of odd size: :func:`band_level_count`)."""
    if chain_turns(plan.spec.ops):  # (its units meet its rows in the input's order: merge
        return 0  # builds them, band by band: :func:`band_level_count`)
    if plan.pages[page].info.mask_ifd:  # its levels' masks, and pixels means without the
        return 0  # masked-out pixels, come from its base and mask tiles, which merge reads
    return aligned_level_count(plan, page)


def band_level_count(plan: JobPlan, page: int) -> int:
    """How many pyramid levels merge builds band by band (:data:`BAND_TILES` processing
    tiles wide, the page's height: :func:`pipeline.steps.unit_levels.merge_band_levels`),
    a tile row per level across a band, not the page: those of every page whose units build
    none (:func:`unit_level_count` 0): a turned page's, a page's that carries its mask (the
    bands read its mask tiles with its tiles and build the levels' masks with them), a
    "nearest" page's of odd size (the bands carry the row above and the column left of
    their blocks), as :func:`aligned_level_count` aligns them with ``edges``. 0: the units
    build them (merge the few below their deepest), or there are none."""
    if unit_level_count(plan, page):
        return 0
    return aligned_level_count(plan, page, edges=True)


def aligned_level_count(plan: JobPlan, page: int, edges: bool = False) -> int:
    """How many pyramid levels of a page a region starting and ending on multiples of the
    processing tile (in output pixels) can build from its own pixels: the levels k with
    ``2**k`` dividing the tile, so that no level pixel needs two regions (0: no pyramid, a
    page in strips). ``edges``: the regions are merge's bands, which take a "nearest"
    level's picks outside their blocks from the band and processing row before
    (:class:`pipeline.steps.unit_levels._Picks`), so do not stop at a level of odd size."""
    p = plan.pages[page]
    if not plan.spec.output_options.pyramid or p.strip:
        return 0
    t, big = plan.spec.output_options.tile, p.out_grid.tile
    shapes = level_shapes(p.out_grid.height, p.out_grid.width, t)
    k = 0
    while k < len(shapes) and big % (2 ** (k + 1)) == 0:
        k += 1
    if level_method(plan, page) == "nearest" and not edges:
        # "nearest" (a page of indices' "mean" too) takes, past half way down (across) a
        # level above of odd size, the row (column) before each block, which may be
        # another unit's: the units stop at the first odd level
        sizes = [(p.out_grid.height, p.out_grid.width), *shapes]
        k = min(k, next((j for j, (h, w) in enumerate(sizes) if h % 2 or w % 2), k))
    return k


def indexed_levels(plan: JobPlan, page: int) -> bool:
    """Whether the pixels of output page ``page`` are colour-map indices, which its levels
    pick, never average (their "mean" is "nearest": :func:`level_method`): a palette page's
    (kept as one), a gray class map's whose ColorMap the output keeps
    (:func:`pipeline.adapters.metadata.keeps_gray_colormap`). Not of a class map whose
    ColorMap the output drops (a blur, a JPEG output): its values are no indices, its
    levels means as any gray page's."""
    from pipeline.adapters.metadata import keeps_gray_colormap  # (an adapter: imported late)

    p = plan.pages[page]
    return p.info.photometric == "palette" or keeps_gray_colormap(plan.spec, p)


def level_units(plan: JobPlan) -> bool:
    """True when a job that is not fused runs its level units (the BuildLevels Map, one
    invocation per split unit, after Process): it has a pyramid the units can build."""
    return not plan.fused and any(unit_level_count(plan, i) for i in range(len(plan.pages)))


def level_method(plan: JobPlan, page: int) -> str:
    """How the levels of output page ``page`` reduce their 2 x 2 blocks
    (:func:`pipeline.steps.pyramid.reduce2`'s ``method``): ``output_options.
    pyramid_resampling``, but "nearest" (GDAL's nearest overviews) for the "mean" of a page
    of indices (a mean of colour-map indices means nothing): a palette page's, a gray class
    map's whose ColorMap the output keeps (:func:`indexed_levels`)."""
    method = plan.spec.output_options.pyramid_resampling
    return "nearest" if method == "mean" and indexed_levels(plan, page) else method
