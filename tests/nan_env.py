"""A test env that turns bad on cue: InvertedPendulum whose rewards become NaN from agent step
``nan_at`` on (``--env-kwargs '{"nan_at": 300}'``), to inject a NaN into a real run by a flag.

``python -c`` runs of the commands register it first (:data:`RUN_WITH_NAN_ENV`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

ENV_ID = "NaNRewardTest-v0"

RUN_WITH_NAN_ENV = (
    "import sys; sys.path.insert(0, {tests!r}); import nan_env; nan_env.register(); "
    "from cbp_rl.train import main; sys.exit(main(sys.argv[1:]))"
)
"""``python -c`` code (format with ``tests=``) running ``python -m cbp_rl.train`` with the env
registered; the command's arguments follow it."""


class NaNRewardAfter(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Rewards are NaN once ``nan_at`` steps were taken (counted over all lockstep sub-envs)."""

    def __init__(self, env: gym.Env, *, num_envs: int = 1, nan_at: int = 10**12) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, num_envs=num_envs, nan_at=nan_at)
        gym.Wrapper.__init__(self, env)
        self.num_envs = num_envs
        self.nan_at = nan_at
        self.steps = 0

    def step(self, action: Any) -> tuple[Any, ...]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += self.num_envs
        return (
            obs,
            float("nan") if self.steps > self.nan_at else reward,
            terminated,
            truncated,
            info,
        )


def _make(**kwargs: Any) -> gym.Env:
    from gymnasium.envs.mujoco.inverted_pendulum_v4 import InvertedPendulumEnv

    return NaNRewardAfter(InvertedPendulumEnv(), **kwargs)


def register() -> None:
    """Register :data:`ENV_ID`."""
    if ENV_ID not in gym.registry:
        gym.register(
            ENV_ID,
            entry_point=_make,
            kwargs={"num_envs": 1, "nan_at": 10**12},
            max_episode_steps=1000,
        )
