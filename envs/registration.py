"""Registration of the non-stationary environments with Gymnasium.

Gymnasium 1.x has no plugin entry points (it dropped them in 1.0), so the ids exist once
``cbp_rl.envs`` is imported; ``gymnasium.make("cbp_rl.envs:SlipperyAnt-v5")`` imports it itself.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from cbp_rl.envs.wrappers import REFERENCE_CHANGE_EVERY, REFERENCE_HIGH, REFERENCE_LOW

SLIPPERY_ANT_KWARGS: dict[str, Any] = {
    "change_every": REFERENCE_CHANGE_EVERY,
    "low": REFERENCE_LOW,
    "high": REFERENCE_HIGH,
    "schedule_seed": 0,
    "at_episode_end": True,
    "num_envs": 1,
    "reset_counts_as_step": None,
}
"""Registered defaults of SlipperyAnt-v4/-v5 (the reference's); keyword arguments override them."""


class VectorSizedKwargs(dict[str, Any]):
    """Registered env kwargs holding ``num_envs`` that still let ``gymnasium.make_vec`` set it.

    ENV_PROTOCOL registers ``num_envs`` (the sub-environments stepping in lockstep) in the spec's
    kwargs. ``gymnasium.make_vec(id, num_envs=N)`` takes ``kwargs.pop("num_envs", N)`` from a copy
    of them as the vector size, which would silently make one sub-env from the registered 1.
    Here that pop returns ``N`` and keeps ``num_envs=N`` in the kwargs each sub-env is made with,
    so ``make_vec`` builds ``N`` sub-envs that each count ``N`` agent steps per step.
    """

    def pop(self, key: str, *default: Any) -> Any:
        if key == "num_envs" and default:
            self[key] = default[0]
            return default[0]
        return super().pop(key, *default)


def register_envs() -> None:
    """Register SlipperyAnt-v4 and SlipperyAnt-v5 (idempotent)."""
    for version in ("v4", "v5"):
        env_id = f"SlipperyAnt-{version}"
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=f"cbp_rl.envs.slippery_ant:slippery_ant_{version}",
            max_episode_steps=1000,
            kwargs=VectorSizedKwargs(SLIPPERY_ANT_KWARGS),
        )
