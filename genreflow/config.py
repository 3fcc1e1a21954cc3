"""Typed job configs: a frozen dataclass per job, filled from YAML plus ``key=value`` overrides.

An unknown key or a value of the wrong type is a :class:`ConfigError` that names the
key, what was given and what was expected, before any work starts. Fields declared with
:func:`path_field` are paths: they are made absolute here, once (:mod:`genreflow.paths`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from genreflow.errors import ConfigError
from genreflow.paths import PathRole, resolve_path

T = TypeVar("T")

PATH_METADATA = "genreflow_path"


def path_field(role: PathRole, default: str | None = "") -> Any:
    """A config field holding a local path or URI that the job reads (``input``) or
    writes (``output``); a relative path is made absolute as the config is loaded."""
    return dataclasses.field(default=default, metadata={PATH_METADATA: role})


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    **values: Any,
) -> T:
    """Build ``cls`` from a YAML file, then ``values``, then ``key=value`` overrides.

    Args:
        cls: a (possibly nested) dataclass type.
        path: YAML file holding a mapping of field names; ``None`` for defaults only.
        overrides: strings ``key=value``; ``value`` is parsed as YAML (so ``3``,
            ``0.5``, ``true``, ``[a, b]`` have their natural types); dotted keys reach
            nested dataclasses (``spec.n_tokens=5``).
        values: keyword values (from CLI flags), applied before ``overrides``.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    for key, value in values.items():
        if value is not None:
            _set_dotted(data, key, value)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        _set_dotted(data, key.strip(), value)
    return from_dict(cls, data)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys, got {type(loaded).__name__}"
        )
    return loaded


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if isinstance(child, str):  # a section named by preset, refined key by key
            child = node[part] = {"preset": child}
        if not isinstance(child, dict):
            raise ConfigError(f"key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {where or cls.__name__!r} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}{key}"
        if key not in fields:
            hint = _suggestion(cls, str(key), list(fields), where)
            raise ConfigError(
                f"unknown config key {name!r} for {cls.__name__}{hint} "
                f"(known keys: {', '.join(sorted(fields))})"
            )
        kwargs[key] = _coerce(value, hints[key], name)
        role = fields[key].metadata.get(PATH_METADATA)
        if role is not None and isinstance(kwargs[key], str):
            kwargs[key] = resolve_path(kwargs[key], role=role, key=name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def _suggestion(cls: type, key: str, fields: list[str], where: str) -> str:
    """``; did you mean ...?`` for an unknown key: a close name at this level, or the same
    name in a nested section (``num_workers`` is ``resources.num_workers``)."""
    hints = typing.get_type_hints(cls)
    for name in fields:
        nested = hints.get(name)
        if (
            isinstance(nested, type)
            and dataclasses.is_dataclass(nested)
            and key in {f.name for f in dataclasses.fields(nested) if f.init}
        ):
            return f"; did you mean {f'{where}{name}.{key}'!r}?"
    close = difflib.get_close_matches(key, fields, n=1)
    return f"; did you mean {f'{where}{close[0]}'!r}?" if close else ""


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name!r}: bad value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{name!r} must be one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        from_preset = getattr(tp, "from_preset", None)
        if from_preset is not None and isinstance(value, str):
            return from_preset(value)
        if from_preset is not None and isinstance(value, Mapping) and "preset" in value:
            rest = {k: v for k, v in value.items() if k != "preset"}
            base = from_preset(value["preset"])
            merged = {**dataclasses.asdict(base), **rest}
            return from_dict(tp, merged, where=f"{name}.")
        return from_dict(tp, value, where=f"{name}.")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name!r} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name!r} must be a string, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)
