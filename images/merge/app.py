"""Entry point of the merge image (``CMD ["app.handler"]``): merge, record_failure and report.

Lambda imports this module once per execution environment, in its init phase: it imports
the modules of this function's actions now (pipeline.handlers imports them on first use),
so their import cost is paid in init, and the image's build-time check proves they import
with what the image holds.
"""

from pipeline.handlers import merge_handler as handler
from pipeline.handlers import preload

preload("merge")

__all__ = ["handler"]
