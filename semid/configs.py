"""Typed configs: build a config dataclass from a dict (a ``config.json`` or ``--model-config``)
with every field checked, so a wrong name or type is one line naming the field, not a traceback."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import types
import typing
from typing import Any, TypeVar

from semid.errors import SemidError
from semid.json_values import is_integer
from semid.wording import did_you_mean

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """``cls(**data)`` after checking that every key is a field of ``cls`` and every value has the
    field's type; ``where`` names the source in errors (e.g. ``--model-config`` or a file)."""
    if not isinstance(data, dict):
        raise SemidError(f"{where} must be a JSON object of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise SemidError(
            f"{where}: unknown field {unknown[0]!r}{did_you_mean(unknown[0], fields)} for "
            f"{cls.__name__}; known: {', '.join(sorted(fields))}"
        )
    values = {}
    for name, value in data.items():
        values[name] = _checked(value, hints[name], f"{where}: field {name!r}")
    check_limits(cls, values, where)
    try:
        return cls(**values)
    except TypeError as e:  # a required field is missing
        raise SemidError(f"{where}: {e}") from None


# the rules a config class may name in its LIMITS (field -> rule): values a model can be built with
RULES = {
    "count": (lambda v: v >= 1, "must be >= 1"),
    "non-negative": (lambda v: v >= 0, "must be >= 0"),
    "positive": (lambda v: v > 0, "must be > 0"),
    "probability": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def check_limits(cls: type, values: dict[str, Any], where: str) -> None:
    """SemidError naming the first field of ``values`` outside its rule in ``cls.LIMITS``, or a
    width not divisible by the head count of ``cls.DIVIDES`` (``(width, heads)``: fields of which
    the missing one takes its default), so a bad ``--model-config`` is one line, not a traceback
    from deep inside torch."""
    for name, rule in getattr(cls, "LIMITS", {}).items():
        value = values.get(name)
        ok, must = RULES[rule]
        if value is not None and not ok(value):
            raise SemidError(f"{where}: field {name!r} {must}, got {value!r}")
    divides = getattr(cls, "DIVIDES", None)
    if divides is not None and set(divides) & set(values):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        width, heads = (values.get(name, defaults[name]) for name in divides)
        if heads >= 1 and width % heads:
            raise SemidError(f"{where}: {divides[0]} {width} must be divisible by {divides[1]} "
                             f"{heads} (each head gets {divides[0]} / {divides[1]} dimensions)")  # fmt: skip


def parse_json_object(text: str, flag: str) -> dict[str, Any]:
    """A command-line JSON object such as ``--model-config '{"dim": 64}'``, or a one-line error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        looks_like_a_file = text.strip().lower().endswith(".json")
        fix = (f"it takes the JSON itself, not a file: {flag} \"$(cat {shlex.quote(text.strip())})\""
               if looks_like_a_file else "pass e.g. '{\"dim\": 64}'")  # fmt: skip
        raise SemidError(f"{flag} is not valid JSON ({e.msg}); {fix}") from None
    if not isinstance(value, dict):
        raise SemidError(f"{flag} must be a JSON object, e.g. '{{\"dim\": 64}}'")
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON-ready fields of a config dataclass."""
    return dataclasses.asdict(config)


def _checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it fits the annotation ``hint`` (ints are accepted for floats), else SemidError."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _checked(value, option, where)
            except SemidError as e:
                errors.append(str(e))
        raise SemidError(errors[0] if errors else f"{where} must not be null")
    if origin in (list, tuple):
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise SemidError(f"{where} must be a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        items = [_checked(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return list(items) if origin is list else tuple(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SemidError(f"{where} must be a JSON object, got {type(value).__name__}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SemidError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if not is_integer(value):
            raise SemidError(f"{where} must be an integer, got {value!r}")
        return int(value)  # a numpy integer too, so the config saves as JSON
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SemidError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):  # JSON's NaN and Infinity, which Python's json accepts
            raise SemidError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SemidError(f"{where} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    return value
