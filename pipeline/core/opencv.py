"""OpenCV, imported on first use.

The split and merge images carry no OpenCV, yet PlanJob (split) imports the op registry for
the ops' parameters and halos. Modules that call OpenCV write ``from pipeline.core.opencv
import cv2`` and use ``cv2.X`` as usual: the real module is imported by the first call.
"""

from __future__ import annotations

from typing import Any


class _OpenCV:
    def __getattr__(self, name: str) -> Any:
        import cv2 as module

        return getattr(module, name)


cv2: Any = _OpenCV()
