"""The geometric ops (``rotate``, ``flip``, ``crop``) on a tiled page.

A geometric op moves pixels: each output pixel is one input pixel. The processing grid of a
page is laid on the page as it is after the chain's last geometric op (the *placed* page, in
input pixels: downsample, clahe and canny come after the geometric ops, see
:func:`order_problems`), so output tiles stay whole processing tiles. What a tile needs of
the pages before that is found by walking back from its region on the placed page
(:meth:`PageGeometry.needed`): a geometric op maps a rectangle to a rectangle (its inverse),
an op with a halo grows it by its halo (aligned, as :mod:`pipeline.core.chain` aligns every
crop origin: ``HALO_ALIGN`` px from the origin of the page the op sees). So a tile reads a
bounded window of the input, whatever the op: rotating by 90 degrees makes an output band an
input column strip (:func:`pipeline.core.grid.split_units` then cuts units one tile column
of the placed page wide, or as many as a tall strip spans: one band of the input's rows
each, so a strip's decode serves the whole unit).

Pure module: integers and arrays in, integers and arrays out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.grid import PageGrid, Rect, SplitUnit
from pipeline.core.opencv import cv2
from pipeline.core.record import record

#: OpenCV's call for each (transpose, flip rows, flip cols) of the ops
_CV_TURNS: dict[tuple[bool, bool, bool], Any] = {
    (True, False, True): lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    (True, True, False): lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    (False, True, True): lambda a: cv2.rotate(a, cv2.ROTATE_180),
    (False, False, True): lambda a: cv2.flip(a, 1),
    (False, True, False): lambda a: cv2.flip(a, 0),
}
#: the unsigned type of each sample size, which OpenCV moves as it is (it gives int64 back
#: as int32)
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@record(frozen=True)
class Turn:
    """A rotation or a flip: the page is transposed (rows become columns) when ``transpose``,
    then its rows reversed when ``flip_rows``, then its columns when ``flip_cols``.

    rotate 90 (clockwise) is (True, False, True): ``out[r, c] = in[H - 1 - c, r]``, as
    ``cv2.rotate(img, ROTATE_90_CLOCKWISE)``; 270 is (True, True, False); 180 (False, True,
    True); flip horizontal (left and right swap, ``cv2.flip(img, 1)``) (False, False, True);
    flip vertical (``cv2.flip(img, 0)``) (False, True, False)."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool

    turns = True

    def size(self, height: int, width: int) -> tuple[int, int]:
        return (width, height) if self.transpose else (height, width)

    def after(self, rect: Rect, height: int, width: int) -> Rect:
        """Where ``rect`` of a ``height`` x ``width`` page lands."""
        r = Rect(rect.x0, rect.y0, rect.x1, rect.y1) if self.transpose else rect
        h, w = self.size(height, width)
        if self.flip_rows:
            r = Rect(h - r.y1, r.x0, h - r.y0, r.x1)
        if self.flip_cols:
            r = Rect(r.y0, w - r.x1, r.y1, w - r.x0)
        return r

    def before(self, rect: Rect, height: int, width: int) -> Rect:
        """The rect of the ``height`` x ``width`` input page whose pixels make ``rect`` of
        the output page."""
        h, w = self.size(height, width)
        r = rect
        if self.flip_cols:
            r = Rect(r.y0, w - r.x1, r.y1, w - r.x0)
        if self.flip_rows:
            r = Rect(h - r.y1, r.x0, h - r.y0, r.x1)
        return Rect(r.x0, r.y0, r.x1, r.y1) if self.transpose else r

    def page(self, img: np.ndarray) -> np.ndarray:
        """The op on a whole page (or on a region: its pixels turned the same way). OpenCV's
        call where it takes the page, its samples seen as unsigned integers of their size
        (it only moves them: any type is moved bit for bit; 4 samples a pixel at most): a
        numpy copy of a turned view was 3 to 25 times slower; else numpy's."""
        turn = _CV_TURNS.get((self.transpose, self.flip_rows, self.flip_cols))
        if turn is not None and (img.ndim == 2 or img.shape[2] <= 4):
            moved = turn(img.view(_UNSIGNED[img.dtype.itemsize]))
            return moved.view(img.dtype).reshape(self.size(*img.shape[:2]) + img.shape[2:])
        out = img.swapaxes(0, 1) if self.transpose else img
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def move(self, arr: np.ndarray, rect: Rect, height: int, width: int
             ) -> tuple[np.ndarray, Rect]:
        """``arr``, the pixels of ``rect`` of a ``height`` x ``width`` page, as they are on
        the output page, and where."""
        return self.page(arr), self.after(rect, height, width)


@record(frozen=True)
class Crop:
    """The box of ``width`` x ``height`` pixels from column ``x``, row ``y``."""

    x: int
    y: int
    width: int
    height: int

    turns = False
    transpose = False

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The box, clipped to the page (a box outside it is refused at plan time:
        :func:`crop_problem`); at least 1 x 1 so that a plan with that problem is made."""
        return (max(1, min(self.y + self.height, height) - self.y),
                max(1, min(self.x + self.width, width) - self.x))

    def after(self, rect: Rect, height: int, width: int) -> Rect:
        h, w = self.size(height, width)
        return Rect(min(max(rect.y0 - self.y, 0), h), min(max(rect.x0 - self.x, 0), w),
                    min(max(rect.y1 - self.y, 0), h), min(max(rect.x1 - self.x, 0), w))

    def before(self, rect: Rect, height: int, width: int) -> Rect:
        return Rect(rect.y0 + self.y, rect.x0 + self.x, rect.y1 + self.y, rect.x1 + self.x)

    def page(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[self.y:self.y + self.height, self.x:self.x + self.width])

    def move(self, arr: np.ndarray, rect: Rect, height: int, width: int
             ) -> tuple[np.ndarray, Rect]:
        out = self.after(rect, height, width)
        inside = self.before(out, height, width).relative_to(rect)
        return arr[inside.y0:inside.y1, inside.x0:inside.x1], out


Transform = Turn | Crop

#: GeoTIFF's ModelPixelScale, ModelTiepoint and ModelTransformation tags: where a page's
#: pixels are in the world
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
MODEL_TAGS = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION)
#: the TIFF types a model tag is read from as numbers (GeoTIFF defines DOUBLE; GDAL reads
#: the others widened to doubles, and so does pipeline.adapters.metadata, which carries
#: these types' values as numbers and the byte types' as bytes; a RATIONAL or SRATIONAL
#: model tag it carries as the DOUBLE tag GDAL reads, numerator / denominator, so it is
#: here a DOUBLE)
#: (SHORT, LONG, SSHORT, SLONG, FLOAT, DOUBLE, LONG8, SLONG8)
NUMBER_TYPES = frozenset({3, 4, 8, 9, 11, 12, 16, 17})

#: (transpose, flip rows, flip cols) of each rotation (clockwise) and flip
ROTATIONS = {90: Turn(True, False, True), 180: Turn(False, True, True),
             270: Turn(True, True, False)}
FLIPS = {"horizontal": Turn(False, False, True), "vertical": Turn(False, True, False)}


def crop_problem(box: Crop, height: int, width: int) -> str | None:
    """Why the crop box does not fit a ``height`` x ``width`` page (None: it fits)."""
    wrong = []
    if box.x + box.width > width:
        wrong.append(f"x + width = {box.x} + {box.width} = {box.x + box.width} is more than "
                     f"its width, {width}")
    if box.y + box.height > height:
        wrong.append(f"y + height = {box.y} + {box.height} = {box.y + box.height} is more "
                     f"than its height, {height}")
    if not wrong:
        return None
    return (f"the box does not fit the page of {width} x {height} pixels (width x height): "
            + " and ".join(wrong) + "; give a box inside it (x from 0 to "
            f"{width - 1}, y from 0 to {height - 1})")


def placed_size(calls: list[Any], height: int, width: int
                ) -> tuple[tuple[int, int], list[str]]:
    """The size (height, width) of a ``height`` x ``width`` page after the chain's geometric
    ops, and the problems of its crop boxes (each ``ops[i] (crop): ...``)."""
    problems = []
    turned = ""  # the ops before that changed the page's size or turned it
    for i, call in enumerate(calls):
        t = transform_of(call)
        if t is None:
            continue
        if isinstance(t, Crop) and (why := crop_problem(t, height, width)):
            problems.append(f"ops[{i}] (crop): {why}{turned}")
        if t.transpose or isinstance(t, Crop):
            turned = f" (the page as ops[{i}] ({call.op.name}) made it)"
        height, width = t.size(height, width)
    return (height, width), problems


def georeferenced(chain: list[Any], metadata: dict[str, Any]) -> list[str]:
    """The problem of moving (crop, downsample) or turning (rotate, flip) a page whose
    GeoTIFF georeferencing cannot be moved (:func:`model_type_problem`) or turned
    (:func:`turn_problem`) with it; a crop keeps any other, shifted, and a turn of a page
    georeferenced by one affine (a pixel scale and a tiepoint, or a ModelTransformation) or
    by tiepoints alone (GCPs) is written turned: pipeline.adapters.metadata.geo_placed."""
    moving = [(i, c) for i, c in enumerate(chain)
              if transform_of(c) is not None or c.op.factor(c.params) > 1]
    if moving and (why := model_type_problem(metadata)):
        i, call = moving[0]
        return [(f"ops[{i}] ({call.op.name}): the page is georeferenced ({why}), which cannot "
                 "be moved with its pixels: the output would lose its place in the world; "
                 f"leave {call.op.name} out, or write the georeferencing again with GDAL first "
                 "(gdal_translate writes its model tags as DOUBLE values)")]
    turning = [(i, c) for i, c in moving if getattr(transform_of(c), "turns", False)]
    why = turn_problem(metadata) if turning else None
    if why is None:
        return []
    i, call = turning[0]
    return [(f"ops[{i}] ({call.op.name}): the page is georeferenced ({why}), which cannot be "
            "turned with its pixels: the output would put them in the wrong place; leave "
            f"{call.op.name} out (GIS software shows a map by its georeferencing), turn the "
            "page with GDAL (gdalwarp), or give it one georeferencing first (gdal_translate "
            "writes a pixel scale and one tiepoint, or a ModelTransformation)")]


def turn_problem(metadata: dict[str, Any]) -> str | None:
    """What in a page's GeoTIFF model tags (``PageInfo.metadata["spatial"]``) keeps a turn
    from being written (None: nothing, or the page is not georeferenced). Read as GDAL reads
    them: a pixel scale (both sizes not 0) with tiepoints wins, else a ModelTransformation
    of 16 values, else the tiepoints are ground control points (GCPs)."""
    tags = {code: (kind, value) for code, kind, _count, value in metadata.get("spatial", [])
            if code in MODEL_TAGS}
    if not tags or model_type_problem(metadata):
        return None  # (refused as one that cannot be moved)
    scale = tags.get(MODEL_PIXEL_SCALE, (0, []))[1]
    ties = tags.get(MODEL_TIEPOINT, (0, []))[1]
    matrix = tags.get(MODEL_TRANSFORMATION, (0, None))[1]
    if len(ties) % 6:
        return f"a ModelTiepoint of {len(ties)} values, not a multiple of 6"
    if len(scale) >= 2 and scale[0] and scale[1]:
        if len(ties) > 6:
            return (f"a ModelPixelScale with {len(ties) // 6} ModelTiepoints: GDAL places the "
                    "page by the first and leaves the others")
        if not ties:
            return "a ModelPixelScale without a ModelTiepoint"
        return None
    if matrix is not None and len(matrix) != 16:
        return f"a ModelTransformation of {len(matrix)} values, not 16"
    if matrix is None and not ties:
        return "a ModelPixelScale of sizes 0 and nothing else"
    return None


def model_type_problem(metadata: dict[str, Any]) -> str | None:
    """Which of a page's GeoTIFF model tags (``PageInfo.metadata["spatial"]``) are not
    stored as numbers (:data:`NUMBER_TYPES`: ASCII, UNDEFINED, BYTE), so that they cannot be
    read to be moved; None: every one can (any numeric type is written back as DOUBLE)."""
    bad = [f"{NAMES[code]} (TIFF type {kind})" for code, kind, _count, _value
           in sorted(metadata.get("spatial", []), key=lambda tag: tag[0])
           if code in NAMES and kind not in NUMBER_TYPES]
    return f"its {', '.join(bad)} not stored as numbers" if bad else None


#: the names of the GeoTIFF model tags, for messages
NAMES = {MODEL_PIXEL_SCALE: "ModelPixelScale", MODEL_TIEPOINT: "ModelTiepoint",
         MODEL_TRANSFORMATION: "ModelTransformation"}


def transposes(calls: list[Any]) -> bool:
    """Whether the chain's geometric ops swap a page's rows and columns (an odd number of
    quarter turns)."""
    return sum(bool(t and t.transpose) for t in map(transform_of, calls)) % 2 == 1


def transform_of(call: Any) -> Transform | None:
    """The transform of an op call (an ``OpCall``), None for an op that is not geometric."""
    make = call.op.geometry
    return None if make is None else make(call.params)


def order_problems(calls: list[Any]) -> list[str]:
    """Where a chain puts a geometric op where it cannot run: after a downsample, clahe or
    canny (their tiles are laid on the placed page), or a crop after an op whose result comes
    from the whole page's statistics (the statistics would be of pixels cropped away).
    Each problem with the op's path, as ``ops[2]: ...``."""
    problems = []
    for i, call in enumerate(calls):
        if call.op.geometry is None:
            continue
        for j, before in enumerate(calls[:i]):
            name = before.op.name
            if name in ("downsample", "clahe") or before.op.kind == "canny":
                problems.append(
                    f"ops[{i}] ({call.op.name}): comes after ops[{j}] ({name}); put it before "
                    f"{name}: rotate, flip and crop run before downsample, clahe and canny "
                    "(their tiles are laid out on the page the geometric ops make)")
                break
            if call.op.name == "crop" and before.op.kind == "stats":
                problems.append(
                    f"ops[{i}] (crop): comes after ops[{j}] ({name}), whose result comes "
                    f"from the whole page's statistics; put crop before {name} (its "
                    "statistics are then those of the cropped page)")
                break
    return problems


@record(frozen=True)
class Placement:
    """What the chain's geometric ops do to a page, for its output's tags: the placed page's
    size (input pixels, before any downsample), whether the pixels were turned (a rotation
    or flip: Orientation no longer describes them; XMP is rewritten) and transposed (x and
    y swap: resolution too), and where each point of the placed page was on the input page, in
    pixel-corner coordinates (x right, y down; pixel (r, c) covers [c, c + 1) x [r, r + 1)):
    ``x_in = axes[0] x + axes[1] y + x``, ``y_in = axes[2] x + axes[3] y + y``, so ``y``,
    ``x`` is where the placed page's corner was (when only crops moved it: the corner of
    their boxes) and ``axes`` a signed permutation (identity unless turned)."""

    height: int
    width: int
    turned: bool
    transposed: bool
    y: int = 0
    x: int = 0
    axes: tuple[int, int, int, int] = (1, 0, 0, 1)


def _corner_map(t: Transform, height: int, width: int
                ) -> tuple[tuple[int, int, int, int], int, int]:
    """Where each point of the page ``t`` makes of a ``height`` x ``width`` page was on it,
    in pixel-corner coordinates: (axes, x, y) as :class:`Placement`'s."""
    if isinstance(t, Crop):
        return (1, 0, 0, 1), t.x, t.y
    h, w = t.size(height, width)
    sx, tx = (-1, w) if t.flip_cols else (1, 0)  # x1 = sx x' + tx on the transposed page
    sy, ty = (-1, h) if t.flip_rows else (1, 0)
    if t.transpose:  # (x, y) = (y1, x1)
        return (0, sy, sx, 0), ty, tx
    return (sx, 0, 0, sy), tx, ty


def placement(calls: list[Any], height: int, width: int) -> Placement | None:
    """The :class:`Placement` of a page of ``height`` x ``width`` by a chain (its
    ``OpCall`` list); None when the chain has no geometric op."""
    transforms = [t for t in map(transform_of, calls) if t is not None]
    if not transforms:
        return None
    (a, b, c, d), x, y = (1, 0, 0, 1), 0, 0  # space i to the input page
    turned = transposed = False
    for t in transforms:
        (e, f, g, k), tx, ty = _corner_map(t, height, width)  # space i + 1 to space i
        (a, b, c, d), x, y = ((a * e + b * g, a * f + b * k, c * e + d * g, c * f + d * k),
                              a * tx + b * ty + x, c * tx + d * ty + y)
        if t.turns:
            turned, transposed = True, transposed != t.transpose
        height, width = t.size(height, width)
    return Placement(height, width, turned, transposed, y, x, (a, b, c, d))


class PageGeometry:
    """The geometric part of a chain on one page: the ops up to the last geometric one.

    Spaces: op i sees the page in space i (``dims[i]``); space ``last + 1`` is the placed
    page, on which ``grid`` lies. ``margin`` is what the ops after the geometric ones need
    around a tile's core (the layout's ``v_margin``). With no geometric op (``last`` -1)
    every method is the plain grid's: a tile reads ``grid.haloed``. (A plain class: made
    per unit and batch.)"""

    def __init__(self, layout: Any, height: int, width: int, grid: PageGrid):
        self.layout, self.grid = layout, grid
        self.step = layout.step  # (pipeline.core.ops.HALO_ALIGN)
        self.last = layout.last_geometric
        # (no geometric op: the grid's halo, the largest of the job's pages' chains)
        self.margin = layout.v_margin if self.last >= 0 else grid.halo
        self.transforms = [transform_of(c) for c in layout.calls[:self.last + 1]]
        dims = [(height, width)]
        for t in self.transforms:
            dims.append(t.size(*dims[-1]) if t is not None else dims[-1])
        self.dims = dims

    def placed(self, row: int, col: int) -> Rect:
        """A tile's core grown by the margin the ops after the geometric ones need, on the
        placed page (clipped at its border)."""
        return self.grid.expand(self.grid.core(row, col), self.margin)

    def needed(self, target: Rect, upto: int) -> list[Rect]:
        """``rects[i]`` (i from 0 to ``upto`` <= last + 1): the region of space i the ops
        [i, upto) need for exact output on ``target`` (a rect of space ``upto``). A geometric
        op maps it back; another op grows it by its halo (rounded up to :attr:`step`) and
        rounds it out to multiples of :attr:`step`, clipped at its page."""
        rects = [target]
        for i in range(upto - 1, -1, -1):
            t, (h, w), r = self.transforms[i], self.dims[i], rects[-1]
            if t is not None:
                r = t.before(r, h, w)
            else:
                call = self.layout.calls[i]
                halo = call.op.reach_for(call.params, self.layout.dtypes[i], 0)
                a = self.step
                m = -(-halo // a) * a
                r = Rect(max(0, (r.y0 - m) // a * a), max(0, (r.x0 - m) // a * a),
                         min(h, -(-(r.y1 + m) // a) * a), min(w, -(-(r.x1 + m) // a) * a))
            rects.append(r)
        return rects[::-1]

    def read(self, rect: Rect) -> Rect:
        """The input window (space 0) the chain needs for ``rect`` of the placed page (a
        tile's or a unit's, grown by :attr:`margin`)."""
        return self.needed(rect, self.last + 1)[0] if self.last >= 0 else rect

    def tile_read(self, row: int, col: int) -> Rect:
        """The input window tile (row, col) reads (split's haloed tile)."""
        return self.read(self.placed(row, col))

    def unit_read(self, unit: SplitUnit) -> Rect:
        """The input window all the unit's tiles read lie in."""
        span = self.grid.span(unit.row0, unit.row1, unit.col0, unit.col1)
        return self.read(self.grid.expand(span, self.margin))

    def core_at(self, row: int, col: int, position: int) -> Rect:
        """A tile's core in space ``position`` (<= last + 1): the placed core mapped back
        through the geometric ops from ``position`` on. The cores of a page's tiles are a
        partition of each space's page (a crop's: of the box)."""
        return self.back(self.grid.core(row, col), position)

    def back(self, rect: Rect, position: int = 0, space: int | None = None) -> Rect:
        """``rect`` of the placed page (of space ``space`` <= last + 1, when given) mapped
        back through the geometric ops to space ``position`` (<= ``space``): where its pixels
        were before them, without any halo."""
        start = self.last if space is None else space - 1
        for i in range(start, position - 1, -1):
            t = self.transforms[i]
            if t is not None:
                rect = t.before(rect, *self.dims[i])
        return rect

    def moved(self, arr: np.ndarray, rect: Rect, space: int | None = None) -> np.ndarray:
        """``arr``, the pixels of ``rect`` of the input page (:meth:`back` of a rect of the
        placed page, or of space ``space``), moved by the geometric ops alone (those before
        op ``space``): the pixels of that rect."""
        for t, dims in zip(self.transforms[:space], self.dims, strict=False):
            if t is not None:
                arr, rect = t.move(arr, rect, *dims)
        return arr

    def order(self, unit: SplitUnit) -> list[tuple[int, int]]:
        """The unit's tiles in the order a downward sweep of the input reads them: by their
        cores' rows, then columns, on the input page (the grid's row-major order when no op
        turns the page)."""
        positions = [(r, c) for r in range(unit.row0, unit.row1)
                     for c in range(unit.col0, unit.col1)]
        if self.last < 0 or not any(t is not None and t.turns for t in self.transforms):
            return positions

        def key(pos: tuple[int, int]) -> tuple[int, int]:
            core = self.core_at(*pos, 0)
            return core.y0, core.x0
        return sorted(positions, key=key)

    def forward(self, arr: np.ndarray, rect: Rect, target: Rect, upto: int,
                apply: Any) -> tuple[np.ndarray, Rect]:
        """Run ops [0, upto) (upto <= last + 1) on ``arr``, the pixels of ``rect`` of the
        input page, for exact output on ``target`` (space ``upto``): each op gets the region
        :meth:`needed` says (a view of what the op before made), a geometric op moves it,
        ``apply(i, arr, rect)`` runs op i. Returns the pixels of ``target``."""
        rects = self.needed(target, upto)
        for i in range(upto):
            arr, rect = _cut(arr, rect, rects[i]), rects[i]
            t = self.transforms[i]
            if t is not None:
                arr, rect = t.move(arr, rect, *self.dims[i])
            else:
                arr, rect = apply(i, arr, rect)
        return _cut(arr, rect, target), target


def _cut(arr: np.ndarray, rect: Rect, inner: Rect) -> np.ndarray:
    """The pixels of ``inner`` from ``arr``, the pixels of ``rect`` (which holds it)."""
    r = inner.relative_to(rect)
    if r.y0 < 0 or r.x0 < 0 or r.y1 > arr.shape[0] or r.x1 > arr.shape[1]:
        raise ValueError(f"region {inner} is not inside {rect}")  # (a bug, not an input's)
    return arr[r.y0:r.y1, r.x0:r.x1]
