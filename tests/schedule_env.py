"""A schedule-carrying test env that follows ENV_PROTOCOL.md: InvertedPendulum whose gravity
changes every ``period`` agent steps to a value drawn from the schedule's own generator."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ENV_ID = "ScheduledPendulumTest-v0"


class GravitySchedule(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Scales the model's gravity; logs the scale as ``info["gravity_scale"]``."""

    logged_info_keys = ("gravity_scale",)

    def __init__(self, env: gym.Env, *, num_envs: int = 1, period: int = 200, seed: int = 7):
        gym.utils.RecordConstructorArgs.__init__(self, num_envs=num_envs, period=period, seed=seed)
        gym.Wrapper.__init__(self, env)
        self.num_envs = num_envs
        self.period = period
        self._rng = np.random.default_rng(seed)
        self._agent_steps = 0
        self._next_change = period
        self._scale = 1.0
        self._base = env.unwrapped.model.opt.gravity.copy()

    def _apply(self) -> None:
        self.env.unwrapped.model.opt.gravity[:] = self._base * self._scale

    def step(self, action: Any) -> tuple[Any, ...]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._agent_steps += self.num_envs  # lockstep sub-envs: each step is num_envs steps
        if self._agent_steps >= self._next_change:
            self._scale = float(self._rng.uniform(0.5, 1.5))
            self._next_change += self.period
            self._apply()
        return obs, reward, terminated, truncated, {**info, "gravity_scale": self._scale}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "gravity_scale": self._scale}

    @property
    def schedule_state(self) -> dict[str, Any]:
        return {
            "agent_steps": self._agent_steps,
            "next_change": self._next_change,
            "scale": self._scale,
            "rng": self._rng.bit_generator.state,
        }

    @schedule_state.setter
    def schedule_state(self, state: dict[str, Any]) -> None:
        self._agent_steps = int(state["agent_steps"])
        self._next_change = int(state["next_change"])
        self._scale = float(state["scale"])
        self._rng.bit_generator.state = state["rng"]
        self._apply()


def _make(**kwargs: Any) -> gym.Env:
    from gymnasium.envs.mujoco.inverted_pendulum_v4 import InvertedPendulumEnv

    return GravitySchedule(InvertedPendulumEnv(), **kwargs)


def register() -> None:
    """Register :data:`ENV_ID` (with ``num_envs`` in its kwargs, as the protocol asks)."""
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=_make, kwargs={"num_envs": 1}, max_episode_steps=1000)
