"""Files a thread keeps open between its tasks, one per thread (see
:func:`pipeline.adapters.tiff_read.kept_tiff`), and closing them all when a run ends.

A thread that runs the units of one input one after another (a file of many small pages:
one unit a page) would otherwise open the file and parse its first IFD for every unit.
Each thread has its own entry, so no open file is shared between threads. This module
imports nothing heavy: the engine closes the files without importing the TIFF readers.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Hashable
from typing import Any

_lock = threading.Lock()
#: thread ident -> (key, the open object, its closer)
_kept: dict[int, tuple[Hashable, Any, Callable[[], None]]] = {}


def take(key: Hashable) -> Any | None:
    """This thread's kept object if it was kept under ``key``, else None."""
    with _lock:
        entry = _kept.get(threading.get_ident())
    return entry[1] if entry is not None and entry[0] == key else None


def keep(key: Hashable, value: Any, close: Callable[[], None]) -> None:
    """Keep ``value`` for this thread under ``key``; the one it kept before is closed."""
    drop()
    with _lock:
        _kept[threading.get_ident()] = (key, value, close)


def drop() -> None:
    """Close and forget this thread's kept object (after a failure while it was in use)."""
    with _lock:
        old = _kept.pop(threading.get_ident(), None)
    if old is not None:
        old[2]()


def close_all() -> None:
    """Close every thread's kept object: when a run ends (its threads have ended or wait)."""
    with _lock:
        entries = list(_kept.values())
        _kept.clear()
    for _, _, close in entries:
        close()


atexit.register(close_all)  # a process that ran steps without an engine (a test, a handler)


def count() -> int:
    """How many objects are kept (all threads)."""
    with _lock:
        return len(_kept)
