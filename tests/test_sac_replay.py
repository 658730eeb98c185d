"""The replay buffer: transitions as a naive buffer stores them, episode ends, wrap-around,
compact checkpoint state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cbp_rl.agents.replay import ReplayBuffer
from cbp_rl.envs.vector import final_observations, make_vector_env

Transition = tuple[np.ndarray, np.ndarray, float, np.ndarray, float]


def fill(buffer: ReplayBuffer, steps: int, num_envs: int, seed: int = 0) -> list[Transition]:
    """Step real InvertedPendulum envs with random actions into ``buffer``; returns every
    transition as a naive buffer would store it (s, a, r, s', terminated), in order."""
    envs = make_vector_env("InvertedPendulum-v4", num_envs, mode="sync")
    rng = np.random.default_rng(seed)
    naive: list[Transition] = []
    try:
        obs, _ = envs.reset(seed=seed)
        buffer.start(obs)
        for _ in range(steps):
            actions = rng.uniform(-1, 1, (num_envs, 1)).astype(np.float32)
            next_obs, rewards, terminated, truncated, infos = envs.step(3 * actions)
            finals = final_observations(infos)
            buffer.add(actions, rewards, terminated, truncated, next_obs, finals)
            for i in range(num_envs):
                ended = terminated[i] or truncated[i]
                following = finals[i] if ended else next_obs[i]
                naive.append(
                    (
                        obs[i].astype(np.float32),
                        actions[i],
                        float(np.float32(rewards[i])),
                        following.astype(np.float32),
                        float(terminated[i]),
                    )
                )
            obs = next_obs
    finally:
        envs.close()
    return naive


def assert_holds(buffer: ReplayBuffer, expected: list[Transition]) -> None:
    batch = buffer.latest(len(buffer))
    assert len(batch.obs) == len(expected)
    for k, (obs, action, reward, following, terminated) in enumerate(expected):
        assert torch.equal(batch.obs[k], torch.from_numpy(obs)), k
        assert torch.equal(batch.actions[k], torch.from_numpy(action)), k
        assert batch.rewards[k].item() == reward, k
        assert torch.equal(batch.next_obs[k], torch.from_numpy(following)), k
        assert batch.terminated[k].item() == terminated, k


@pytest.mark.parametrize("num_envs", [1, 3])
def test_it_stores_what_a_naive_buffer_stores_across_episode_ends_and_wrap_around(
    num_envs: int,
) -> None:
    buffer = ReplayBuffer(60, num_envs=num_envs, obs_dim=4, action_dim=1)
    naive = fill(buffer, 150, num_envs)
    assert sum(t[4] for t in naive) > 5  # random actions end many episodes
    assert len(buffer) == 60  # capacity is a whole number of rows here
    assert buffer.rows_added * num_envs > len(buffer)  # it wrapped
    assert_holds(buffer, naive[-60:])


def test_capacity_is_rounded_up_to_whole_vector_steps() -> None:
    buffer = ReplayBuffer(10, num_envs=3, obs_dim=4, action_dim=1)
    fill(buffer, 20, 3)
    assert len(buffer) == 12


def test_samples_are_uniform_with_replacement_and_reproducible() -> None:
    buffer = ReplayBuffer(100, num_envs=2, obs_dim=4, action_dim=1)
    naive = fill(buffer, 30, 2)
    a = buffer.sample(500, torch.Generator().manual_seed(1))
    b = buffer.sample(500, torch.Generator().manual_seed(1))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    rewards_and_obs = {tuple(np.concatenate([t[0], t[3]]).tolist()) for t in naive}
    drawn = {tuple(torch.cat([o, n]).tolist()) for o, n in zip(a.obs, a.next_obs, strict=True)}
    assert drawn <= rewards_and_obs and len(drawn) > 40  # real transitions, most of the 60


def test_state_dict_is_compact_and_restores_exactly() -> None:
    buffer = ReplayBuffer(100_000, num_envs=2, obs_dim=4, action_dim=1)
    naive = fill(buffer, 50, 2)
    state = buffer.state_dict()
    assert state["obs"].shape == (51, 2, 4)  # the filled rows and the pending one, no more
    assert state["obs"].untyped_storage().nbytes() == 51 * 2 * 4 * 4  # not a view of it all
    restored = ReplayBuffer(100_000, num_envs=2, obs_dim=4, action_dim=1)
    restored.load_state_dict(state)
    assert_holds(restored, naive)
    a = buffer.sample(64, torch.Generator().manual_seed(3))
    b = restored.sample(64, torch.Generator().manual_seed(3))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_state_of_a_wrapped_buffer_restores_exactly_and_goes_on_alike() -> None:
    buffer = ReplayBuffer(40, num_envs=2, obs_dim=4, action_dim=1)
    fill(buffer, 70, 2, seed=4)
    restored = ReplayBuffer(40, num_envs=2, obs_dim=4, action_dim=1)
    restored.load_state_dict(buffer.state_dict())
    step: dict[str, Any] = {
        "actions": np.full((2, 1), 0.5, dtype=np.float32),
        "rewards": np.array([1.0, 2.0]),
        "terminated": np.array([True, False]),
        "truncated": np.array([False, False]),
        "next_observations": np.ones((2, 4)),
        "final_observations": {0: np.full(4, 9.0)},
    }
    buffer.add(**step)
    restored.add(**step)
    a, b = buffer.latest(len(buffer)), restored.latest(len(restored))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert a.next_obs[-2].tolist() == [9.0] * 4 and a.terminated[-2].item() == 1.0


def test_a_restart_mid_episode_truncates_the_open_transitions() -> None:
    buffer = ReplayBuffer(10, num_envs=1, obs_dim=2, action_dim=1)
    buffer.start(np.zeros((1, 2)))
    buffer.add(
        np.zeros((1, 1)), np.array([1.0]), np.array([False]), np.array([False]), np.ones((1, 2)), {}
    )
    buffer.start(np.full((1, 2), 5.0))  # e.g. an env that cannot be snapshotted, on resume
    buffer.add(
        np.zeros((1, 1)), np.array([2.0]), np.array([False]), np.array([False]), np.ones((1, 2)), {}
    )
    batch = buffer.latest(2)
    assert batch.next_obs[0].tolist() == [1.0, 1.0]  # the true next observation, kept
    assert batch.obs[1].tolist() == [5.0, 5.0]
    assert batch.terminated.tolist() == [0.0, 0.0]  # truncated: bootstrapped


def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ReplayBuffer(0, num_envs=1, obs_dim=2, action_dim=1)
    buffer = ReplayBuffer(10, num_envs=2, obs_dim=2, action_dim=1)
    with pytest.raises(RuntimeError, match="empty"):
        buffer.sample(4, torch.Generator())
    with pytest.raises(RuntimeError, match="call start"):
        buffer.add(np.zeros((2, 1)), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros((2, 2)), {})
    with pytest.raises(ValueError, match=r"num_envs=2"):
        buffer.start(np.zeros((3, 2)))
    buffer.start(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="without a final observation"):
        buffer.add(
            np.zeros((2, 1)),
            np.zeros(2),
            np.array([True, False]),
            np.zeros(2, dtype=bool),
            np.zeros((2, 2)),
            {},
        )
    other = ReplayBuffer(20, num_envs=2, obs_dim=2, action_dim=1)
    with pytest.raises(ValueError, match="holds 10 transitions of 2 envs"):
        other.load_state_dict(buffer.state_dict())
