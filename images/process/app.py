"""Entry point of the process image (``CMD ["app.handler"]``): process, stats and reduce_stats.

Lambda imports this module once per execution environment, in its init phase: it imports
the modules of this function's actions now (pipeline.handlers imports them on first use),
and OpenCV (the op functions import it on first use, so the split and merge images need
not ship it), so their import cost is paid in init, and the image's build-time check proves
they import with what the image holds.
"""

import importlib

import cv2  # noqa: F401 - see the docstring

from pipeline.handlers import FUNCTIONS
from pipeline.handlers import process_handler as handler

for _event, _target in FUNCTIONS["process"].values():
    importlib.import_module(_target.partition(":")[0])

__all__ = ["handler"]
