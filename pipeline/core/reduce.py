"""The rounded mean of 2 x 2 blocks for the integer types whose sum of four overflows every
wider numpy type (64-bit): what pyramid levels of int64 and uint64 pages are made of.
Pure module: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np


def mean4(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``(a + b + c + d + 2) // 4`` (floor division, as for the narrower integer types),
    exact in the arrays' own 64-bit type: each value is ``4 * (v // 4) + v % 4`` with
    ``v % 4`` in 0..3, so the sum is ``4 * q + r`` and the mean ``q + (r + 2) // 4``, where
    neither ``q`` (the sum of the quarters) nor the result can overflow."""
    four = a.dtype.type(4)
    q = a // four + b // four + c // four + d // four
    r = a % four + b % four + c % four + d % four
    return q + (r + a.dtype.type(2)) // four
