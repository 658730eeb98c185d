"""Schedules: value sequences, change points, save and restore, vector envs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from cbp_rl.envs import (
    FrictionSchedule,
    ListValues,
    ParameterSchedule,
    RandomValues,
    SetParameter,
    mujoco_model,
)
from cbp_rl.run.checkpoint import load_checkpoint, save_checkpoint

VALUES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]


# ---------------------------------------------------------------------------- value sequences


def test_random_values_are_log_uniform_from_the_seed() -> None:
    values = RandomValues(0.02, 2.0, seed=3)
    first = [values[i] for i in range(200)]
    u = np.random.default_rng(3).random(200)
    np.testing.assert_allclose(first, np.exp(np.log(0.02) + np.log(100.0) * u), rtol=1e-14)
    assert first == [RandomValues(0.02, 2.0, seed=3)[i] for i in range(200)]
    assert first != [RandomValues(0.02, 2.0, seed=4)[i] for i in range(200)]
    many = np.array([values[i] for i in range(4000)])
    assert many.min() >= 0.02 and many.max() <= 2.0
    assert 0.18 < np.median(many) < 0.22  # log-uniform on [0.02, 2]: median sqrt(0.04) = 0.2
    assert abs(np.mean(np.log(many)) - math.log(0.2)) < 0.05


def test_uniform_values_and_lists() -> None:
    uniform = RandomValues(0.0, 1.0, seed=0, log_uniform=False)
    np.testing.assert_allclose([uniform[i] for i in range(5)], np.random.default_rng(0).random(5))
    held = ListValues([1.0, 2.0, 3.0])
    cycled = ListValues([1.0, 2.0, 3.0], cycle=True)
    assert [held[i] for i in range(6)] == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert [cycled[i] for i in range(6)] == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]


# ---------------------------------------------------------------------------- change points


def run_frictions(env: gym.Env[Any, Any], steps: int) -> tuple[list[float], list[bool]]:
    """Friction in ``info`` at each step (zero actions, reset at episode ends) and whether the
    step began a new episode; also checks the model holds that friction."""
    _, info = env.reset(seed=0)
    frictions, starts, new_episode = [], [], True
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(np.zeros(8, np.float32))
        assert mujoco_model(env).geom_friction[0, 0] == info["friction"]
        frictions.append(info["friction"])
        starts.append(new_episode)
        new_episode = terminated or truncated
        if new_episode:
            _, info = env.reset()
            assert mujoco_model(env).geom_friction[0, 0] == info["friction"]
    return frictions, starts


def test_reference_rule_changes_only_at_the_first_episode_end_after_k_steps() -> None:
    """Episodes of 7 steps, K = 10: the world changes after agent steps 10, 20, 30, 40; the env
    adopts each change at its next reset, after steps 14, 21 and 35 (and 42, still to come)."""
    env = FrictionSchedule(gym.make("Ant-v5", max_episode_steps=7), change_every=10, values=VALUES)
    frictions, starts = run_frictions(env, 40)
    expected = [0.1] * 14 + [0.2] * 7 + [0.3] * 14 + [0.4] * 5
    assert frictions == expected
    changes = [step for step in range(1, 40) if frictions[step] != frictions[step - 1]]
    assert all(starts[step] for step in changes)  # never within an episode
    assert env.schedule.agent_steps == 40 and env.schedule.world_index == 4
    assert env.schedule.pending and env.friction == 0.4  # 0.5 is due at the episode's end


def test_at_once_rule_changes_every_k_steps() -> None:
    env = FrictionSchedule(
        gym.make("Ant-v5", max_episode_steps=7),
        change_every=10,
        values=VALUES,
        at_episode_end=False,
    )
    frictions, _ = run_frictions(env, 42)
    assert frictions == [0.1] * 10 + [0.2] * 10 + [0.3] * 10 + [0.4] * 10 + [0.5] * 2


def test_sequence_is_reproducible_from_the_schedule_seed() -> None:
    def frictions(seed: int, reset_seed: int) -> list[float]:
        env = FrictionSchedule(gym.make("Ant-v5"), change_every=3, seed=seed, at_episode_end=False)
        env.reset(seed=reset_seed)
        return [env.step(env.action_space.sample())[4]["friction"] for _ in range(30)]

    expected = [RandomValues(0.02, 2.0, seed=7)[i // 3] for i in range(30)]
    assert frictions(7, reset_seed=0) == frictions(7, reset_seed=1) == expected
    assert frictions(8, reset_seed=0) != expected


# ---------------------------------------------------------------------------- save and restore


def play(env: gym.Env[Any, Any], steps: int) -> np.ndarray:
    """Observation, reward and friction of ``steps`` seeded steps, resetting at episode ends."""
    rng = np.random.default_rng(42)
    observation, info = env.reset(seed=1)
    rows = [np.concatenate([observation, [0.0, info["friction"]]])]
    resets = 0
    for _ in range(steps):
        action = rng.uniform(-1, 1, 8).astype(np.float32)
        observation, reward, terminated, truncated, info = env.step(action)
        rows.append(np.concatenate([observation, [reward, info["friction"]]]))
        if terminated or truncated:
            resets += 1
            observation, info = env.reset(seed=100 + resets)
            rows.append(np.concatenate([observation, [0.0, info["friction"]]]))
    return np.array(rows)


@pytest.mark.parametrize("at_episode_end", [True, False])
def test_restored_schedule_continues_identically(tmp_path: Path, at_episode_end: bool) -> None:
    def slippery() -> FrictionSchedule[Any, Any]:
        return FrictionSchedule(
            gym.make("Ant-v5", max_episode_steps=7),
            change_every=10,
            seed=5,
            at_episode_end=at_episode_end,
        )

    original = slippery()
    original.reset(seed=0)
    for _ in range(12):  # mid-episode, a change due since step 10 (pending in the reference rule)
        original.step(np.zeros(8, np.float32))
    assert original.schedule.pending == at_episode_end
    save_checkpoint(tmp_path / "ckpt.pt", {"envs": [original.schedule_state]})
    saved = load_checkpoint(tmp_path / "ckpt.pt")["envs"][0]  # torch.load(weights_only=True)

    resumed = slippery()
    resumed.schedule_state = saved
    assert resumed.schedule_state == original.schedule_state
    assert mujoco_model(resumed).geom_friction[0, 0] == original.friction
    expected = play(original, 40)
    np.testing.assert_array_equal(play(resumed, 40), expected)
    assert len(set(expected[:, -1])) >= 3  # frictions changed along the way
    # what the reference does on resume, restarting the sequence, would not continue it
    assert not np.array_equal(play(slippery(), 40)[:, -1], expected[:, -1])


def test_restoring_another_schedule_is_refused() -> None:
    state = FrictionSchedule(gym.make("Ant-v5"), change_every=10, seed=5).schedule_state
    with pytest.raises(ValueError, match="values"):
        FrictionSchedule(gym.make("Ant-v5"), change_every=10, seed=6).schedule_state = state
    with pytest.raises(ValueError, match="change_every"):
        FrictionSchedule(gym.make("Ant-v5"), change_every=11, seed=5).schedule_state = state
    with pytest.raises(ValueError, match="'friction'"):
        env = ParameterSchedule(gym.make("Ant-v5"), "gravity_scale", change_every=10, values=[1])
        env.schedule_state = state
    with pytest.raises(ValueError, match="inconsistent"):
        FrictionSchedule(gym.make("Ant-v5"), change_every=10, seed=5).schedule_state = {
            **state,
            "index": 1,
        }
    with pytest.raises(ValueError, match="sequences differ"):
        FrictionSchedule(gym.make("Ant-v5"), change_every=10, seed=5).schedule_state = {
            **state,
            "value": 0.5,
        }
    with pytest.raises(ValueError, match="not a saved schedule_state"):
        FrictionSchedule(gym.make("Ant-v5"), change_every=10, seed=5).schedule_state = {
            "field": "friction",
            "inner": None,
        }


def test_stacked_wrappers_share_one_state_and_log_every_key() -> None:
    def make(seed: int) -> ParameterSchedule[Any, Any]:
        inner = SetParameter(gym.make("Ant-v5"), "gravity_scale", 0.5)
        middle = ParameterSchedule(
            inner, "body_mass_scale", change_every=4, low=0.5, high=2.0, seed=seed
        )
        return FrictionSchedule(middle, change_every=3, seed=seed, at_episode_end=False)

    env = gym.wrappers.RecordEpisodeStatistics(make(1))
    assert env.get_wrapper_attr("logged_info_keys") == (
        "friction",
        "body_mass_scale",
        "gravity_scale",
    )
    env.reset(seed=0)
    for _ in range(9):
        _, _, _, _, info = env.step(env.action_space.sample())
    values = env.get_wrapper_attr("parameter_values")
    assert values.keys() == {"friction", "body_mass_scale", "gravity_scale"}
    assert all(info[key] == value for key, value in values.items())
    state = env.get_wrapper_attr("schedule_state")
    assert state["inner"]["field"] == "body_mass_scale"
    assert state["inner"]["inner"] == {
        "version": 1,
        "field": "gravity_scale",
        "value": 0.5,
        "inner": None,
    }
    other = gym.wrappers.RecordEpisodeStatistics(make(1))
    other.set_wrapper_attr("schedule_state", state)
    assert other.get_wrapper_attr("schedule_state") == state
    with pytest.raises(ValueError, match="already controls"):
        SetParameter(make(1), "friction_scale", 2.0)


# ---------------------------------------------------------------------------- vector envs


def vector_frictions(
    make_vector: Callable[..., gym.vector.VectorEnv],
    at_episode_end: bool,
    autoreset: AutoresetMode = AutoresetMode.NEXT_STEP,
    steps: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Three sub-envs with episodes of 4, 5 and 7 steps, K = 12 agent steps: per vector step,
    each sub-env's friction and agent-step count."""
    lengths = (4, 5, 7)

    def make_env(length: int) -> Callable[[], gym.Env[Any, Any]]:
        return lambda: FrictionSchedule(
            gym.make("Ant-v5", max_episode_steps=length),
            change_every=12,
            values=VALUES,
            at_episode_end=at_episode_end,
            num_envs=3,
            reset_counts_as_step=None if autoreset == AutoresetMode.NEXT_STEP else False,
        )

    envs = make_vector(
        [make_env(length) for length in lengths], autoreset_mode=autoreset, copy=True
    )
    _, info = envs.reset(seed=0)
    frictions, counts = [], []
    for step in range(steps + 1):
        if step > 0:
            _, _, _, _, info = envs.step(np.zeros((3, 8), np.float32))
        frictions.append(info["friction"])
        counts.append([state["agent_steps"] for state in envs.get_attr("schedule_state")])
        assert envs.get_attr("friction") == tuple(info["friction"])  # attribute = info
    envs.close()
    return np.array(frictions), np.array(counts)


def expected_frictions(at_episode_end: bool, steps: int = 30) -> np.ndarray:
    """By the documented rule, for next-step autoreset: the world holds value ``n // K`` after
    ``n = 3 j`` agent steps (j vector steps); a sub-env adopts it at each reset (the vector step
    after its episode's last step) or at once."""
    rows = [[VALUES[0]] * 3]
    for j in range(1, steps + 1):
        world = VALUES[3 * (j - 1) // 12]  # the count when the vector step begins
        row = []
        for env, length in enumerate((4, 5, 7)):
            is_reset = j % (length + 1) == 0  # steps 1..L, reset at L+1, steps L+2..
            row.append(world if (is_reset or not at_episode_end) else rows[-1][env])
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("vector", [SyncVectorEnv, AsyncVectorEnv])
@pytest.mark.parametrize("at_episode_end", [True, False])
def test_sub_environments_share_one_world(
    vector: Callable[..., gym.vector.VectorEnv], at_episode_end: bool
) -> None:
    frictions, counts = vector_frictions(vector, at_episode_end)
    np.testing.assert_array_equal(counts, 3 * np.arange(31)[:, None].repeat(3, axis=1))
    np.testing.assert_array_equal(frictions, expected_frictions(at_episode_end))
    # every sub-env goes through the world's values in order (skipping those that came and
    # went during one of its episodes)
    for env in range(3):
        indices = [VALUES.index(value) for value in frictions[:, env]]
        assert indices == sorted(indices)


def test_same_step_autoreset_counts_only_steps() -> None:
    frictions, counts = vector_frictions(
        SyncVectorEnv, at_episode_end=False, autoreset=AutoresetMode.SAME_STEP
    )
    np.testing.assert_array_equal(counts, 3 * np.arange(31)[:, None].repeat(3, axis=1))
    # at once: every sub-env holds the world's value, n // K after n = 3 j agent steps (a
    # sub-env that reset within the step already reports the value of its next step)
    world = np.array([VALUES[3 * max(j - 1, 0) // 12] for j in range(31)])
    next_world = np.array([VALUES[3 * j // 12] for j in range(31)])
    assert ((frictions == world[:, None]) | (frictions == next_world[:, None])).all()
