"""The CBP hyperparameters as command-line flags, from their one declaration,
:class:`cbp_rl.CBPConfig`.

:func:`cbp_flags` builds a frozen dataclass with one field per ``CBPConfig`` field (its type,
its docstring as the flag's help, a default of the command's choosing), for a command's flag
group to inherit: the flags stay flat (``--replacement-rate``, ``--maturity-threshold``,
``--decay-rate``, ``--utility``, ``--accumulate``, ``--magnitude-every``, ...), ``init`` becomes
``--cbp-init`` (the networks have an ``--init`` of their own), and ``config.json`` keeps the
fields at the group's level. A new ``CBPConfig`` field becomes a flag of every command.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Collection, Mapping
from typing import Annotated, Any

import tyro

from cbp_rl.cbp import CBPConfig, UtilityName

__all__ = ["RENAMED", "cbp_flags", "to_cbp_config"]

RENAMED = {"init": "cbp_init"}
"""``CBPConfig`` fields whose flag has another name."""


def cbp_flags(
    name: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    types: Mapping[str, Any] | None = None,
    notes: Mapping[str, str] | None = None,
    omit: Collection[str] = (),
) -> type:
    """A frozen dataclass named ``name`` holding ``CBPConfig``'s fields as flags.

    ``defaults``, ``types`` and ``notes`` (added to the help) are by ``CBPConfig`` field name;
    ``omit`` leaves fields out (they keep ``CBPConfig``'s default). ``utility`` is typed
    :data:`cbp_rl.cbp.UtilityName` (its choices show in ``--help``) unless ``types`` says
    otherwise.
    """
    docs = _field_docs(CBPConfig)
    hints = typing.get_type_hints(CBPConfig)
    base = CBPConfig()
    kinds = {"utility": UtilityName, **(types or {})}
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(CBPConfig):
        if f.name in omit:
            continue
        help_text = " ".join(filter(None, [docs.get(f.name, ""), (notes or {}).get(f.name)]))
        kind = Annotated[kinds.get(f.name, hints[f.name]), tyro.conf.arg(help=help_text)]  # type: ignore[valid-type]
        default = (defaults or {}).get(f.name, getattr(base, f.name))
        fields.append((RENAMED.get(f.name, f.name), kind, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(name, fields, frozen=True)


def to_cbp_config(flags: Any, **overrides: Any) -> CBPConfig:
    """The :class:`~cbp_rl.CBPConfig` of a :func:`cbp_flags` group (``overrides`` by
    ``CBPConfig`` field name, e.g. a resolved ``init``)."""
    values = {}
    for f in dataclasses.fields(CBPConfig):
        flag = RENAMED.get(f.name, f.name)
        if hasattr(flags, flag):
            values[f.name] = getattr(flags, flag)
    return CBPConfig(**{**values, **overrides})


def _field_docs(cls: type) -> dict[str, str]:
    """The docstrings under a dataclass's fields, by field name."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for node, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return docs
