"""Typed dataclasses from plain YAML values: the type checks and unknown-key errors behind :mod:`nfaudio.config`.

A nested dict is turned into a tree of dataclasses field by field: unknown keys name the closest known key, values
are checked (and, where lossless, converted) against the field's type annotation.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

__all__ = ["ConfigError", "build", "plain"]


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree."""




def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown key '{where}{key}'{hint}")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check/convert a YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ConfigError:
                continue
        raise ConfigError(f"'{name}': {value!r} does not fit {tp}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{name}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, name) for v in value]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"'{name}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{name}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{name}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{name}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{name}' must be a string, got {value!r}")
    return value


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"section '{where.rstrip('.') or 'root'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(str(key), list(fields), where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value or {}, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}{key}")
    return cls(**kwargs)
