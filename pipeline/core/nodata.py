"""A page's no-data value as GDAL reads it: the GDAL_NODATA tag its plan carries
(``PageInfo.metadata``, read by pipeline.adapters.metadata), through the op chain. Pure, so
that planning (``bilevel`` "auto", :func:`pipeline.core.plan.auto_one_bit`) and the steps
(merge's tags, the pyramid levels, the whole-page ops) take one value."""

from __future__ import annotations

import binascii
from typing import Any

import numpy as np

#: GDAL's no-data value (ASCII): kept only through ops that do not remap values
GDAL_NODATA = 42113


def output_nodata(info: Any, keeps_values: bool, own: float | None = None) -> float | None:
    """The no-data value of the output page of ``info`` (a PageInfo) whose op chain keeps
    values or the no-data pixels (``keeps_values``: :func:`pipeline.core.ops.
    chain_keeps_nodata`), as GDAL reads its GDAL_NODATA tag: a number of the page's
    type (NaN for floats too), or None (no tag, the chain drops it, or a text that is no
    number of that type, which marks no pixel); ``own``, the chain's own no-data value, when
    it has one. Pyramid levels leave these pixels out of their means
    (``pipeline.steps.pyramid.reduce2``), as GDAL's overviews do. A palette page read as
    indices (its chain keeps them: :func:`pipeline.core.ops.chain_keeps_indices`) has its
    GDAL_NODATA, an index, as any gray page: a downsample by mode or min and the levels
    leave that index out; one made RGB through its colormap has none (the reader dropped
    its tag: :func:`pipeline.adapters.metadata.convert_nodata`)."""
    if own is not None:
        return own
    if not keeps_values:
        return None
    for code, kind, _count, value in (info.metadata or {}).get("tags", []):
        if code == GDAL_NODATA and kind == 2:
            return nodata_number(value, np.dtype(info.dtype))
    return None


def nodata_at(info: Any, ops: list[dict[str, Any]], i: int | None = None) -> float | None:
    """The no-data value of the pixels op ``i`` of a chain (its JSON) gets on the page of
    ``info`` (a PageInfo), or None: :func:`output_nodata` of the ops before it (``i`` None:
    of the whole chain, the output's, which its GDAL_NODATA tag carries)."""
    from pipeline.core.ops import chain_keeps_nodata, chain_own_nodata

    before = ops[:i]
    return output_nodata(info, chain_keeps_nodata(before), chain_own_nodata(before))


#: the op that lets a 1-bit page hold a chain's no-data pixels (:func:`unheld_nodata`), and
#: what it does to them: said by ``bilevel`` true's refusal and "auto"'s note alike
BITS_FIX = ('end the ops with {"op": "threshold", "value": 127}',
            "the no-data pixels are then thresholded as data and GDAL_NODATA is dropped")


def unheld_nodata(info: Any, ops: list[dict[str, Any]]) -> float | None:
    """The no-data value the output page of ``info`` keeps (:func:`nodata_at`) when a 1-bit
    page cannot hold it (neither 0 nor 255: ``bilevel`` true refuses the page, "auto"
    writes it 8-bit), else None."""
    nodata = nodata_at(info, ops)
    return None if nodata is None or nodata in (0, 255) else nodata


def nodata_number(value: str, dtype: np.dtype) -> float | None:
    """The number a GDAL_NODATA tag's text (``value``, base64) says for samples of ``dtype``
    (NaN for floats too), or None: no number, or none such a sample can hold."""
    data = binascii.a2b_base64(value.encode("ascii"))
    text = data.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
    try:
        number = float(text.replace(",", "."))  # (a decimal comma, as tifffile reads it)
    except ValueError:
        return None
    if dtype.kind == "f":
        return number
    if not number.is_integer():
        return None
    limits = np.iinfo(dtype)
    return int(number) if limits.min <= number <= limits.max else None
