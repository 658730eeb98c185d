"""The rollout's bookkeeping on a scripted vector env: which value each step bootstraps from.

With same-step autoreset the step that ends an episode returns the next episode's first
observation; a truncated episode must bootstrap from ``V(info["final_obs"])``, a terminated one
from nothing, and no advantage may look across an episode boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cbp_rl.agents.config import NetworkConfig, RunConfig
from cbp_rl.agents.ppo import PPOAgent, PPOAlgorithmConfig, PPOConfig
from cbp_rl.agents.runner import AgentContext
from cbp_rl.envs.vector import EnvDescription

STEPS, ENVS = 6, 2
TERMINATE_AT = {0: 3}  # env 0 terminates when its counter reaches 3
TRUNCATE_AT = {1: 4}  # env 1 is truncated when its counter reaches 4


class ScriptedEnvs:
    """Two sub-envs whose observation is ``[0.1 * counter, env, 1]``; same-step autoreset."""

    num_envs = ENVS

    def __init__(self) -> None:
        self.counters = np.zeros(ENVS, dtype=int)

    def _obs(self) -> np.ndarray:
        return np.stack([np.array([0.1 * c, i, 1.0]) for i, c in enumerate(self.counters)]).astype(
            np.float64
        )

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.counters[:] = 0
        return self._obs(), {}

    def step(self, actions: np.ndarray) -> tuple[Any, ...]:
        self.counters += 1
        rewards = 1.0 + 0.5 * np.arange(ENVS) + 0.01 * self.counters
        terminated = np.array([TERMINATE_AT.get(i) == c for i, c in enumerate(self.counters)])
        truncated = np.array([TRUNCATE_AT.get(i) == c for i, c in enumerate(self.counters)])
        infos: dict[str, Any] = {}
        done = terminated | truncated
        if done.any():
            final = np.empty(ENVS, dtype=object)
            observations = self._obs()
            for i in np.flatnonzero(done):
                final[i] = observations[i].copy()
            infos = {"final_obs": final, "_final_obs": done.copy()}
            self.counters[done] = 0
        return self._obs(), rewards, terminated, truncated, infos


def _agent(truncation_as_termination: bool) -> tuple[PPOAgent, ScriptedEnvs]:
    config = PPOConfig(
        run=RunConfig(env="Scripted", num_envs=ENVS, total_steps=STEPS * ENVS),
        ppo=PPOAlgorithmConfig(
            batch_size=STEPS * ENVS,
            num_minibatches=2,
            gamma=0.9,
            gae_lambda=0.8,
            advantage_norm="off",
            truncation_as_termination=truncation_as_termination,
        ),
        network=NetworkConfig(hidden_sizes=(8,)),
    )
    description = EnvDescription(
        env_id="Scripted",
        observation_shape=(3,),
        action_shape=(1,),
        action_low=(-1.0,),
        action_high=(1.0,),
        max_episode_steps=None,
        has_schedule=False,
        logged_info_keys=(),
        exact_snapshots=False,
    )
    envs = ScriptedEnvs()
    agent = PPOAgent(AgentContext(config, envs, description, torch.device("cpu"), seed=3))
    agent.start(envs.reset()[0])
    return agent, envs


@pytest.mark.parametrize("truncation_as_termination", [False, True])
def test_rollout_bootstraps_from_the_right_observation(truncation_as_termination: bool) -> None:
    agent, _ = _agent(truncation_as_termination)
    rollout = agent._collect()
    batch = agent._batch(rollout)

    def value(counter: int, env: int) -> float:
        obs = torch.tensor([[0.1 * counter, env, 1.0]], dtype=torch.float32)
        with torch.no_grad():
            return float(agent.value(obs))

    expected = np.zeros((STEPS, ENVS))
    for env in range(ENVS):
        counter = 0
        # walk the episodes forward (the last step bootstraps from V of the observation after
        # the rollout), then accumulate GAE backward
        deltas, carries = [], []
        for _ in range(STEPS):
            reward = 1.0 + 0.5 * env + 0.01 * (counter + 1)
            terminated = TERMINATE_AT.get(env) == counter + 1
            truncated = TRUNCATE_AT.get(env) == counter + 1
            if terminated or (truncated and truncation_as_termination):
                following = 0.0
            else:  # within an episode or truncated: V of the true next state
                following = value(counter + 1, env)
            deltas.append(reward + 0.9 * following - value(counter, env))
            carries.append(0.0 if terminated or truncated else 0.9 * 0.8)
            counter = 0 if terminated or truncated else counter + 1
        running = 0.0
        for t in reversed(range(STEPS)):
            running = deltas[t] + carries[t] * running
            expected[t, env] = running
    got = batch.advantages.reshape(STEPS, ENVS).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        batch.returns.reshape(STEPS, ENVS).numpy(),
        expected + batch.values.reshape(STEPS, ENVS).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_stored_log_probs_are_those_of_the_taken_actions() -> None:
    agent, _ = _agent(False)
    rollout = agent._collect()
    batch = agent._batch(rollout)
    with torch.no_grad():
        mean = agent.policy(batch.obs)
        normal = torch.distributions.Normal(mean, agent.policy.log_std.exp())
        torch.testing.assert_close(
            batch.log_probs, normal.log_prob(batch.actions).sum(-1), rtol=1e-5, atol=1e-5
        )
