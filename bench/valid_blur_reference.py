"""The full-tile blur of the valid samples that the blockwise ``_valid_blur``
(``pipeline/core/op_functions.py``) replaced: the reference ``tests/test_valid_blur_blocks.py``
checks it against, bit for bit, and the "old" that ``bench/valid_blur.py`` times it against.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.core import dtypes
from pipeline.core import op_functions as fn
from pipeline.core.opencv import gaussian_radius


def full_tile_valid_blur(x: np.ndarray, sigma: float, valid: np.ndarray) -> np.ndarray:
    """``_valid_blur`` as it was: both sums blurred over the whole tile in float64."""
    k = 2 * gaussian_radius(sigma, x.dtype) + 1
    out = fn._blur(x, sigma)
    whole = fn._per_channel(lambda a: cv2.erode(a, fn.kernel(k)), valid.astype(np.uint8))
    near = valid & (whole == 0)
    sums = fn._per_channel(lambda a: cv2.GaussianBlur(a, (k, k), sigma),
                           np.where(valid, x.astype(np.float64), 0.0))
    norms = fn._per_channel(lambda a: cv2.GaussianBlur(a, (k, k), sigma),
                            valid.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[near] = dtypes.saturate(sums[near] / norms[near], x.dtype)
    return out
