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

Creating an instance takes up to twice as long as with a dataclass's generated
``__init__`` (about 2 us against 1.3): nothing next to a tile's work (a page's tiles make a
few :class:`pipeline.core.grid.Rect` each), but not for objects made per pixel row. The
fields are set one by one, in order, as the generated ``__init__`` does: updating the
instance's ``__dict__`` at once would make every later read of them slower.

A class that has no docstring gets one from ``inspect.signature`` (as ``@dataclass`` does),
which costs as much as the methods: every ``@record`` class has a docstring.

On Python 3.13 and newer, ``@dataclass`` compiles one wrapper function for every class, even
one with no method to generate: a ``@record`` class then costs about 55 us to make instead of
35 (a dataclass's, 300-600 us), still with no method compiled (tests/test_record.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

_SPEC = "__record_spec__"  # see _spec_of
_set = object.__setattr__


@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T] | None = None, /, *, frozen: bool = False
           ) -> type[T] | Callable[[type[T]], type[T]]:
    """``@record`` or ``@record(frozen=True)``: see the module's docstring."""

    def wrap(cls: type[T]) -> type[T]:
        cls = dataclasses.dataclass(init=False, repr=False, eq=False)(cls)
        setattr(cls, _SPEC, _spec_of(cls))
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


def _spec_of(cls: type) -> tuple[tuple[str, ...], frozenset[str], dict[str, Any],
                                 tuple[tuple[str, Callable[[], Any]], ...], bool]:
    """What :func:`_init` needs of a record class, worked out once: its field names in
    order (and as a set), the plain defaults, the default factories, and whether it has a
    ``__post_init__``."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return (tuple(f.name for f in fields), frozenset(f.name for f in fields),
            {f.name: f.default for f in fields if f.default is not dataclasses.MISSING},
            tuple((f.name, f.default_factory) for f in fields
                  if f.default_factory is not dataclasses.MISSING),
            hasattr(cls, "__post_init__"))


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names, known, defaults, factories, post_init = getattr(cls, _SPEC)
    if len(args) == len(names) and not kwargs:  # every field, in order (Rect(y0, x0, y1, x1))
        for name, value in zip(names, args, strict=False):  # as many of each
            _set(self, name, value)
        if post_init:
            self.__post_init__()
        return
    if args:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}.__init__() takes {len(names) + 1} positional "
                            f"arguments but {len(args) + 1} were given")
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}.__init__() got multiple values for "
                                f"argument '{name}'")
            kwargs[name] = value
    values = {**defaults, **kwargs}
    for name, factory in factories:
        if name not in values:
            values[name] = factory()
    if len(values) != len(names) or not values.keys() <= known:
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            raise TypeError(f"{cls.__name__}.__init__() got an unexpected keyword argument "
                            f"'{unknown[0]}'")
        missing = [n for n in names if n not in values]
        raise TypeError(f"{cls.__name__}.__init__() missing {len(missing)} required "
                        f"argument(s): {', '.join(repr(n) for n in missing)}")
    for name in names:  # in field order, past a frozen __setattr__, as dataclass's __init__
        _set(self, name, values[name])  # (not __dict__.update: reads would be ~2x slower)
    if post_init:
        self.__post_init__()


def field_values(model: Any) -> dict[str, Any]:
    """A dataclass instance's fields and their own values, in field order: ``asdict`` without
    its deep copy of every value (to_json and payloads of JSON-shaped models). A record's
    names come from its spec, others' from ``dataclasses.fields``."""
    spec = getattr(type(model), _SPEC, None)
    names = spec[0] if spec is not None else [f.name for f in dataclasses.fields(model)]
    return {name: getattr(model, name) for name in names}


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in getattr(type(self), _SPEC)[0])


def _repr(self: Any) -> str:
    cls = type(self)
    parts = ", ".join(f"{name}={getattr(self, name)!r}" for name in getattr(cls, _SPEC)[0])
    return f"{cls.__qualname__}({parts})"


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _refuse(self: Any, name: str, *_: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
