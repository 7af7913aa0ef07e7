"""tiffpipe: split giant multi-page TIFFs into tiles, process them in parallel, merge them back.

From Python: ``pipeline.run(manifest)`` runs a manifest (a path, or a dict) on this machine
and returns a :class:`RunResult` (docs/python.md). Those names are imported when first used:
``import pipeline`` (and the command's start) loads nothing else."""

from __future__ import annotations

#: typing.TYPE_CHECKING without typing's import (~2 ms, before the console script's
#: Ctrl-C handling: pipeline/__main__.py); type checkers take any TYPE_CHECKING as true
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pipeline.engine.local import StopRequest
    from pipeline.errors import RunInterrupted
    from pipeline.runner import RunResult, run

__version__ = "0.1.0"
__all__ = ["RunInterrupted", "RunResult", "StopRequest", "run"]

#: the names of the Python entry point, and their modules
_API = {"run": "pipeline.runner", "RunResult": "pipeline.runner",
        "StopRequest": "pipeline.engine.local", "RunInterrupted": "pipeline.errors"}


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
