"""The one conversion every configuration value goes through, and strict YAML reading.

YAML and command-line text such as ``1e-3`` (a string to YAML) becomes the field's number, a
single string where a list is expected becomes a list of one, and NaN, booleans given for
numbers and fractional counts are errors that name the key (``convert_value`` /
``dataclass_from_dict``). ``load_yaml`` refuses a key repeated in one mapping.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_NONE = type(None)
_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


# -- one conversion for every configuration value ------------------------------------------
@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of dataclass ``cls`` (cached)."""
    return typing.get_type_hints(cls)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _number(value: Any, where: str, kind: str) -> float | int:
    """``value`` as a finite int or float (``kind``), from a number or its text."""
    what = "an integer" if kind == "int" else "a number"
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected {what}, got {value} (a boolean)")
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"{where}: expected {what}, got {value!r}") from None
    if not isinstance(number, int | float):
        raise ValueError(f"{where}: expected {what}, got {_show(value)}")
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{where}: expected a finite number, got {_show(value)}")
    if kind == "int":
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueError(f"{where}: expected an integer, got {_show(value)}")
            return int(number)
        return number
    return float(number)


def convert_value(value: Any, hint: Any, where: str, start: Any = dataclasses.MISSING) -> Any:
    """Convert one configuration ``value`` to the field type ``hint`` (``where`` names it).

    ``start`` is the field's default, the starting point of a nested section given as a
    mapping (so a section keeps its defaults when one of its keys is set).
    """
    if hint is Any or hint is object:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if _NONE in args:
                return None
            raise ValueError(f"{where}: a value is required, got null")
        errors = []
        for arg in args:
            if arg is _NONE:
                continue
            try:
                return convert_value(value, arg, where, start)
            except ValueError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ValueError(errors[0])
        kinds = " or ".join(_type_name(a) for a in args if a is not _NONE)
        raise ValueError(f"{where}: expected {kinds}, got {_show(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: must be one of {args}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a section (a mapping of keys), got {_show(value)}")
        base = start if isinstance(start, hint) else None
        return dataclass_from_dict(hint, value, where, base)
    if origin in (list, tuple) or hint in (list, tuple):
        if value is None:
            raise ValueError(f"{where}: expected a list, got null")
        if isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a list, got a mapping {value!r}")
        items = list(value) if isinstance(value, list | tuple) else [value]  # one item: a list
        if args and not (origin is tuple and (len(args) != 2 or args[1] is not Ellipsis)):
            item = args[0]
            items = [convert_value(v, item, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {_show(value)}")
        if len(args) == 2:
            return {k: convert_value(v, args[1], _join(where, str(k))) for k, v in value.items()}
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{where}: expected true or false, got {_show(value)}")
    if hint is int:
        return _number(value, where, "int")
    if hint is float:
        return _number(value, where, "float")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{where}: expected a string, got {_show(value)}")
    return value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (list, tuple) or hint in (list, tuple):
        return "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def dataclass_from_dict(
    cls: type[T], data: Mapping[str, Any] | None, where: str = "", base: T | None = None
) -> T:
    """Build dataclass ``cls`` from a mapping: every value converted to its field's type first.

    Keys missing from ``data`` keep ``base``'s values when ``base`` is given (the parent
    field's default for a nested section), else the class defaults. Unknown keys are an
    error that lists the valid ones.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a mapping of keys, got {_show(data)}")
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            hint = hints[name]
            start = dataclasses.MISSING
            if base is not None:
                start = getattr(base, name)
            elif _section_type(hint) is not None:
                start = _field_default(f)
            kwargs[name] = convert_value(data[name], hint, _join(where, name), start)
        elif base is not None:
            kwargs[name] = copy.deepcopy(getattr(base, name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where or cls.__name__}: {e}") from None


def _section_type(hint: Any) -> type | None:
    """The dataclass inside ``hint`` (``X`` or ``X | None``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def coerce_fields(obj: Any) -> None:
    """Convert every field of dataclass instance ``obj`` in place (for direct construction)."""
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.init:
            setattr(obj, f.name, convert_value(getattr(obj, f.name), hints[f.name], f.name))


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in a YAML file names the same key twice (YAML keeps the last one silently)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice, at lines {first} and {second}")
        self.problem = str(self)
        self.problem_mark = None


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKeyError(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also refuses a key repeated in one mapping (a second
    ``baseline:`` section, ``{epochs: 1, epochs: 3}``): YAML itself keeps the last silently."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_error_line(e: yaml.YAMLError) -> str:
    """A YAML parser error in one line: ``malformed YAML at line L, column C: problem``."""
    if isinstance(e, DuplicateKeyError):
        return str(e)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    return f"malformed YAML{where}: {problem}"
