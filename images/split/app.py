"""Entry point of the split image (``CMD ["app.handler"]``): plan_run and split.

Lambda imports this module once per execution environment, in its init phase: it imports
the modules of this function's actions now (pipeline.handlers imports them on first use),
so their import cost is paid in init, and the image's build-time check proves they import
with what the image holds.
"""

from pipeline.handlers import preload
from pipeline.handlers import split_handler as handler

preload("split")

__all__ = ["handler"]
