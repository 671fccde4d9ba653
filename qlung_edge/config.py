"""Dataclasses from plain dicts (YAML recipes, TOML daemon configs, manifests), strictly.

A misspelt key or a value of the wrong type is an error that names the dotted key, never a silently ignored
setting. Annotations are read from their source text (`from __future__ import annotations` keeps them as
strings), so `int | None` and `list[str]` work on Python 3.8 as well, where the typing module cannot
evaluate them.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import enum
import sys
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any

from qlung_edge.errors import ConfigError

_GENERICS = {"list": typing.List, "dict": typing.Dict, "tuple": typing.Tuple, "set": typing.Set}


def _resolve(node: ast.AST, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[_resolve(node.left, namespace), _resolve(node.right, namespace)]
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return ...
    if isinstance(node, ast.Name):
        if node.id in _GENERICS:
            return _GENERICS[node.id]
        if node.id not in namespace:
            raise TypeError(f"cannot resolve the annotation name {node.id!r}")
        return namespace[node.id]
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(node.value, namespace), node.attr)
    if isinstance(node, ast.Subscript):
        base = _resolve(node.value, namespace)
        inner = node.slice.value if isinstance(node.slice, getattr(ast, "Index", ())) else node.slice  # 3.8
        args = tuple(_resolve(e, namespace) for e in inner.elts) if isinstance(inner, ast.Tuple) else None
        return base[args] if args is not None else base[_resolve(inner, namespace)]
    raise TypeError(f"unsupported annotation {ast.dump(node)}")


@lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Each field's type as a typing object (Union, List, ...), resolved in the class's module."""
    namespace = {**vars(builtins), **vars(typing), **vars(sys.modules[cls.__module__])}
    out = {}
    for f in dataclasses.fields(cls):
        kind = f.type
        out[f.name] = _resolve(ast.parse(kind, mode="eval").body, namespace) if isinstance(kind, str) else kind
    return out


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_value(value: Any, kind: Any, key: str) -> Any:
    """`value` as `kind`, or a ConfigError naming `key`. Ints pass as floats, strings as paths."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if kind is type(None):
        if value is not None:
            raise ConfigError(f"expected nothing (null), got {_describe(value)}", path=key)
        return None
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(value, option, key)
            except ConfigError as err:
                errors.append(err.problem)
        raise ConfigError(errors[0] if len(errors) == 1 else f"{_describe(value)} fits none of its types", path=key)
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        return from_dict(kind, value, key)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in kind)
            raise ConfigError(f"{value!r} is not one of {choices}", path=key) from None
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_describe(value)}", path=key)
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {_describe(value)}", path=key)
        return value
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"expected a number, got {_describe(value)}", path=key)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {_describe(value)}", path=key)
        return value
    if kind is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"expected a path, got {_describe(value)}", path=key)
        return Path(value)
    if origin in (list, tuple, set):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {_describe(value)}", path=key)
        if origin is tuple and args and args[-1] is not ...:
            if len(value) != len(args):
                raise ConfigError(f"expected {len(args)} items, got {len(value)}", path=key)
            return tuple(check_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_describe(value)}", path=key)
        key_kind, value_kind = args if args else (Any, Any)
        return {check_value(k, key_kind, key): check_value(v, value_kind, f"{key}.{k}") for k, v in value.items()}
    if isinstance(kind, type) and not isinstance(value, kind):
        raise ConfigError(f"expected {kind.__name__}, got {_describe(value)}", path=key)
    return value


def from_dict(cls: type, values: Any, where: str = "") -> Any:
    """Build dataclass `cls` from (nested) dicts; unknown keys and wrong types raise with the dotted key.

    Values that fail the dataclass's own checks (its `__post_init__`) raise a ConfigError naming `where`.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping, got {_describe(values)}", path=where or cls.__name__)
    types = field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(types))})")
    kwargs = {
        name: check_value(value, types[name], f"{where}.{name}" if where else name) for name, value in values.items()
    }
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # the dataclass's own checks, or a required field left out
        raise ConfigError(str(err), path=where or cls.__name__) from None


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain JSON/TOML-ready values (paths as strings, enums as their values)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)
