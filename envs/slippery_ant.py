"""SlipperyAnt: Gymnasium's Ant whose floor friction changes on a schedule (the paper's
non-stationary RL task).

The reference builds it by rewriting the Ant XML's default geom friction to ``f 0.5 0.5`` and
rebuilding the environment at each change. Gymnasium's ``ant.xml`` already has the default
``friction="1 0.5 0.5"``, inherited by every geom (floor included), so setting the sliding
friction of every geom to ``f`` in the compiled model is the same model, without a rebuild
(``tests/test_envs_physics.py`` checks that trajectories are identical).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gymnasium.envs.mujoco import ant_v4, ant_v5

from cbp_rl.envs.wrappers import (
    REFERENCE_CHANGE_EVERY,
    REFERENCE_HIGH,
    REFERENCE_LOW,
    FrictionSchedule,
)

ANT_VERSIONS = ("v4", "v5")


def make_slippery_ant(
    version: str = "v5",
    *,
    change_every: int = REFERENCE_CHANGE_EVERY,
    low: float = REFERENCE_LOW,
    high: float = REFERENCE_HIGH,
    schedule_seed: int = 0,
    values: Sequence[float] | None = None,
    cycle: bool = False,
    at_episode_end: bool = True,
    num_envs: int = 1,
    reset_counts_as_step: bool | None = None,
    **ant_kwargs: Any,
) -> FrictionSchedule[Any, Any]:
    """Gymnasium's ``Ant-{version}`` (built with ``ant_kwargs``) under a :class:`FrictionSchedule`.

    Without a time limit; ``gymnasium.make("SlipperyAnt-v5")`` adds the usual 1000 steps.
    ``schedule_seed`` is the schedule's ``seed``; the other schedule arguments are those of
    :class:`FrictionSchedule`.
    """
    if version not in ANT_VERSIONS:
        raise ValueError(f"unknown Ant version {version!r}: use one of {ANT_VERSIONS}")
    ant_class = ant_v4.AntEnv if version == "v4" else ant_v5.AntEnv
    return FrictionSchedule(
        ant_class(**ant_kwargs),
        change_every=change_every,
        low=low,
        high=high,
        seed=schedule_seed,
        values=values,
        cycle=cycle,
        at_episode_end=at_episode_end,
        num_envs=num_envs,
        reset_counts_as_step=reset_counts_as_step,
    )


def slippery_ant_v4(**kwargs: Any) -> FrictionSchedule[Any, Any]:
    """Entry point of ``SlipperyAnt-v4``: :func:`make_slippery_ant` on Ant-v4."""
    return make_slippery_ant("v4", **kwargs)


def slippery_ant_v5(**kwargs: Any) -> FrictionSchedule[Any, Any]:
    """Entry point of ``SlipperyAnt-v5``: :func:`make_slippery_ant` on Ant-v5."""
    return make_slippery_ant("v5", **kwargs)
