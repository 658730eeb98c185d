"""``python -m cbp_rl.train pmnist [FLAGS]``: online permuted MNIST, any learner, many seeds.

    python -m cbp_rl.train pmnist --learner cbp --width 2000 --tasks 800 --data-dir DIR
    python -m cbp_rl.train pmnist --learner bp --width 100 --seeds 30 --run-dir runs/bp100
    python -m cbp_rl.train pmnist --resume runs/bp100 --tasks 1600   # continue, exactly

``--resume DIR`` takes the saved configuration as the defaults, so only what changes (e.g.
``--tasks``) needs to be given; changing anything else is refused. ``--resume-fallback`` resumes
from the previous checkpoint when the latest is unreadable; exit codes, the run directory's lock
and the refusals follow :mod:`cbp_rl.run.conventions`. The parsing and resume helpers here serve
every supervised command (``regression`` too).
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar

import tyro

from cbp_rl.run import conventions
from cbp_rl.run.command import Command, Cost, Measure
from cbp_rl.run.configs import config_from_dict
from cbp_rl.run.conventions import UsageError, check_run_command, stop_exit_code
from cbp_rl.run.logging import CONFIG_FILE
from cbp_rl.run.runtime import torch_threads
from cbp_rl.supervised.config import PermutedMNISTConfig
from cbp_rl.supervised.data import ChecksumError, DataUnavailableError
from cbp_rl.supervised.experiment import (
    COMMAND_NAME,
    METRIC,
    UNIT,
    PermutedMNISTRun,
    budget,
    prepare,
    train,
)

ConfigT = TypeVar("ConfigT")


class _Configured(Protocol):
    @property
    def config(self) -> Any: ...


class _Stopped(Protocol):
    @property
    def stopped_by(self) -> signal.Signals | None: ...


RunT = TypeVar("RunT", bound=_Configured)


def _resume_dir(argv: Sequence[str]) -> Path | None:
    for index, arg in enumerate(argv):
        if arg == "--resume" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--resume="):
            return Path(arg.split("=", 1)[1])
    return None


def load_saved_config(run_dir: Path, cls: type[ConfigT], command: str) -> ConfigT:
    """The ``cls`` configuration a ``command`` run directory was started with (``config.json``)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(
            f"--resume {run_dir}: no config.json there, so not a {command} run directory; pass "
            f"the directory a `python -m cbp_rl.train {command}` run wrote"
        )
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    if not isinstance(values, dict):
        raise UsageError(f"--resume {run_dir}: its config.json holds no configuration")
    check_run_command(values, run_dir, command=command)
    for key in conventions.COMMAND_KEYS:
        values.pop(key, None)
    try:
        config: ConfigT = config_from_dict(cls, values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--resume {run_dir}: its config.json cannot be read: {err}") from err
    return config


def parse_config(cls: type[ConfigT], argv: Sequence[str], command: str) -> ConfigT:
    """A ``cls`` configuration from command-line flags (with ``--resume``: over the saved one)."""
    resume = _resume_dir(argv)
    markers = (tyro.conf.OmitArgPrefixes,)
    prog = f"python -m cbp_rl.train {command}"
    if resume is None:
        return tyro.cli(cls, args=list(argv), prog=prog, config=markers)
    default = load_saved_config(resume, cls, command)
    return tyro.cli(cls, args=list(argv), prog=prog, default=default, config=markers)


def command_main(
    command: str,
    parse: Callable[[Sequence[str]], Any],
    prepare: Callable[[Any], RunT],
    train: Callable[[RunT], _Stopped],
    argv: Sequence[str] | None,
) -> int:
    """Run ``command`` on ``argv`` (default: the process's arguments): parse, ``prepare`` the run,
    ``train`` it on ``--threads`` torch threads; returns the exit code
    (:mod:`cbp_rl.run.conventions`'s convention: 130/143 when stopped by SIGINT/SIGTERM, after a
    checkpoint)."""
    args = list(sys.argv[1:] if argv is None else argv)

    def execute(experiment: RunT) -> int:
        with torch_threads(experiment.config.run.threads):
            summary = train(experiment)
        return stop_exit_code(summary.stopped_by)

    return conventions.run_command(f"train {command}", lambda: parse(args), prepare, execute)


class SeedFields(TypedDict):
    """The :class:`~cbp_rl.run.command.Command` fields on a supervised command's seeds."""

    reserved: tuple[str, ...]
    seed_flags: Callable[[Sequence[int]], list[str]]
    batches_seeds: bool


def seed_fields(*, many_seeds: bool) -> SeedFields:
    """A sweep sets ``--seed`` (with ``many_seeds``, ``--seeds`` too: one run holds several),
    ``--run-dir`` and the resume flags."""
    seeds = ("seed", "seeds") if many_seeds else ("seed",)
    return SeedFields(
        reserved=(*seeds, "run-dir", "resume", "resume-fallback"),
        seed_flags=_seed_range_flags if many_seeds else _first_seed_flag,
        batches_seeds=many_seeds,
    )


def _seed_range_flags(seeds: Sequence[int]) -> list[str]:
    return ["--seed", str(seeds[0]), "--seeds", str(len(seeds))]


def _first_seed_flag(seeds: Sequence[int]) -> list[str]:
    return ["--seed", str(seeds[0])]


def saved_config(run_dir: Path) -> PermutedMNISTConfig:
    """The configuration a pmnist run directory was started with (its ``config.json``)."""
    return load_saved_config(run_dir, PermutedMNISTConfig, "pmnist")


def parse(argv: Sequence[str]) -> PermutedMNISTConfig:
    """The configuration from command-line flags (with ``--resume``: over the saved one)."""
    return parse_config(PermutedMNISTConfig, argv, "pmnist")


def prepare_run(config: PermutedMNISTConfig) -> PermutedMNISTRun:
    """Claim the run directory, load the data and build (or restore) the run."""
    try:
        return prepare(config)
    except (DataUnavailableError, ChecksumError) as err:
        raise UsageError(str(err)) from err


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (:mod:`cbp_rl.run.conventions`'s convention)."""
    return command_main(COMMAND_NAME, parse, prepare_run, train, argv)


def cost(config: PermutedMNISTConfig, total: int, units: int | None, measure: Measure) -> Cost:
    """A run's cost from three short runs: 1 task of ``units`` (default 1000) and of
    2 x ``units`` examples, and 2 tasks of ``units`` (slope per example, cost per task start).

    The task-start probe takes min(probe_examples, examples per task) examples: the short runs
    probe as many as the real run (``units`` is at least that), so its cost lands in per_task
    only.
    """
    probe = min(config.measures.probe_examples, config.examples_per_task)
    size = max(units or 1000, probe)

    def short_run(tasks: int, examples: int) -> float:
        flags = ["--tasks", str(tasks), "--examples-per-task", str(examples)]
        seconds, _ = measure([*flags, "--probe-examples", str(probe)])
        return seconds

    c1, c2, c3 = short_run(1, size), short_run(1, 2 * size), short_run(2, size)
    per_unit = max(0.0, (c2 - c1) / size)
    per_task = max(0.0, c3 - c2)
    fixed = max(0.0, c1 - per_unit * size - per_task)
    return Cost(per_unit, per_task, fixed, fixed + per_unit * total + per_task * config.tasks)


COMMAND = Command(
    name=COMMAND_NAME,
    summary="online permuted MNIST: backprop, L2, shrink-and-perturb, ..., continual backprop",
    main=main,
    parse=parse,
    config=PermutedMNISTConfig,
    metric=METRIC,
    unit=UNIT,
    budget=budget,
    budget_flags=("--tasks",),
    resume_flags=lambda config: ["--tasks", str(config.tasks), "--resume-fallback"],
    cost=cost,
    **seed_fields(many_seeds=True),
)
"""This command, as ``python -m cbp_rl.train``, the sweeps and ``plot`` see it."""


if __name__ == "__main__":
    sys.exit(main())
