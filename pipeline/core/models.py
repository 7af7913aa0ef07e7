"""Typed models of a job: its manifest entry (:class:`JobSpec`, :class:`OutputOptions`) and
its plan (:class:`JobPlan`: a :class:`PagePlan` per page, each with its input's
:class:`PageInfo`), stored as plan.json; converted with ``to_json``/``from_json``.

The state payloads are in :mod:`pipeline.core.events`: they carry the plan's URL, not the
plan (references and small counts only, never pixels or tile lists: Step Functions caps a
state's data at 256 KiB).
"""

from __future__ import annotations

from dataclasses import field
from functools import cached_property
from typing import Any

from pipeline.core.grid import Batch, PageGrid, SplitUnit
from pipeline.core.record import field_values, record

COMPRESSIONS = ("zstd", "deflate", "lzw", "jpeg", "group4", "none")
#: the compressions a 1-bit output (``bilevel``) may have; group4 (CCITT T.6) is 1-bit only
BILEVEL_COMPRESSIONS = ("zstd", "deflate", "lzw", "group4", "none")
#: where pyramid levels are written (``output_options.pyramid_layout``)
PYRAMID_LAYOUTS = ("subifds", "pages")

#: processing tile (pixels) when the manifest sets none
DEFAULT_TILE = 1024
#: output tile (pixels) when the manifest sets none
DEFAULT_OUTPUT_TILE = 512


@record(frozen=True)
class OutputOptions:
    """How the output TIFF is encoded."""

    compression: str = "zstd"
    level: int | None = None  # zstd 1-22 (default 3), deflate 1-9 (default 6); ignored otherwise
    quality: int = 90  # jpeg 1-100
    tile: int = DEFAULT_OUTPUT_TILE
    pyramid: bool = False  # reduced-resolution levels (factor 2, down to one tile)
    #: where the levels go: "subifds" of their page (OME-TIFF's layout), or "pages" of the
    #: main chain right after it, marked reduced-resolution (OpenSlide's and GDAL's overviews)
    pyramid_layout: str = "subifds"
    #: how a level's 2 x 2 blocks become its pixels (:data:`pipeline.core.reduce.METHODS`):
    #: "mean" (GDAL's average), or one sample of each: "nearest", "mode", "min", "max"
    #: (class labels, bit masks: pipeline.steps.pyramid)
    pyramid_resampling: str = "mean"
    ome: bool = False  # write OME-TIFF (OME-XML in the first page's ImageDescription)
    #: write one-band uint8 pages of 0 and 255 as 1-bit (BitsPerSample 1, miniswhite): true
    #: every page, or "auto" each page whose output is black and white (a mixed book's text
    #: pages 1-bit, its plates as they are: :func:`pipeline.core.plan.page_options`)
    bilevel: bool | str = False
    #: the codec of the 1-bit pages of a ``bilevel`` "auto" job (``compression`` is the
    #: other pages'); a ``bilevel`` true job's pages all take ``compression``
    bilevel_compression: str = "group4"
    #: carry each page's internal mask (GDAL's valid-data mask) into the output, after it
    masks: bool = True
    #: write a BigTIFF (True), a classic TIFF (False), or "auto": a BigTIFF when the output
    #: may pass classic TIFF's 4 GiB (:func:`pipeline.core.plan.bigtiff_output`)
    bigtiff: bool | str = "auto"
    #: lay the output out as a Cloud Optimized GeoTIFF: every IFD first, then the levels'
    #: tiles smallest first, the page's last (one page, levels as pages: job_fields)
    cog: bool = False

    def to_json(self) -> dict[str, Any]:
        return field_values(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OutputOptions:
        return cls(**d)


@record(frozen=True)
class JobSpec:
    """One job of a manifest, with defaults applied and locations resolved to URLs/paths."""

    input: str
    output: str
    pages: list[int] | None = None  # None: every page
    ops: list[dict[str, Any]] = field(default_factory=list)  # validated op chain, as JSON
    tile: int = DEFAULT_TILE
    output_options: OutputOptions = field(default_factory=OutputOptions)
    #: split and process each unit in one invocation when the chain allows (no work tiles)
    fuse: bool = True
    #: when the output exists already: "overwrite" it, "skip" the job, or "fail" it
    if_exists: str = "overwrite"

    def to_json(self) -> dict[str, Any]:
        # field by field, not asdict, whose deep copy of every value showed in profiles of
        # many one-page jobs (PlanRun and PlanJob write every job's spec); the ops are JSON,
        # each op's dict is copied
        d = field_values(self)
        d["pages"] = None if self.pages is None else list(self.pages)
        d["ops"] = [dict(op) for op in self.ops]
        d["output_options"] = self.output_options.to_json()
        return d

    def manifest_entry(self) -> dict[str, Any]:
        """This job as a job of a manifest (what a manifest of it would give again: the
        output options that are not the defaults, no unset field): a rerun's manifest."""
        d = {k: v for k, v in self.to_json().items() if v is not None}
        defaults = OutputOptions().to_json()
        d["output_options"] = {k: v for k, v in d["output_options"].items()
                               if v is not None and v != defaults.get(k)}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobSpec:
        d = dict(d)
        d["output_options"] = OutputOptions.from_json(d.get("output_options") or {})
        return cls(**d)


@record(frozen=True)
class PageInfo:
    """What a plan needs to know of one input page (read from its IFD only)."""

    index: int  # page index in the input file
    height: int
    width: int
    channels: int
    dtype: str
    #: of the pixels read, after conversion: "minisblack" | "rgb" | "palette" | "separated"
    #: (CMYK)
    photometric: str
    extrasamples: list[int]  # TIFF ExtraSamples values of the channels past the colour ones
    tiled: bool
    segment_rows: int  # rows of one strip or tile of the input
    compression: str
    #: what the reader does to the decoded samples (bilevel, miniswhite, palette); "" nothing
    conversion: str = ""
    #: tags carried to the output page, JSON-safe (pipeline.adapters.metadata)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: where the page's IFD starts in the file (0: not known): a unit reads its page there
    #: instead of walking the file's chain of pages (a walk per unit of a file of n pages
    #: costs n^2 IFD reads over the job)
    ifd_offset: int = 0
    #: where the IFD of the page's internal mask starts (the page right after it: GDAL's
    #: valid-data mask, pipeline.adapters.tiff_read.internal_mask), which the output
    #: carries; 0: none, or the job does not carry it (pipeline.core.plan.masks_left_out)
    mask_ifd: int = 0

    def to_json(self) -> dict[str, Any]:
        return field_values(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PageInfo:
        return cls(**d)

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


@record(frozen=True)
class PagePlan:
    """One page of a job: its input info, output channels, and processing grid."""

    info: PageInfo
    out_channels: int
    grid: PageGrid
    #: the op chain's downsampling factor: the output page is the grid's size // factor
    factor: int = 1
    #: the output page is ONE strip of its pixels, not tiles (:func:`pipeline.core.plan.
    #: strip_page`): its grid is one processing tile, its output one segment, no levels
    strip: bool = False
    #: the output's sample type (the input's unless an op changes it: normalized_difference)
    out_dtype: str = ""
    #: written 1-bit (``output_options.bilevel``): every page of a ``bilevel`` true job, none
    #: of a false one's, and with "auto" a page whose output is black and white
    #: (:func:`pipeline.core.plan.auto_one_bit`); what every step reads
    #: (:func:`pipeline.core.plan.one_bit_pages`, :func:`pipeline.core.plan.page_options`)
    one_bit: bool = False

    @property
    def out_grid(self) -> PageGrid:
        """The processing tiles on the output page: tile (row, col) writes its ``core`` there."""
        return self.grid.scaled(self.factor) if self.factor != 1 else self.grid

    def to_json(self) -> dict[str, Any]:
        return {"info": self.info.to_json(), "out_channels": self.out_channels,
                "grid": field_values(self.grid),
                "factor": self.factor, "strip": self.strip, "out_dtype": self.out_dtype,
                "one_bit": self.one_bit}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PagePlan:
        return cls(PageInfo.from_json(d["info"]), d["out_channels"], PageGrid(**d["grid"]),
                   d.get("factor", 1), bool(d.get("strip", False)),
                   d.get("out_dtype") or d["info"]["dtype"], bool(d.get("one_bit", False)))

    def out_tiles(self, tile: int) -> tuple[int, int]:
        """The rows and columns of the output page's tiles of side ``tile`` (1 x 1: its
        strip)."""
        if self.strip:
            return 1, 1
        out = self.out_grid
        return -(-out.height // tile), -(-out.width // tile)


@record(frozen=True)
class JobPlan:
    """Everything the split, process and merge steps of one job need, stored as plan.json."""

    job: int
    spec: JobSpec
    work: str  # this job's work prefix
    halo: int
    pages: list[PagePlan]
    units: list[SplitUnit]
    batches: list[Batch]  # empty when fused
    started_at: float
    #: each unit is split and processed in one invocation (no work tiles, no batches)
    fused: bool = False
    #: the input's version PlanJob read (storage.version_of: an S3 ETag, a local file's
    #: size and mtime), which every unit reads too ("": not noted)
    input_version: str = ""
    #: what the job's result says besides (the report's ``message``: the pages a job without
    #: ``pages`` left out, pipeline.core.plan.left_out_note; "": nothing)
    note: str = ""
    #: what of it ``tiffpipe run`` says on stderr, short (the report's ``notice``): what the
    #: output lost (pipeline.core.plan.left_out_notice) and the other notes; "": nothing
    notice: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {"job": self.job, "spec": self.spec.to_json(), "work": self.work,
             "halo": self.halo, "pages": [p.to_json() for p in self.pages],
             "units": [u.to_json() for u in self.units],
             "batches": [b.to_json() for b in self.batches], "started_at": self.started_at,
             "fused": self.fused, "input_version": self.input_version}
        if self.note:
            d["note"] = self.note
        if self.notice:
            d["notice"] = self.notice
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobPlan:
        return cls(d["job"], JobSpec.from_json(d["spec"]), d["work"], d["halo"],
                   [PagePlan.from_json(p) for p in d["pages"]],
                   [SplitUnit.from_json(u) for u in d["units"]],
                   [Batch.from_json(b) for b in d["batches"]], d["started_at"],
                   bool(d.get("fused", False)), str(d.get("input_version", "")),
                   str(d.get("note", "")), str(d.get("notice", "")))

    @property
    def tiles(self) -> int:
        return sum(p.grid.count for p in self.pages)

    def units_of(self, page: int) -> list[int]:
        """The indices of page ``page``'s units, in order."""
        return self._by_page[0].get(page, [])

    def batches_of(self, page: int) -> list[int]:
        """The indices of page ``page``'s batches, in order."""
        return self._by_page[1].get(page, [])

    @cached_property
    def _by_page(self) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """Units and batches by page, made once: merge asks for every page, and filtering
        the job's units for each of them cost pages x units (a file of 10,000 pages: 10^8)."""
        units: dict[int, list[int]] = {}
        batches: dict[int, list[int]] = {}
        for n, u in enumerate(self.units):
            units.setdefault(u.page, []).append(n)
        for n, b in enumerate(self.batches):
            batches.setdefault(b.page, []).append(n)
        return units, batches

    @property
    def megapixels(self) -> float:
        """The input pages' megapixels (what the job reads, its pages whole)."""
        return sum(p.info.megapixels for p in self.pages)

    @property
    def output_megapixels(self) -> float:
        """The output pages' megapixels (after a crop, a downsample: fewer), levels left out."""
        return sum(p.out_grid.height * p.out_grid.width for p in self.pages) / 1e6
