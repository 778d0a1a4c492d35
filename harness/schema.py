"""Typed, validated dataclasses built from plain YAML mappings.

Hyper-parameters are declared as dataclass fields with :func:`param`, which records
ranges and choices next to the default. :func:`build` turns a mapping into an instance,
checking unknown keys (with a did-you-mean hint), types and ranges, and raises
:class:`SchemaError` naming the dotted key path at fault.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from harness.errors import HarnessError
from harness.registry import suggest

D = TypeVar("D")

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class SchemaError(HarnessError):
    """A value that does not fit the schema; ``path`` is the dotted key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def param(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    doc: str = "",
    key_at_default: bool = True,
) -> Any:
    """A dataclass field with its allowed range (``ge``/``gt``/``le``/``lt``) or ``choices``.

    ``key_at_default=False`` marks a switch added after results were stored:
    ``to_plain(..., for_key=True)`` leaves it out while it holds its default, so existing run keys stay valid.
    """
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}
    metadata = {k: v for k, v in bounds.items() if v is not None}
    if not key_at_default:
        metadata["key_at_default"] = False
    return dataclasses.field(default=default, metadata=metadata)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def as_float(value: Any, path: str) -> float:
    """Numbers, numeric strings (YAML reads ``5e-4`` as a string) and fractions ``8/255``."""
    if isinstance(value, bool):
        raise SchemaError(path, f"expected a number, got {_describe(value)}")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        result = float(value)
    elif isinstance(value, str) and value.count("/") == 1:
        top, bottom = (part.strip() for part in value.split("/"))
        if not (_FLOAT_TEXT.match(top) and _FLOAT_TEXT.match(bottom)) or float(bottom) == 0:
            raise SchemaError(path, f"expected a number, got {_describe(value)}")
        result = float(top) / float(bottom)
    else:
        raise SchemaError(path, f"expected a number, got {_describe(value)}")
    if not math.isfinite(result):
        raise SchemaError(path, f"expected a finite number, got {value!r}")
    return result


def coerce(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against the type ``hint`` and return it in canonical form."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        non_null = [option for option in options if option is not type(None)]
        errors = []
        for option in non_null:
            try:
                return coerce(value, option, path)
            except SchemaError as error:
                errors.append(error.message)
        raise SchemaError(path, errors[0] if len(errors) == 1 else " or ".join(errors))
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise SchemaError(
                path, f"must be one of {', '.join(map(str, allowed))}, got {value!r}{suggest(value, [str(a) for a in allowed])}"
            )
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(path, f"expected a list, got {_describe(value)}")
        (item_hint, *rest) = typing.get_args(hint) or (Any,)
        return tuple(coerce(item, item_hint, f"{path}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if value is None:  # `schedule: null` would silently mean every default (220 epochs)
            raise SchemaError(path, f"is null: leave the key out for its defaults ({_defaults_text(hint)}) "
                                    "or give a mapping")
        return build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise SchemaError(path, f"expected an integer, got {_describe(value)}")
        return int(value)
    if hint is float:
        return as_float(value, path)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {_describe(value)}")
        return value
    if hint is Any:
        return value
    raise TypeError(f"unsupported schema type {hint!r} at {path}")


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        choices = [str(c) for c in meta["choices"]]
        raise SchemaError(path, f"must be one of {', '.join(choices)}, got {value!r}{suggest(value, choices)}")
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        for op, test, word in (
            ("ge", lambda a, b: a >= b, ">="),
            ("gt", lambda a, b: a > b, ">"),
            ("le", lambda a, b: a <= b, "<="),
            ("lt", lambda a, b: a < b, "<"),
        ):
            if op in meta and not test(number, meta[op]):
                raise SchemaError(path, f"must be {word} {meta[op]}, got {number!r}")


def _defaults_text(cls: type, shown: int = 4) -> str:
    defaults = [f"{f.name} {f.default}" for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]
    return ", ".join(defaults[:shown]) + (", …" if len(defaults) > shown else "")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build(cls: type[D], data: Any, path: str = "", *, base: D | None = None) -> D:
    """Instance of dataclass ``cls`` from mapping ``data`` (missing keys from ``base`` or defaults).

    ``__post_init__`` may raise ``ValueError("field: message")`` for cross-field rules.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SchemaError(path, f"expected a mapping, got {_describe(data)}")
    names = field_names(cls)
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise SchemaError(where, f"unknown key{suggest(str(key), names)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            value = coerce(data[f.name], hints[f.name], where)
        elif base is not None:
            value = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise SchemaError(where, "is required")
        _check_bounds(value, f.metadata, where)
        values[f.name] = value
    try:
        return cls(**values)
    except ValueError as error:
        field, _, message = str(error).partition(": ")
        where = f"{path}.{field}" if path and message else (path or field)
        raise SchemaError(where, message or str(error)) from None


def to_plain(obj: Any, *, for_key: bool = False) -> Any:
    """JSON-ready form of a (nested) dataclass: dicts, lists, numbers, strings.

    ``for_key``: the run-key view, without the ``key_at_default=False`` fields at their default.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name), for_key=for_key) for f in dataclasses.fields(obj)
                if not for_key or f.metadata.get("key_at_default", True) or getattr(obj, f.name) != f.default}
    if isinstance(obj, (list, tuple)):
        return [to_plain(item, for_key=for_key) for item in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v, for_key=for_key) for k, v in obj.items()}
    return obj
