"""Command-line parsing shared by the RL commands: tyro, presets, resume, exit codes.

``parse_config`` reads flags into a frozen config dataclass. Defaults come, in order, from the run
being resumed (``--resume DIR``: its ``config.json``), the preset named with ``--preset``, the
``cbp`` preset when ``--cbp`` is given, or the command's default preset; every flag given
explicitly overrides them (``--preset l2 --weight-decay 1e-3``). The exit codes and refusals are
:mod:`cbp_rl.run.conventions`'s (``run_command`` is re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import tyro

from cbp_rl.agents.config import config_from_dict
from cbp_rl.run.conventions import COMMAND_KEY, UsageError, check_run_command, run_command
from cbp_rl.run.logging import read_config

__all__ = ["UsageError", "flag_value", "load_run_config", "parse_config", "run_command"]

C = TypeVar("C")


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` or ``flag=VALUE`` in ``argv``, or ``None``."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def last_switch(argv: Sequence[str], on: str, off: str) -> bool | None:
    """Whether the last of ``on`` / ``off`` in ``argv`` is ``on`` (``None`` if neither)."""
    state = None
    for arg in argv:
        if arg == on:
            state = True
        elif arg == off:
            state = False
    return state


def load_run_config(cls: type[C], run_dir: Path, algorithm: str) -> C:
    """The config of the run in ``run_dir`` (its ``config.json``), as ``cls``."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: no config.json there; is it a run directory?")
    saved = dict(read_config(run_dir))
    check_run_command(saved, run_dir, command=algorithm)
    saved.pop(COMMAND_KEY, None)
    try:
        return config_from_dict(cls, saved)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--resume {run_dir}: its config.json cannot be read: {err}") from err


def parse_config(
    cls: type[C],
    argv: Sequence[str],
    *,
    algorithm: str,
    presets: Mapping[str, C],
    default_preset: str,
    prog: str,
    description: str,
) -> C:
    """Parse ``argv`` into ``cls`` with presets and resume (see the module docstring).

    Raises ``SystemExit`` for ``--help`` and for errors tyro reports (exit code 2), and
    :class:`UsageError` for a bad ``--resume`` directory.
    """
    argv = list(argv)
    resume = flag_value(argv, "--resume")
    preset = flag_value(argv, "--preset")
    cbp = last_switch(argv, "--cbp", "--no-cbp")
    if resume is not None:
        if preset is not None:
            raise UsageError("--preset cannot be combined with --resume (the run has its config)")
        default = load_run_config(cls, Path(resume), algorithm)
    elif preset is not None and preset in presets:
        default = presets[preset]
    elif cbp and "cbp" in presets:
        default = presets["cbp"]
    else:
        default = presets[default_preset]
    return tyro.cli(cls, args=argv, default=default, prog=prog, description=description)
