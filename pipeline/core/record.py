"""``@record``: a dataclass whose methods are shared, not generated.

``@dataclass`` writes the source of each class's ``__init__``, ``__repr__`` and ``__eq__``
(a frozen one's ``__setattr__``, ``__delattr__`` and ``__hash__`` too) and compiles it when
the class is created, that is when its module is imported: about half a millisecond a
class, paid by every command for the dozens of models it imports. A ``@record`` class is a
real dataclass (``dataclasses.fields``, ``replace``, ``asdict`` and ``is_dataclass`` work,
type checkers see the generated ``__init__``), created with nothing generated; these
functions, written once, read its fields instead. They behave as the generated ones do:
positional or keyword arguments in field order, defaults and default factories,
``__post_init__``, equality between instances of the same class, and for ``frozen=True``
no assignment after ``__init__`` and a hash of the fields.

Creating an instance costs a few microseconds more than a dataclass's: use it for models
made a few times a task (payloads, plans, options), not for objects made per pixel row or
per tile in a loop (:class:`pipeline.core.grid.Rect` stays a dataclass).

A class that has no docstring gets one from ``inspect.signature`` (as ``@dataclass`` does),
which costs as much as the methods: every ``@record`` class has a docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

_FIELDS = "__record_fields__"  # (name, default, default factory) of each field, in order
_FROZEN = "__record_frozen__"


@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T] | None = None, /, *, frozen: bool = False
           ) -> type[T] | Callable[[type[T]], type[T]]:
    """``@record`` or ``@record(frozen=True)``: see the module's docstring."""

    def wrap(cls: type[T]) -> type[T]:
        cls = dataclasses.dataclass(init=False, repr=False, eq=False)(cls)
        setattr(cls, _FIELDS, tuple((f.name, f.default, f.default_factory)
                                    for f in dataclasses.fields(cls)))  # type: ignore[arg-type]
        setattr(cls, _FROZEN, frozen)
        cls.__init__ = _init  # type: ignore[misc]
        cls.__repr__ = _repr  # type: ignore[assignment]
        cls.__eq__ = _eq  # type: ignore[assignment]
        if frozen:
            cls.__setattr__ = _refuse  # type: ignore[assignment]
            cls.__delattr__ = _refuse  # type: ignore[assignment]
            cls.__hash__ = _hash  # type: ignore[assignment]
        else:
            cls.__hash__ = None  # type: ignore[assignment]  # as a dataclass with eq: unhashable
        return cls

    return wrap if cls is None else wrap(cls)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    fields = getattr(cls, _FIELDS)
    if len(args) > len(fields):
        raise TypeError(f"{cls.__name__}.__init__() takes {len(fields) + 1} positional "
                        f"arguments but {len(args) + 1} were given")
    for (name, _, _), value in zip(fields, args, strict=False):
        if name in kwargs:
            raise TypeError(f"{cls.__name__}.__init__() got multiple values for argument "
                            f"'{name}'")
        object.__setattr__(self, name, value)
    missing = []
    for name, default, factory in fields[len(args):]:
        if name in kwargs:
            value = kwargs.pop(name)
        elif default is not dataclasses.MISSING:
            value = default
        elif factory is not dataclasses.MISSING:
            value = factory()
        else:
            missing.append(name)
            continue
        object.__setattr__(self, name, value)
    if kwargs:
        raise TypeError(f"{cls.__name__}.__init__() got an unexpected keyword argument "
                        f"'{next(iter(kwargs))}'")
    if missing:
        raise TypeError(f"{cls.__name__}.__init__() missing {len(missing)} required "
                        f"argument(s): {', '.join(repr(n) for n in missing)}")
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name, _, _ in getattr(type(self), _FIELDS))


def _repr(self: Any) -> str:
    cls = type(self)
    parts = ", ".join(f"{name}={getattr(self, name)!r}" for name, _, _ in getattr(cls, _FIELDS))
    return f"{cls.__qualname__}({parts})"


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _refuse(self: Any, name: str, *_: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
