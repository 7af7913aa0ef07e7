"""Entry point of the process image (``CMD ["app.handler"]``): plan_job, process,
process_unit, process_job, build_levels, stats, reduce_stats and reduce_node
(pipeline.handlers.FUNCTIONS).

Lambda imports this module once per execution environment, in its init phase: it imports
the modules of this function's actions now (pipeline.handlers imports them on first use),
and OpenCV (the op functions import it on first use, so the split and merge images need
not ship it), so their import cost is paid in init, and the image's build-time check proves
they import with what the image holds.
"""

import cv2  # noqa: F401 - see the docstring

from pipeline.handlers import preload
from pipeline.handlers import process_handler as handler

preload("process")

__all__ = ["handler"]
