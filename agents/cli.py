"""Command-line parsing shared by the RL commands: tyro, presets, resume, exit codes, and
their :class:`~cbp_rl.run.command.Command` (:func:`rl_command`).

``parse_config`` reads flags into a frozen config dataclass. Defaults come, in order, from the run
being resumed (``--resume DIR``: its ``config.json``), the preset named with ``--preset``, the
``cbp`` preset when ``--cbp`` is given, or the command's default preset; every flag given
explicitly overrides them (``--preset l2 --weight-decay 1e-3``). The exit codes and refusals are
:mod:`cbp_rl.run.conventions`'s (``run_command`` is re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import tyro

from cbp_rl.agents.runner import (
    METRIC,
    RESUME_IGNORE_RUN,
    UNIT,
    Agent,
    AgentContext,
    PreparedRun,
    budget,
    prepare_run,
)
from cbp_rl.envs.vector import check_env_id, describe_env, seeded_env_kwargs, sub_env_kwargs
from cbp_rl.run.command import Command, Cost, Measure, PolicyLoader
from cbp_rl.run.configs import config_from_dict
from cbp_rl.run.conventions import COMMAND_KEY, UsageError, check_run_command, run_command
from cbp_rl.run.logging import read_config

__all__ = [
    "RLCommandParts",
    "UsageError",
    "flag_value",
    "load_run_config",
    "parse_config",
    "rl_command",
    "rl_cost",
    "run_command",
]

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


def rl_command(
    name: str,
    summary: str,
    *,
    main: Callable[[list[str]], int],
    parse: Callable[[Sequence[str]], Any],
    config: type,
    load_policy: PolicyLoader,
) -> Command:
    """The :class:`~cbp_rl.run.command.Command` of an RL command on the shared runner
    (:mod:`cbp_rl.agents.runner`): the same run flags, budget and cost model."""
    return Command(
        name=name,
        summary=summary,
        main=main,
        parse=parse,
        config=config,
        metric=METRIC,
        unit=UNIT,
        budget=budget,
        budget_flags=("--total-steps",),
        reserved=("seed", "run-dir", "runs-root", "resume", "resume-fallback"),
        seed_flags=lambda seeds: ["--seed", str(seeds[0])],
        resume_flags=lambda config: [
            "--total-steps",
            str(config.run.total_steps),
            "--resume-fallback",
        ],
        cost=rl_cost,
        check=_check_env,
        load_policy=load_policy,
    )


@dataclass(frozen=True)
class RLCommandParts(Generic[C]):
    """What an RL command's ``parse``, ``prepare`` and ``main`` are made of; they are its methods.

    ``python -m cbp_rl.train ALGORITHM`` parses ``config`` flags over ``presets`` (the default
    ``standard``) and runs the agent ``build_agent`` makes on the shared runner.
    """

    algorithm: str
    config: type[C]
    presets: Mapping[str, C]
    description: str
    build_agent: Callable[[AgentContext], Agent]
    resume_ignore: Sequence[str] = RESUME_IGNORE_RUN
    network_count: int = 2

    def parse(self, argv: Sequence[str]) -> C:
        """The config of ``argv`` (flags over a preset, or over the resumed run's config)."""
        return parse_config(
            self.config,
            argv,
            algorithm=self.algorithm,
            presets=self.presets,
            default_preset="standard",
            prog=f"python -m cbp_rl.train {self.algorithm}",
            description=self.description,
        )

    def prepare(self, config: C) -> PreparedRun:
        """Validate a run before anything runs."""
        return prepare_run(
            self.algorithm,
            config,
            self.build_agent,
            resume_ignore=self.resume_ignore,
            network_count=self.network_count,
        )

    def main(self, argv: Sequence[str]) -> int:
        """``python -m cbp_rl.train ALGORITHM [FLAGS]``; returns the exit code."""
        name = f"train {self.algorithm}"
        return run_command(name, lambda: self.parse(argv), self.prepare, lambda run: run.execute())

    def command(self, summary: str, load_policy: PolicyLoader) -> Command:
        """The command's :class:`~cbp_rl.run.command.Command` (:func:`rl_command`)."""
        return rl_command(
            self.algorithm,
            summary,
            main=self.main,
            parse=self.parse,
            config=self.config,
            load_policy=load_policy,
        )


def rl_cost(config: Any, total: int, units: int | None, measure: Measure) -> Cost:
    """A run's cost from two short runs, ``units`` (default 10240) and 3 x ``units`` steps: the
    slope is the cost per step, the rest a fixed cost."""
    size = units or 10_240
    c1, s1 = measure(["--total-steps", str(size)])
    c2, s2 = measure(["--total-steps", str(3 * size)])
    per_unit = max(0.0, (c2 - c1) / max(1, s2 - s1))
    fixed = max(0.0, c1 - per_unit * s1)
    return Cost(per_unit, 0.0, fixed, fixed + per_unit * total)


def _check_env(config: Any) -> None:
    """The env id exists and has continuous actions (builds one instance, as the command does)."""
    run = config.run
    check_env_id(run.env)
    kwargs = {**seeded_env_kwargs(run.env, run.seed), **run.gym_kwargs()}
    describe_env(run.env, {**kwargs, **sub_env_kwargs(run.env, 1)})
