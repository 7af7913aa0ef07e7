"""Files a thread keeps open between its tasks, one per thread (see
:func:`pipeline.adapters.tiff_read.kept_tiff`), files handed over from one task to the next
(PlanJob's open input to its job's unit, which may run in another thread of the process: at
most :data:`HANDED_MAX`, the oldest closed first), and closing them all when a run ends.

A thread that runs the units of one input one after another (a file of many small pages:
one unit a page) would otherwise open the file and parse its first IFD for every unit.
Each thread has its own entry, so no open file is shared between threads. This module
imports nothing heavy: the engine closes the files without importing the TIFF readers.
"""

from __future__ import annotations

import atexit
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

_lock = threading.Lock()
#: thread ident -> (key, the open object, its closer)
_kept: dict[int, tuple[Hashable, Any, Callable[[], None]]] = {}
#: key -> (the open object, its closer): handed over, not in use (oldest first)
_handed: OrderedDict[Hashable, tuple[Any, Callable[[], None]]] = OrderedDict()
#: objects handed over at most (a unit that runs in another process never takes its own)
HANDED_MAX = 8


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


def hand_over(key: Hashable, value: Any, close: Callable[[], None]) -> None:
    """Leave ``value`` (no longer used by this thread) for the next task that asks for
    ``key`` in any thread (:func:`take_handed`); closes the oldest beyond
    :data:`HANDED_MAX`, and one handed over before under the same key."""
    closing = []
    with _lock:
        old = _handed.pop(key, None)
        if old is not None:
            closing.append(old[1])
        _handed[key] = (value, close)
        while len(_handed) > HANDED_MAX:
            closing.append(_handed.popitem(last=False)[1][1])
    for close_one in closing:
        close_one()


def take_handed(key: Hashable) -> tuple[Any, Callable[[], None]] | None:
    """The object handed over under ``key`` and its closer, now the caller's; else None."""
    with _lock:
        return _handed.pop(key, None)


def drop() -> None:
    """Close and forget this thread's kept object (after a failure while it was in use)."""
    with _lock:
        old = _kept.pop(threading.get_ident(), None)
    if old is not None:
        old[2]()


def close_all() -> None:
    """Close every thread's kept object: when a run ends (its threads have ended or wait)."""
    with _lock:
        closers = [close for _, _, close in _kept.values()]
        closers += [close for _, close in _handed.values()]
        _kept.clear()
        _handed.clear()
    for close in closers:
        close()


atexit.register(close_all)  # a process that ran steps without an engine (a test, a handler)


def count() -> int:
    """How many objects are kept (all threads) or handed over."""
    with _lock:
        return len(_kept) + len(_handed)
