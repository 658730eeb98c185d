"""What a training command says about itself: :class:`Command`, one per command module.

Each command module (``cbp_rl.agents.ppo_command``, ``cbp_rl.supervised.command``, ...) defines
``COMMAND = Command(...)``; the registry :mod:`cbp_rl.lab.commands` lists those modules, and
``python -m cbp_rl.train``, the sweeps, ``evaluate`` and ``plot`` read everything else from here.
The type sits in the run machinery so that the command modules (agents, supervised) can build
one without importing the layers above them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Command", "Cost", "Measure", "PolicyLoader"]

Measure = Callable[[Sequence[str]], tuple[float, int]]
"""Runs the command briefly with the given budget flags; returns ``(CPU seconds, units done)``."""

PolicyLoader = Callable[..., Callable[[Any], Any]]
"""``load_policy(config, agent_state, description, device) -> act``: a saved policy, for
``python -m cbp_rl.evaluate`` (see :mod:`cbp_rl.agents.evaluation`)."""


class Cost(NamedTuple):
    """A run's CPU cost, measured by short runs: ``fixed + per_unit x units + per_task x
    tasks``."""

    per_unit: float
    """CPU seconds per unit of the budget (step, example)."""
    per_task: float
    """CPU seconds per task start (0 where there are no tasks)."""
    fixed: float
    """CPU seconds per run not proportional to its length (start-up, the last checkpoint)."""
    per_run: float
    """CPU seconds of the whole run."""


@dataclass(frozen=True)
class Command:
    """One training command, ``python -m cbp_rl.train NAME``, as the entry points and the lab
    see it."""

    name: str
    summary: str
    """One line for ``python -m cbp_rl.train --help``."""
    main: Callable[[list[str]], int]
    """Runs the command; returns the exit code (2 for bad input)."""
    parse: Callable[[Sequence[str]], Any]
    """Flags to the config (raises ``SystemExit`` as tyro does, or ``ValueError``)."""
    config: type
    """The config dataclass whose fields are the flags."""
    metric: str
    """The performance measure its runs report (``return``, ``accuracy``)."""
    unit: str
    """What its budget counts (plural: ``steps``, ``examples``)."""
    budget: Callable[[Any], int]
    """A parsed config's budget in ``unit``."""
    budget_flags: tuple[str, ...]
    """Flags that set the budget: they may change between launches of a sweep."""
    reserved: tuple[str, ...]
    """Flags a sweep sets itself (seed, run directory, resume)."""
    seed_flags: Callable[[Sequence[int]], list[str]]
    """Flags selecting the seeds of one run."""
    resume_flags: Callable[[Any], list[str]]
    """Flags added to ``--resume DIR``: the budget (which may have grown), fallbacks."""
    cost: Callable[[Any, int, int | None, Measure], Cost]
    """``cost(config, total, units, measure)``: a run's cost from short runs of the command
    (``measure(budget_flags)``), ``units`` long (``None``: the command's default)."""
    batches_seeds: bool = False
    """Whether one run can hold several seeds (``seeds_per_run`` of a sweep)."""
    check: Callable[[Any], None] | None = None
    """Further checks of a parsed config a sweep makes before anything runs (an env id)."""
    load_policy: PolicyLoader | None = None
    """The saved policy of its checkpoints, where ``python -m cbp_rl.evaluate`` can run one."""
