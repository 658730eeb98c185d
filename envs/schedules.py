"""Value sequences and the change clock of a non-stationary environment.

A schedule is a sequence of values (:class:`RandomValues`, :class:`ListValues`) and a clock
(:class:`ChangeSchedule`). The world's value changes every ``change_every`` agent steps: after
``n`` agent steps the world holds value number ``n // change_every``. An environment adopts the
world's value at its next episode boundary (the reference's rule) or at once. Because the values
and the clock depend only on the seed and the number of agent steps, every sub-environment of a
vector env that runs its own copy (counting ``num_envs`` agent steps per step) agrees with the
others, and a schedule restored from :meth:`ChangeSchedule.state_dict` continues exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

STATE_VERSION = 1


class ValueSequence(ABC):
    """An endless, deterministic sequence of parameter values: ``values[i]`` for ``i >= 0``."""

    @abstractmethod
    def __getitem__(self, index: int) -> float:
        """Value number ``index``."""

    @abstractmethod
    def description(self) -> dict[str, Any]:
        """Plain data identifying the sequence (checked when a saved schedule is restored)."""

    def check_values(self, check: Callable[[float, str], float]) -> None:  # noqa: B027
        """Validate the values this sequence can produce with ``check(value, what)``."""


class RandomValues(ValueSequence):
    """Values drawn from a seed, log-uniform (default) or uniform on ``[low, high]``.

    Value ``i`` is ``exp(log(low) + (log(high) - log(low)) * u[i])`` (log-uniform) or
    ``low + (high - low) * u[i]`` (uniform), where ``u = np.random.default_rng(seed).random(n)``,
    clipped to ``[low, high]``. The same seed gives the same sequence, on any machine.
    """

    _CHUNK = 64

    def __init__(self, low: float, high: float, seed: int, *, log_uniform: bool = True) -> None:
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"low and high must be finite, got low={low!r}, high={high!r}")
        if log_uniform and low <= 0:
            raise ValueError(
                f"low must be > 0 for log-uniform values, got low={low!r} "
                "(use log_uniform=False for a uniform draw that may include 0)"
            )
        if high < low:
            raise ValueError(f"high must be >= low, got low={low!r} and high={high!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"the schedule seed must be an integer >= 0, got {seed!r}")
        self.low, self.high, self.seed, self.log_uniform = low, high, int(seed), log_uniform
        self._rng = np.random.default_rng(self.seed)
        self._values: list[float] = []

    def __getitem__(self, index: int) -> float:
        if index < 0:
            raise IndexError(f"value index must be >= 0, got {index}")
        while index >= len(self._values):
            self._values.extend(self._draw(self._CHUNK))
        return self._values[index]

    def _draw(self, count: int) -> list[float]:
        u = self._rng.random(count)
        if self.log_uniform:
            log_low, log_high = math.log(self.low), math.log(self.high)
            values = np.exp(log_low + (log_high - log_low) * u)
        else:
            values = self.low + (self.high - self.low) * u
        return np.clip(values, self.low, self.high).tolist()

    def description(self) -> dict[str, Any]:
        kind = "log_uniform" if self.log_uniform else "uniform"
        return {"kind": kind, "low": self.low, "high": self.high, "seed": self.seed}

    def check_values(self, check: Callable[[float, str], float]) -> None:
        check(self.low, "low")
        check(self.high, "high")

    def __repr__(self) -> str:
        kind = "log-uniform" if self.log_uniform else "uniform"
        return f"RandomValues({kind} [{self.low:g}, {self.high:g}], seed={self.seed})"


class ListValues(ValueSequence):
    """An explicit list of values; after the last one it stays there, or starts over (``cycle``)."""

    def __init__(self, values: Sequence[float], *, cycle: bool = False) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"values must be a sequence of numbers, got {values!r}")
        if len(values) == 0:
            raise ValueError("values must not be empty")
        try:
            floats = [float(value) for value in values]
        except (TypeError, ValueError) as error:
            raise ValueError(f"values must be numbers, got {list(values)!r}") from error
        if not all(math.isfinite(value) for value in floats):
            raise ValueError(f"values must be finite, got {floats!r}")
        self.values, self.cycle = floats, bool(cycle)

    def __getitem__(self, index: int) -> float:
        if index < 0:
            raise IndexError(f"value index must be >= 0, got {index}")
        if self.cycle:
            return self.values[index % len(self.values)]
        return self.values[min(index, len(self.values) - 1)]

    def description(self) -> dict[str, Any]:
        return {"kind": "cycle" if self.cycle else "list", "values": list(self.values)}

    def check_values(self, check: Callable[[float, str], float]) -> None:
        for position, value in enumerate(self.values):
            check(value, f"values[{position}]")

    def __repr__(self) -> str:
        return f"ListValues({self.values!r}, cycle={self.cycle})"


def make_values(
    *,
    low: float | None = None,
    high: float | None = None,
    seed: int = 0,
    values: Sequence[float] | None = None,
    cycle: bool = False,
    log_uniform: bool = True,
) -> ValueSequence:
    """The value sequence described by keyword arguments: ``values`` (an explicit list, repeated
    when ``cycle``) or a random draw on ``[low, high]`` from ``seed``, never both."""
    if values is not None:
        if low is not None or high is not None:
            raise ValueError(
                f"give either values=[...] or low and high, not both (got values={values!r}, "
                f"low={low!r}, high={high!r})"
            )
        return ListValues(values, cycle=cycle)
    if low is None or high is None:
        raise ValueError(
            "give the schedule's values: either values=[...] (an explicit list) or low and high "
            f"(a random draw); got low={low!r}, high={high!r}, values=None"
        )
    if cycle:
        raise ValueError("cycle=True needs an explicit list of values (values=[...])")
    return RandomValues(low, high, seed, log_uniform=log_uniform)


class ChangeSchedule:
    """When the value changes: every ``change_every`` agent steps, adopted at once or at the next
    episode boundary.

    The owner calls :meth:`before_step` (true: adopt :attr:`value` now), then :meth:`after_step`
    after each environment step, and :meth:`at_reset` (true: adopt :attr:`value`) at each reset.

    Args:
        values: the value sequence; value ``0`` is in force from the start.
        change_every: agent steps between changes of the world's value (``K``).
        at_episode_end: adopt a change at the next reset (the reference's rule) rather than at once.
        num_envs: sub-environments stepping in lockstep; one step counts ``num_envs`` agent steps.
        reset_counts_as_step: whether a reset (after the first) also counts ``num_envs`` agent
            steps. Under Gymnasium's default next-step autoreset a sub-environment spends the
            vector step after an episode end resetting, and an agent's step counter counts that
            vector step; counting it keeps every sub-environment's clock equal to the agent's.
            ``None``: ``num_envs > 1``. Use ``False`` with same-step autoreset or a hand loop.
    """

    def __init__(
        self,
        values: ValueSequence,
        *,
        change_every: int,
        at_episode_end: bool = True,
        num_envs: int = 1,
        reset_counts_as_step: bool | None = None,
    ) -> None:
        self.values = values
        self.change_every = _positive_int(change_every, "change_every")
        self.num_envs = _positive_int(num_envs, "num_envs")
        self.at_episode_end = _bool(at_episode_end, "at_episode_end")
        if reset_counts_as_step is None:
            reset_counts_as_step = self.num_envs > 1
        self.reset_counts_as_step = _bool(reset_counts_as_step, "reset_counts_as_step")
        self.agent_steps = 0
        self.index = 0
        self.value = values[0]
        self._resets = 0

    @property
    def world_index(self) -> int:
        """The index of the world's current value: ``agent_steps // change_every``."""
        return self.agent_steps // self.change_every

    @property
    def pending(self) -> bool:
        """The world has changed but the value in force has not caught up yet."""
        return self.world_index != self.index

    def before_step(self) -> bool:
        """At the start of a step: adopt a due change now if changes apply at once."""
        return not self.at_episode_end and self._catch_up()

    def after_step(self) -> None:
        """At the end of a step: count it."""
        self.agent_steps += self.num_envs

    def at_reset(self) -> bool:
        """At a reset (an episode boundary): adopt a due change; count the reset if configured."""
        changed = self._catch_up()
        if self.reset_counts_as_step and self._resets > 0:
            self.agent_steps += self.num_envs
        self._resets += 1
        return changed

    def _catch_up(self) -> bool:
        if not self.pending:
            return False
        self.index = self.world_index
        self.value = self.values[self.index]
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; plain Python data, safe for ``weights_only``."""
        return {
            "version": STATE_VERSION,
            "agent_steps": int(self.agent_steps),
            "index": int(self.index),
            "value": float(self.value),
            "pending": bool(self.pending),
            "change_every": int(self.change_every),
            "at_episode_end": bool(self.at_episode_end),
            "num_envs": int(self.num_envs),
            "values": self.values.description(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; ``ValueError`` if it belongs to a different schedule.

        ``num_envs`` may differ (the count is in total agent steps); the values, ``change_every``
        and ``at_episode_end`` must match, or the continuation would not be the same schedule.
        """
        state = _checked_state(state)
        for key, mine in (
            ("values", self.values.description()),
            ("change_every", self.change_every),
            ("at_episode_end", self.at_episode_end),
        ):
            if state[key] != mine:
                raise ValueError(
                    f"the saved schedule has {key}={state[key]!r} but this environment has "
                    f"{key}={mine!r}: create the environment with the settings of the saved run"
                )
        if state["index"] > state["agent_steps"] // self.change_every:
            raise ValueError(
                f"the schedule state is inconsistent: value index {state['index']} after "
                f"{state['agent_steps']} agent steps with change_every={self.change_every}"
            )
        value = self.values[state["index"]]
        if "value" in state and state["value"] != value:
            raise ValueError(
                f"the saved schedule held the value {state['value']!r} where this one computes "
                f"{value!r} for the same index: the value sequences differ"
            )
        self.agent_steps = state["agent_steps"]
        self.index = state["index"]
        self.value = value


_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "agent_steps": int,
    "index": int,
    "change_every": int,
    "at_episode_end": bool,
    "values": dict,
}


def _checked_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise ValueError(f"a schedule state must be a dict, got {type(state).__name__}")
    for key, kind in _STATE_TYPES.items():
        if key not in state:
            raise ValueError(f"the schedule state has no {key!r}: it is not a saved schedule_state")
        if not isinstance(state[key], kind):
            raise ValueError(f"the schedule state's {key!r} is {state[key]!r}, not a {kind}")
    if state["version"] != STATE_VERSION:
        raise ValueError(
            f"the schedule state has version {state['version']}; this cbp_rl reads version "
            f"{STATE_VERSION}"
        )
    if state["agent_steps"] < 0 or state["index"] < 0:
        raise ValueError(f"the schedule state has negative counters: {dict(state)!r}")
    return state


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer (> 0), got {value!r}")
    return int(value)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
