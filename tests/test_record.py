"""``@record``: dataclasses whose methods are shared functions, behaving as generated ones."""

from __future__ import annotations

import builtins
import copy
import dataclasses
import inspect
import pickle
import re
import sys

import pytest

from pipeline.core.record import field_values, record


@record
class Plain:
    """A mutable record with a default and a default factory."""

    name: str
    count: int = 2
    tags: list[str] = dataclasses.field(default_factory=list)


@record(frozen=True)
class Frozen:
    """A frozen record."""

    x: int
    y: str = "a"


@record
class Checked:
    """A record with a __post_init__."""

    value: int
    seen: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("value must be >= 0")
        self.seen.append(self.value)


def test_positional_keyword_defaults_and_factories_as_a_dataclass():
    a = Plain("a")
    assert (a.name, a.count, a.tags) == ("a", 2, [])
    b = Plain("b", 5, tags=["t"])
    assert (b.name, b.count, b.tags) == ("b", 5, ["t"])
    assert Plain(name="c", count=1).count == 1
    assert Plain("x").tags is not Plain("y").tags  # a new list each time
    assert [f.name for f in dataclasses.fields(Plain)] == ["name", "count", "tags"]
    assert dataclasses.is_dataclass(Plain)
    assert dataclasses.asdict(b) == {"name": "b", "count": 5, "tags": ["t"]}
    assert dataclasses.replace(b, count=9) == Plain("b", 9, ["t"])


def test_field_values_are_the_fields_own_values_in_order():
    """``field_values``: asdict without the deep copy, for records and other dataclasses."""
    tags = ["t"]
    value = field_values(Plain("a", 3, tags))
    assert value == {"name": "a", "count": 3, "tags": ["t"]} and value["tags"] is tags
    assert list(field_values(Frozen(1))) == ["x", "y"]

    @dataclasses.dataclass
    class Other:
        a: int
        b: int = 2

    assert field_values(Other(1)) == dataclasses.asdict(Other(1))


def test_wrong_arguments_are_type_errors_naming_them():
    with pytest.raises(TypeError, match="missing 1 required argument"):
        Plain()
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        Plain("a", colour="red")
    with pytest.raises(TypeError, match="multiple values for argument 'name'"):
        Plain("a", name="b")
    with pytest.raises(TypeError, match="takes 4 positional arguments but 5 were given"):
        Plain("a", 1, [], 4)


def test_equality_repr_and_hash():
    assert Plain("a", 1) == Plain("a", 1)
    assert Plain("a", 1) != Plain("a", 2)
    assert Plain("a") != Frozen(1)  # other classes are never equal
    assert repr(Plain("a", 1, ["t"])) == "Plain(name='a', count=1, tags=['t'])"
    with pytest.raises(TypeError, match="unhashable"):
        hash(Plain("a"))
    assert hash(Frozen(1, "b")) == hash(Frozen(1, "b"))
    assert len({Frozen(1), Frozen(1), Frozen(2)}) == 2


def test_frozen_refuses_assignment_and_deletion():
    f = Frozen(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del f.y  # type: ignore[misc]
    assert f == Frozen(1, "a")


def test_post_init_runs_after_the_fields_are_set():
    assert Checked(3).seen == [3]
    with pytest.raises(ValueError, match=">= 0"):
        Checked(-1)


def test_copies_and_pickles():
    for value in (Plain("a", 3, ["t"]), Frozen(4, "z")):
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value


def _methods_compiled(sources: list[str]) -> list[str]:
    """The functions that the sources dataclass compiled define, less Python 3.13's
    ``__create_fn__``: 3.13 compiles one such wrapper for every class, even one with no
    method to generate (3.11 and 3.12 compile nothing then)."""
    names = [name for text in sources for name in re.findall(r"\bdef (\w+)\(", text)]
    return [name for name in names if name != "__create_fn__"]


def test_nothing_is_compiled_when_a_record_class_is_made(monkeypatch):
    """The point of @record: dataclass compiles no method's source (its calls of exec, seen
    through the module's name exec: every Python's, where the private function that wraps
    it changed in 3.13), and inspect.signature is not called for a class with a docstring
    (only a class without one asks it for one, as dataclass does)."""
    made, signatures = [], []
    compile_and_run = builtins.exec
    monkeypatch.setattr(dataclasses, "exec", raising=False,
                        value=lambda text, *a: made.append(text) or compile_and_run(text, *a))
    signature = inspect.signature
    monkeypatch.setattr(inspect, "signature",
                        lambda *a, **k: signatures.append(a[0]) or signature(*a, **k))

    @record(frozen=True)
    class Point:
        """A point."""

        x: int
        y: int = 0

    assert Point(1) == Point(1, 0) and _methods_compiled(made) == [] and signatures == []

    @record
    class Bare:
        x: int

    assert signatures == [Bare] and _methods_compiled(made) == []
    if sys.version_info < (3, 13):
        assert made == []
    else:
        assert len(made) == 2, made  # the two classes' empty __create_fn__

    @dataclasses.dataclass
    class Generated:
        x: int

    assert "__init__" in _methods_compiled(made)  # what a dataclass compiles is seen


def test_the_models_a_run_imports_are_records():
    """The models every command imports are records (their dataclass methods would be
    compiled at every start), and each has its own docstring (else dataclass asks
    inspect.signature for one)."""
    from pipeline import runner
    from pipeline.core import constants, events, grid, manifest, models, ops, tiff_layout
    from pipeline.engine import local, workers

    classes = [c for mod in (runner, constants, events, grid, manifest, models, ops,
                             tiff_layout, local, workers)
               for c in vars(mod).values()
               if isinstance(c, type) and dataclasses.is_dataclass(c)
               and c.__module__ == mod.__name__]
    assert len(classes) >= 38
    for cls in classes:
        assert hasattr(cls, "__record_spec__"), cls
        assert cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("), cls
