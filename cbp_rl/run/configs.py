"""Config dataclasses back from JSON: the inverse of :func:`cbp_rl.run.checkpoint.to_jsonable`.

Every command saves its (nested, frozen) config dataclass as ``config.json`` and in its
checkpoints; :func:`config_from_dict` rebuilds it, for ``--resume`` and for evaluation.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

__all__ = ["config_from_dict"]

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Rebuild a (nested) config dataclass from its ``to_jsonable`` form (e.g. config.json).

    Lists become tuples where the field is a tuple, strings become paths where it is a path;
    fields left out take their defaults. Raises ``ValueError`` naming unknown fields (a config
    of another version) and whatever the dataclass's own checks raise.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{where} has unknown field(s) {unknown}: it was written by another version of "
            "cbp_rl; start a new run"
        )
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _convert(get_args(hint)[0], value, where)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {value!r}")
        return config_from_dict(hint, value, where=where)
    if value is None:
        return None
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is Path:
        return Path(value)
    if origin is typing.Union or origin is types.UnionType:
        members = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(members) == 1:
            return _convert(members[0], value, where)
    return value
