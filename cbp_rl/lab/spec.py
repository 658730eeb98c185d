"""Sweep specs: a TOML file naming a command, its settings and seeds, expanded into runs.

A spec (see docs/sweep.md)::

    name = "ant_policy_collapse"        # default: the file's stem
    command = "ppo"                     # a command of cbp_rl.lab.commands: ppo, sac, pmnist, ...
    seeds = 30                          # seeds seed_start .. seed_start+29, or a list [0, 4, 9]
    seed_start = 0
    max_retries = 2                     # relaunches of a run that died, each from its checkpoint
    expected_cpu_hours = 9000           # what the whole sweep costs (informational)
    expected_gpu_hours = 360            # the same on GPUs (continual-imagenet, incremental-cifar)

    [resources]                         # what one run needs (Ray schedules by it)
    cpus = 1
    gpus = 0
    seeds_per_run = 1                   # pmnist: seeds batched in one process (--seeds)

    [base]                              # flags of every run, named as on the command line
    env = "Ant-v4"
    total-steps = 1e8

    [settings.standard]                 # named settings (e.g. the paper's methods), in order
    preset = "standard"
    [settings.cbp]
    preset = "cbp"

    [grid]                              # a cartesian product on top of every named setting
    lr = [1e-4, 3e-4]

Every (setting, seed) is one run, ``<setting>-s<seed>``; a setting's name is its table's name
and the grid values, ``cbp_lr=0.0003``. Flags are checked against the command's own config
dataclass (names, then types), then every setting is parsed by the command's own parser, so a
bad spec fails before anything runs, with :class:`SpecError` naming the problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import itertools
import math
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from cbp_rl.lab.commands import COMMANDS
from cbp_rl.run.command import Command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Resources",
    "RunSpec",
    "Setting",
    "SpecError",
    "SweepSpec",
    "expand",
    "load_spec",
    "parse_flags",
    "parse_spec",
    "parse_value",
]


class SpecError(ValueError):
    """A sweep spec that cannot run: unknown command, key or flag, a bad value."""


# --------------------------------------------------------------------------- commands


def parse_flags(command: Command, argv: Sequence[str]) -> Any:
    """The command's own parse of ``argv``; raises :class:`SpecError` with its message."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return command.parse(list(argv))
    except SystemExit:
        message = _tidy(captured.getvalue())
        raise SpecError(message or f"{command.name} rejected the flags {list(argv)}") from None
    except (ValueError, TypeError) as err:
        raise SpecError(str(err)) from None


def _tidy(text: str) -> str:
    """tyro's boxed error text as plain lines."""
    lines = []
    for line in text.splitlines():
        line = line.strip().strip("│|").strip()
        if line and not set(line) <= set("-─╭╮╰╯ "):
            lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a command, from its config dataclass."""

    name: str
    """Without dashes: ``total-steps``."""
    hint: Any
    """The field's type (``Annotated`` stripped)."""


def command_flags(config_type: type) -> dict[str, Flag]:
    """The flags of a config dataclass whose nested groups carry no prefix (tyro
    ``OmitArgPrefixes``), by name."""
    flags: dict[str, Flag] = {}
    for name, hint in _leaf_fields(config_type):
        flag = name.replace("_", "-")
        assert flag not in flags, f"flag --{flag} appears twice in {config_type.__name__}"
        flags[flag] = Flag(flag, hint)
    return flags


def _leaf_fields(cls: type) -> Iterable[tuple[str, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = _strip_annotated(hints[f.name])
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            yield from _leaf_fields(hint)
        else:
            yield f.name, hint


def _strip_annotated(hint: Any) -> Any:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def _optional_member(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(hint, False)``."""
    origin = get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) == 1 and len(get_args(hint)) == 2:
            return _strip_annotated(members[0]), True
    return hint, False


def flag_argv(flag: Flag, value: Any) -> list[str]:
    """The command-line words of ``--flag value``; raises :class:`SpecError` for a value of the
    wrong type (a TOML integer or float for a number, a list for a tuple, ...)."""
    hint, optional = _optional_member(flag.hint)
    dashed = f"--{flag.name}"
    if value is None or (isinstance(value, str) and value == "None" and optional):
        if not optional:
            raise SpecError(f"{dashed} cannot be None")
        return [dashed, "None"]
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{dashed} expects true or false, got {value!r}")
        if optional:
            return [dashed, str(value)]
        return [dashed if value else f"--no-{flag.name}"]
    if get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise SpecError(f"{dashed} expects a list, e.g. [256, 256], got {value!r}")
        members = get_args(hint)
        if len(members) == 2 and members[1] is Ellipsis:
            kinds = [members[0]] * len(value)
        else:
            kinds = list(members)
            if len(kinds) != len(value):
                raise SpecError(f"{dashed} expects {len(kinds)} values, got {value!r}")
        return [
            dashed,
            *(_scalar_word(dashed, kind, v) for kind, v in zip(kinds, value, strict=True)),
        ]
    return [dashed, _scalar_word(dashed, hint, value)]


def _scalar_word(dashed: str, hint: Any, value: Any) -> str:
    hint = _strip_annotated(hint)
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise SpecError(
                f"{dashed} must be one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return str(value)
    if isinstance(value, bool | list | dict):
        raise SpecError(f"{dashed} expects {_describe(hint)}, got {value!r}")
    if hint is int:
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)  # 1e8 in TOML is a float
        if not isinstance(value, int):
            raise SpecError(f"{dashed} expects an integer, got {value!r}")
        return str(value)
    if hint is float:
        if not isinstance(value, int | float):
            raise SpecError(f"{dashed} expects a number, got {value!r}")
        return repr(float(value))
    if hint is str or hint is Path:
        if not isinstance(value, str):
            raise SpecError(f"{dashed} expects a string, got {value!r}")
        return value
    return str(value)


def _describe(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(
        hint, str(hint)
    )


def _flag_name(key: str) -> str:
    return key.lstrip("-").replace("_", "-")


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Resources:
    """What one run needs."""

    cpus: float = 1.0
    """CPU cores (Ray's ``num_cpus``; the local pool runs ``cores // cpus`` at once)."""
    gpus: float = 0.0
    """GPUs (Ray's ``num_gpus``; fractions share a GPU)."""
    seeds_per_run: int = 1
    """pmnist: seeds batched in one process (``--seeds``)."""


@dataclass(frozen=True)
class Setting:
    """A named combination of flags."""

    name: str
    flags: dict[str, Any]
    """Flag name (dashed, no leading dashes) to TOML value."""
    resources: Resources


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a setting and its seed(s)."""

    name: str
    """``<setting>-s<seed>`` (``-s<first>-<last>`` for batched seeds)."""
    setting: str
    seeds: tuple[int, ...]
    argv: tuple[str, ...]
    """The command's flags of a fresh run, without ``--run-dir``."""
    resume_flags: tuple[str, ...]
    """Added to ``--resume RUN_DIR`` when the run continues."""
    total: int
    """The budget, in the command's unit."""
    resources: Resources

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        values = dict(data)
        values["seeds"] = tuple(values["seeds"])
        values["argv"] = tuple(values["argv"])
        values["resume_flags"] = tuple(values["resume_flags"])
        values["resources"] = Resources(**values["resources"])
        return cls(**values)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec (not yet checked against the command; see :func:`expand`)."""

    name: str
    command: Command
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]
    max_retries: int = 2
    expected_cpu_hours: float | None = None
    expected_gpu_hours: float | None = None
    """What the whole sweep costs on GPUs (informational; the convolutional commands)."""
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    """The TOML document as read."""


TOP_LEVEL = (
    "name",
    "description",
    "command",
    "seeds",
    "seed_start",
    "max_retries",
    "expected_cpu_hours",
    "expected_gpu_hours",
    "resources",
    "base",
    "settings",
    "grid",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


def load_spec(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    default_name: str | None = None,
) -> SweepSpec:
    """Read and parse a spec file; ``overrides`` are flags put over every run's (``--set``);
    the sweep's name defaults to ``default_name``, else the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path} is not valid TOML: {err}") from None
    name = default_name or path.stem
    return parse_spec(document, default_name=name, overrides=overrides, where=str(path))


def parse_spec(
    document: Mapping[str, Any],
    *,
    default_name: str = "sweep",
    overrides: Mapping[str, Any] | None = None,
    where: str = "spec",
) -> SweepSpec:
    """A spec from its TOML document; raises :class:`SpecError` naming what is wrong."""
    unknown = sorted(set(document) - set(TOP_LEVEL))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; a spec has {', '.join(TOP_LEVEL)}")
    command_name = document.get("command")
    if command_name is None:
        raise SpecError(
            f'{where}: names no command; add a line such as command = "ppo" (one of '
            f"{', '.join(COMMANDS)})"
        )
    if not isinstance(command_name, str) or command_name not in COMMANDS:
        raise SpecError(
            f"{where}: unknown command {command_name!r}; choose one of {', '.join(COMMANDS)}"
        )
    command = COMMANDS[command_name]
    name = _check_name(document.get("name", default_name), f"{where}: name")
    seeds = _seeds(document, where)
    retries = document.get("max_retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise SpecError(f"{where}: max_retries must be an integer >= 0, got {retries!r}")
    hours = document.get("expected_cpu_hours")
    gpu_hours = document.get("expected_gpu_hours")
    for key, value in (("expected_cpu_hours", hours), ("expected_gpu_hours", gpu_hours)):
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise SpecError(f"{where}: {key} must be a number, got {value!r}")
    description = document.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{where}: description must be a string")
    resources = _resources(document.get("resources", {}), Resources(), f"{where}: [resources]")
    base = _flag_table(document.get("base", {}), f"{where}: [base]")
    base.update(_flag_table(dict(overrides or {}), "--set"))
    named = _named_settings(document.get("settings"), resources, where)
    grid = _grid(document.get("grid", {}), where)
    settings = []
    for setting_name, flags, setting_resources in named:
        for combo in itertools.product(*grid.values()):
            parts = [setting_name] if setting_name else []
            parts += [
                f"{flag}={_name_part(value)}" for flag, value in zip(grid, combo, strict=True)
            ]
            full = "_".join(parts) or "base"
            merged = {**base, **flags, **dict(zip(grid, combo, strict=True))}
            if setting_resources.seeds_per_run > 1 and not command.batches_seeds:
                raise SpecError(f"{where}: seeds_per_run > 1 needs a command that batches seeds")
            full = _check_name(full, f"{where}: setting")
            settings.append(Setting(full, merged, setting_resources))
    names = [s.name for s in settings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"{where}: settings named twice: {duplicates}")
    return SweepSpec(
        name=name,
        command=command,
        seeds=seeds,
        settings=tuple(settings),
        max_retries=retries,
        expected_cpu_hours=None if hours is None else float(hours),
        expected_gpu_hours=None if gpu_hours is None else float(gpu_hours),
        description=description,
        source=dict(document),
    )


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            f"{where} {name!r} must be letters, digits and _ . = + - (no spaces or slashes)"
        )
    return name


def _seeds(document: Mapping[str, Any], where: str) -> tuple[int, ...]:
    seeds = document.get("seeds", 1)
    start = document.get("seed_start", 0)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise SpecError(f"{where}: seed_start must be an integer >= 0, got {start!r}")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SpecError(f"{where}: seeds must be >= 1, got {seeds}")
        return tuple(range(start, start + seeds))
    if (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        if len(set(seeds)) != len(seeds):
            raise SpecError(f"{where}: seeds repeat: {seeds}")
        if "seed_start" in document:
            raise SpecError(f"{where}: seed_start goes with seeds = N, not a list of seeds")
        return tuple(seeds)
    raise SpecError(f"{where}: seeds must be a count (30) or a list of seeds ([0, 1, 7])")


def _resources(table: Any, default: Resources, where: str) -> Resources:
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table")
    names = {f.name for f in dataclasses.fields(Resources)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(names))}")
    values = dataclasses.asdict(default)
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise SpecError(f"{where}: {key} must be a number >= 0, got {value!r}")
        values[key] = value
    if values["cpus"] <= 0:
        raise SpecError(f"{where}: cpus must be > 0")
    if not isinstance(values["seeds_per_run"], int) or values["seeds_per_run"] < 1:
        raise SpecError(f"{where}: seeds_per_run must be an integer >= 1")
    if values["gpus"] > 1 and values["gpus"] != int(values["gpus"]):
        raise SpecError(f"{where}: gpus above 1 must be whole, got {values['gpus']}")
    return Resources(float(values["cpus"]), float(values["gpus"]), int(values["seeds_per_run"]))


def _flag_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table of flags")
    flags = {}
    for key, value in table.items():
        if isinstance(value, dict):
            raise SpecError(f"{where}: {key} is a table; flags take values")
        flags[_flag_name(key)] = value
    return flags


def _named_settings(
    settings: Any, resources: Resources, where: str
) -> list[tuple[str, dict[str, Any], Resources]]:
    if settings is None:
        return [("", {}, resources)]
    if isinstance(settings, dict):
        items = list(settings.items())
    elif isinstance(settings, list):
        items = []
        for index, entry in enumerate(settings):
            if not isinstance(entry, dict) or "name" not in entry:
                raise SpecError(f"{where}: [[settings]] entry {index} needs a name")
            entry = dict(entry)
            items.append((entry.pop("name"), entry))
    else:
        raise SpecError(f"{where}: settings must be tables ([settings.NAME] or [[settings]])")
    if not items:
        raise SpecError(f"{where}: settings is empty")
    result = []
    for name, table in items:
        label = f"{where}: setting {name!r}"
        _check_name(name, f"{where}: setting name")
        if not isinstance(table, dict):
            raise SpecError(f"{label} must be a table of flags")
        table = dict(table)
        own = _resources(table.pop("resources", {}), resources, f"{label} resources")
        result.append((name, _flag_table(table, label), own))
    return result


def _grid(table: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: [grid] must be a table of flag = [values]")
    grid = {}
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: grid {key} must be a non-empty list of values")
        grid[_flag_name(key)] = values
    return grid


def _name_part(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "x".join(_name_part(v) for v in value)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(value)).strip("-") or "none"


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (``3e-4``, ``true``, ``[64, 64]``), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# --------------------------------------------------------------------------- expansion


def expand(spec: SweepSpec) -> list[RunSpec]:
    """The runs of a spec, in order (setting by setting, seed by seed), each checked: flag
    names and value types against the command's config dataclass, then every setting parsed
    by the command's own parser (and, for ``ppo``, its env id looked up)."""
    command = spec.command
    flags = command_flags(command.config)
    runs = []
    for setting in spec.settings:
        words = _setting_argv(command, flags, setting)
        groups = _seed_groups(spec.seeds, setting.resources.seeds_per_run)
        config = _parse_setting(command, setting, [*words, *command.seed_flags(groups[0])])
        for seeds in groups:
            name = f"{setting.name}-s{seeds[0]}" + (f"-{seeds[-1]}" if len(seeds) > 1 else "")
            runs.append(
                RunSpec(
                    name=name,
                    setting=setting.name,
                    seeds=tuple(seeds),
                    argv=(*words, *command.seed_flags(seeds)),
                    resume_flags=tuple(command.resume_flags(config)),
                    total=command.budget(config),
                    resources=setting.resources,
                )
            )
    return runs


def _setting_argv(command: Command, flags: Mapping[str, Flag], setting: Setting) -> list[str]:
    words: list[str] = []
    for name, value in setting.flags.items():
        if name in command.reserved:
            raise SpecError(
                f"setting {setting.name!r}: --{name} is set by the sweep (seeds come from "
                "`seeds`, run directories from the sweep folder)"
            )
        if name not in flags:
            close = difflib.get_close_matches(name, list(flags), n=3)
            hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise SpecError(
                f"setting {setting.name!r}: unknown flag --{name} for {command.name}{hint} "
                f"(`python -m cbp_rl.train {command.name} --help` lists them)"
            )
        try:
            words += flag_argv(flags[name], value)
        except SpecError as err:
            raise SpecError(f"setting {setting.name!r}: {err}") from None
    return words


def _parse_setting(command: Command, setting: Setting, argv: list[str]) -> Any:
    try:
        config = parse_flags(command, [*argv, "--run-dir", "sweep-check"])
        if command.check is not None:
            command.check(config)
    except (SpecError, ValueError) as err:
        raise SpecError(f"setting {setting.name!r}: {command.name} refuses it:\n{err}") from None
    return config


def _seed_groups(seeds: Sequence[int], per_run: int) -> list[list[int]]:
    """Seeds in runs of at most ``per_run`` consecutive seeds."""
    groups: list[list[int]] = []
    for seed in seeds:
        last = groups[-1] if groups else None
        if last is not None and len(last) < per_run and seed == last[-1] + 1:
            last.append(seed)
        else:
            groups.append([seed])
    return groups
