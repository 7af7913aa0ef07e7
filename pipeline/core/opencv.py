"""OpenCV, imported on first use.

The split and merge images carry no OpenCV, yet PlanRun (split) imports the op registry for
the ops' parameters and halos. Modules that call OpenCV write ``from pipeline.core.opencv
import cv2`` and use ``cv2.X`` as usual: the real module is imported by the first call.
What OpenCV decides that tiffpipe's plans depend on is here too: a Gaussian kernel's radius
(:func:`gaussian_radius`, the halo of the blurs and of Canny's smoothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class _OpenCV:
    def __getattr__(self, name: str) -> Any:
        import cv2 as module

        return getattr(module, name)


cv2: Any = _OpenCV()


def gaussian_radius(sigma: float, dtype: np.dtype) -> int:
    """Radius of ``cv2.GaussianBlur(img, (0, 0), sigma)``: OpenCV picks the kernel size
    ``round(sigma * (3 if uint8 else 4) * 2 + 1) | 1`` (createGaussianKernels; types computed
    through float64 get the float kernel, 4, as every type but uint8)."""
    factor = 3 if np.dtype(dtype) == np.uint8 else 4
    ksize = round(sigma * factor * 2 + 1) | 1  # Python's round, like cvRound, is half-to-even
    return ksize // 2
