"""User operations: ``{"op": "custom", "function": "package.module:function", "halo": 8,
"params": {...}}``.

The contract (README, "User operations"): the function is called as
``function(tile, **params)`` with a haloed tile (a writable numpy array, (h, w) or (h, w, c),
of the page's dtype) and returns the processed tile with the SAME shape and dtype; tiffpipe
crops the halo. Its output at a pixel may depend only on the input within ``halo`` pixels
(and never on where the tile lies), or tiled results differ from the whole page.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.errors import CustomOperationError, exhausted, lambda_hint, shortened

#: ``package.module:function`` (dotted module path, a colon, a function name)
SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def spec_problem(spec: Any) -> str | None:
    """Why ``spec`` is not a well-formed ``package.module:function`` (None if it is)."""
    if not isinstance(spec, str) or not SPEC.match(spec):
        return f'expected "package.module:function", got {spec!r}'
    return None


#: where a custom op's module must be, on this machine and in a Lambda function
IMPORT_HINT = "it must be importable in every worker (installed, or on PYTHONPATH)"
LAMBDA_IMPORT_HINT = ("it must be installed in the process image: deploy with your package, "
                      "deploy.py --requirements FILE or --package PATH (docs/aws.md), then "
                      "run the job again")


#: what user code may raise that is its own error: exceptions, and ``sys.exit()`` or a
#: KeyboardInterrupt raised by the code itself (a module that runs a script's main() on
#: import; workers ignore SIGINT, so it cannot be the user's Ctrl-C); not a task's stop
#: (:class:`pipeline.steps.stopping.TaskStopped`)
USER_ERRORS = (Exception, SystemExit, KeyboardInterrupt)


@functools.lru_cache(maxsize=64)
def load(spec: str) -> Callable[..., Any]:
    """Import the function named by ``spec``; CustomOperationError says why it cannot be."""
    why = spec_problem(spec)
    if why:
        raise CustomOperationError(f"custom op: {why}")
    module_name, name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except USER_ERRORS as exc:  # ImportError, any error the module raises, a script's exit
        raise CustomOperationError(
            f"custom op {spec}: cannot import module {module_name!r} ({_raised(exc, 1000)}); "
            f"{lambda_hint(IMPORT_HINT, LAMBDA_IMPORT_HINT)}") from exc
    func = getattr(module, name, None)
    if not callable(func):
        raise CustomOperationError(f"custom op {spec}: module {module_name!r} has no function "
                                   f"{name!r}")
    return func  # type: ignore[no-any-return]


def _raised(exc: BaseException, most: int) -> str:
    """``Type: message`` of what user code raised (``Type`` alone without a message), the
    message cut to ``most`` characters."""
    message = str(exc)
    return (f"{type(exc).__name__}: {shortened(message, most)}" if message
            else type(exc).__name__)


def call(spec: str, tile: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Run the user function on a tile and check what it returns. What it raises is a
    CustomOperationError, but a MemoryError: an OutOfMemoryError, with the advice of any
    task out of memory (a smaller ``tile``, fewer workers, more memory)."""
    func = load(spec)
    if not tile.flags.writeable:
        tile = tile.copy()
    shape, dtype = tile.shape, tile.dtype
    try:
        out = func(tile, **params)
    except MemoryError as exc:  # the tile too large for what it allocates: not broken code
        raise exhausted(exc, f"custom op {spec} on a {shape} {dtype} tile") from exc
    except USER_ERRORS as exc:
        raise CustomOperationError(f"custom op {spec} raised {_raised(exc, 1000)} (on a "
                                   f"{shape} {dtype} tile)") from exc
    if not isinstance(out, np.ndarray):
        raise CustomOperationError(f"custom op {spec} returned {type(out).__name__}, expected "
                                   f"a numpy array of shape {shape} and dtype {dtype}")
    if out.shape != shape or out.dtype.newbyteorder("=") != dtype.newbyteorder("="):
        raise CustomOperationError(
            f"custom op {spec} returned an array of shape {out.shape} and dtype {out.dtype} "
            f"for a tile of shape {shape} and dtype {dtype}; it must return the same shape "
            "and dtype")
    if out.dtype != dtype:  # the right values in another byte order (``>u2``): native
        out = out.astype(dtype)  # (checked first: an array refused is not copied)
    return out
