"""The vectorized-env factory: identical vectorizers, exact snapshots, errors naming the cause."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from cbp_rl.envs.vector import (
    BatchedVectorEnv,
    ExactSnapshot,
    capture_vector_state,
    describe_env,
    final_observations,
    make_vector_env,
    resolve_vector_mode,
    restore_vector_state,
)

ENV = "Hopper-v4"


def _trajectory(envs: Any, actions: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    out = []
    for batch in actions:
        obs, rewards, terminated, truncated, infos = envs.step(batch)
        finals = final_observations(infos)
        final = np.stack([finals.get(i, np.zeros_like(obs[0])) for i in range(len(obs))])
        returns = infos["episode"]["r"] if "_episode" in infos else np.zeros(len(obs))
        out.append((obs, rewards, terminated, truncated, final, returns))
    return out


def _assert_same(a: list[tuple[np.ndarray, ...]], b: list[tuple[np.ndarray, ...]]) -> None:
    assert len(a) == len(b)
    for step_a, step_b in zip(a, b, strict=True):
        for x, y in zip(step_a, step_b, strict=True):
            np.testing.assert_array_equal(x, y)


def _actions(steps: int, num_envs: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (steps, num_envs, 3)).astype(np.float32)


def test_the_vectorizers_give_identical_trajectories_with_same_step_autoreset() -> None:
    actions = _actions(120, 3, seed=0)
    results = {}
    for mode in ("sync", "async", "batched"):
        envs = make_vector_env(ENV, 3, mode=mode, num_workers=2)
        try:
            envs.reset(seed=5)
            results[mode] = _trajectory(envs, actions)
        finally:
            envs.close()
    ended = sum(int(t.sum() + u.sum()) for _, _, t, u, _, _ in results["sync"])
    assert ended > 0  # the random policy ends episodes: autoreset and final_obs are exercised
    _assert_same(results["sync"], results["async"])
    _assert_same(results["sync"], results["batched"])


@pytest.mark.parametrize("mode", ["sync", "batched"])
def test_snapshots_continue_the_envs_exactly(mode: str) -> None:
    description = describe_env(ENV)
    envs = make_vector_env(ENV, 2, mode=mode, num_workers=2)
    try:
        envs.reset(seed=1)
        _trajectory(envs, _actions(70, 2, seed=1))
        state = capture_vector_state(envs, description)
        expected = _trajectory(envs, _actions(90, 2, seed=2))
    finally:
        envs.close()
    fresh = make_vector_env(ENV, 2, mode=mode, num_workers=2)
    try:
        assert restore_vector_state(fresh, description, state) is True
        _assert_same(_trajectory(fresh, _actions(90, 2, seed=2)), expected)
    finally:
        fresh.close()


def test_a_snapshot_of_another_model_is_refused() -> None:
    hopper = ExactSnapshot(gym.make(ENV))
    ant = ExactSnapshot(gym.make("InvertedPendulum-v4"))
    try:
        hopper.reset(seed=0)
        ant.reset(seed=0)
        with pytest.raises(ValueError, match="belongs to another environment"):
            ant.snapshot = hopper.snapshot
    finally:
        hopper.close()
        ant.close()


def test_describe_env_reads_the_spaces() -> None:
    description = describe_env(ENV)
    assert description.observation_shape == (11,) and description.action_shape == (3,)
    assert description.action_low == (-1.0,) * 3 and description.max_episode_steps == 1000
    assert description.exact_snapshots and not description.has_schedule
    with pytest.raises(ValueError, match="did you mean Hopper-v4"):
        describe_env("Hoper-v4")


class _Exploding(gym.Wrapper[Any, Any, Any, Any]):
    def step(self, action: Any) -> Any:
        raise RuntimeError("the physics exploded")


def _exploding_env() -> gym.Env:
    return _Exploding(gym.make("InvertedPendulum-v4"))


def test_a_failing_worker_reports_the_env_error() -> None:
    envs = BatchedVectorEnv([_exploding_env] * 2, num_workers=2)
    envs.reset(seed=0)
    with pytest.raises(RuntimeError, match=r"worker 0 \(envs 0..0\) failed during step"):
        envs.step(np.zeros((2, 1), dtype=np.float32))
    assert envs.closed
    with pytest.raises(RuntimeError, match="closed"):
        envs.step(np.zeros((2, 1), dtype=np.float32))


def test_batched_env_forwards_attributes_per_env() -> None:
    fns = [functools.partial(gym.make, "InvertedPendulum-v4")] * 3
    envs = BatchedVectorEnv(fns, num_workers=2)
    try:
        envs.reset(seed=0)
        envs.set_attr("custom_value", [1, 2, 3])
        assert envs.get_attr("custom_value") == (1, 2, 3)
        assert envs.call("get_wrapper_attr", "custom_value") == (1, 2, 3)
    finally:
        envs.close()


def test_resolve_vector_mode() -> None:
    assert resolve_vector_mode("sync", 4) == ("sync", 0)
    assert resolve_vector_mode("async", 4) == ("async", 4)
    assert resolve_vector_mode("batched", 4, 3) == ("batched", 3)
    assert resolve_vector_mode("auto", 1)[0] == "sync"
    with pytest.raises(ValueError, match="unknown vector mode"):
        resolve_vector_mode("threads", 4)
