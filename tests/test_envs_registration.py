"""SlipperyAnt through gymnasium.make, argument validation, the agents' protocol, doctests."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import cbp_rl.envs
from cbp_rl.envs import (
    FrictionSchedule,
    ParameterSchedule,
    RandomValues,
    SetFriction,
    SetParameter,
    mujoco_model,
)

ROOT = Path(__file__).resolve().parents[1]


def schedule_of(env: gym.Env[Any, Any]) -> FrictionSchedule[Any, Any]:
    inner = env
    while not isinstance(inner, FrictionSchedule):
        inner = inner.env  # type: ignore[attr-defined]
    return inner


OUT_OF_DATE = "ignore:.*SlipperyAnt-v4 is out of date:DeprecationWarning"


@pytest.mark.filterwarnings(OUT_OF_DATE)
@pytest.mark.parametrize(("version", "obs_size"), [("v4", 27), ("v5", 105)])
def test_slippery_ant_has_the_reference_defaults(version: str, obs_size: int) -> None:
    env = gym.make(f"SlipperyAnt-{version}")
    spec = gym.spec(f"SlipperyAnt-{version}")
    assert spec.max_episode_steps == 1000
    assert spec.kwargs == {
        "change_every": 2_000_000,
        "low": 0.02,
        "high": 2.0,
        "schedule_seed": 0,
        "at_episode_end": True,
        "num_envs": 1,  # ENV_PROTOCOL point 2: agents pass num_envs when it is here
        "reset_counts_as_step": None,  # agents with same-step autoreset pass False
    }
    schedule = schedule_of(env).schedule
    assert schedule.change_every == 2_000_000 and schedule.at_episode_end
    assert schedule.values.description() == {
        "kind": "log_uniform",
        "low": 0.02,
        "high": 2.0,
        "seed": 0,
    }
    observation, info = env.reset(seed=0)
    assert observation.shape == (obs_size,)
    friction = RandomValues(0.02, 2.0, seed=0)[0]
    assert info["friction"] == env.get_wrapper_attr("friction") == friction
    assert env.step(env.action_space.sample())[4]["friction"] == friction
    model = mujoco_model(env)
    np.testing.assert_array_equal(model.geom_friction, [[friction, 0.5, 0.5]] * model.ngeom)
    assert env.get_wrapper_attr("logged_info_keys") == ("friction",)


@pytest.mark.filterwarnings(OUT_OF_DATE)
def test_keyword_arguments_override_the_defaults() -> None:
    env = gym.make(
        "SlipperyAnt-v5",
        change_every=1000,
        low=0.02,
        high=2.0,
        schedule_seed=3,
        at_episode_end=True,
    )
    schedule = schedule_of(env).schedule
    assert schedule.change_every == 1000 and schedule.at_episode_end
    assert schedule.values.description()["seed"] == 3
    assert env.reset(seed=0)[1]["friction"] == RandomValues(0.02, 2.0, seed=3)[0]
    rebuilt = gym.make(env.spec)  # RecordConstructorArgs: the spec recreates the env
    assert rebuilt.get_wrapper_attr("schedule_state") == schedule_of(env).schedule_state
    listed = gym.make("SlipperyAnt-v4", values=[0.5, 1.5], cycle=True, change_every=5)
    listed.reset(seed=0)
    listed_schedule = schedule_of(listed).schedule
    assert [listed_schedule.values[i] for i in range(4)] == [0.5, 1.5, 0.5, 1.5]
    tuned = gym.make("SlipperyAnt-v5", ctrl_cost_weight=0.1, include_cfrc_ext_in_observation=False)
    assert tuned.observation_space.shape == (27,)


def test_make_vec_builds_num_envs_sub_envs_that_count_them() -> None:
    envs = gym.make_vec("SlipperyAnt-v5", num_envs=3, vectorization_mode="sync", change_every=30)
    assert envs.num_envs == 3
    envs.reset(seed=0)
    envs.step(np.zeros((3, 8), np.float32))
    states = envs.get_attr("schedule_state")
    assert [(state["num_envs"], state["agent_steps"]) for state in states] == [(3, 3)] * 3
    envs.close()


def test_module_prefix_registers_without_an_import() -> None:
    """Gymnasium 1.x has no plugin entry points: ``cbp_rl.envs:`` imports the registering module."""
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'cbp_rl.envs' not in sys.modules\n"
        "env = gym.make('cbp_rl.envs:SlipperyAnt-v5', change_every=10)\n"
        "print(env.reset(seed=0)[1]['friction'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == RandomValues(0.02, 2.0, seed=0)[0]


def test_importing_again_does_not_register_twice(recwarn: pytest.WarningsRecorder) -> None:
    cbp_rl.envs.register_envs()
    assert not [w for w in recwarn if "Overriding" in str(w.message)]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda env: FrictionSchedule(env, low=0.0), "low must be > 0"),
        (lambda env: FrictionSchedule(env, low=-1.0, high=2.0), "low must be > 0"),
        (lambda env: FrictionSchedule(env, low=1.0, high=0.5), "high must be >= low"),
        (lambda env: FrictionSchedule(env, change_every=0), "change_every must be a positive"),
        (lambda env: FrictionSchedule(env, change_every=-5), "change_every must be a positive"),
        (lambda env: FrictionSchedule(env, change_every=2.5), "change_every must be a positive"),
        (lambda env: FrictionSchedule(env, num_envs=0), "num_envs must be a positive"),
        (lambda env: FrictionSchedule(env, seed=-1), "seed must be an integer >= 0"),
        (lambda env: FrictionSchedule(env, values=[]), "values must not be empty"),
        (lambda env: FrictionSchedule(env, values=[0.5, -0.1]), r"values\[1\] -0.1 is not"),
        (lambda env: SetParameter(env, "no_such_field", 1.0), "unknown model parameter"),
        (
            lambda env: SetParameter(env, "body_mass_scale", 0.0),
            r"not a valid body_mass_scale: .* > 0",
        ),
        (lambda env: SetParameter(env, "nq", 2.0), "no float field"),  # an int, not a float field
        (lambda env: SetFriction(env, friction=float("nan")), "not a valid friction"),
        (
            lambda env: ParameterSchedule(env, "gravity_scale", change_every=5),
            "either values",
        ),
        (
            lambda env: ParameterSchedule(
                env, "gravity_scale", change_every=5, low=0.5, high=1, values=[1]
            ),
            "not both",
        ),
        (
            lambda env: ParameterSchedule(
                env, "gravity_scale", change_every=5, low=0.5, high=1, cycle=True
            ),
            "cycle=True needs",
        ),
    ],
)
def test_invalid_arguments_raise_value_errors_naming_the_problem(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(gym.make("Ant-v5"))


def test_registered_kwargs_are_validated_too() -> None:
    with pytest.raises(ValueError, match="high must be >= low"):
        gym.make("SlipperyAnt-v5", low=2.0, high=0.02)


def test_a_non_mujoco_env_is_refused() -> None:
    with pytest.raises(TypeError, match="not a Gymnasium MuJoCo environment"):
        SetFriction(gym.make("CartPole-v1"), friction=0.5)


def test_schedule_state_is_plain_data() -> None:
    """ENV_PROTOCOL point 1: exact builtin types only, as torch.load(weights_only=True) needs."""
    env = gym.make("SlipperyAnt-v5")
    env.reset(seed=0)
    env.step(env.action_space.sample())

    def check(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert type(key) is str
                check(item)
        elif isinstance(value, list):
            for item in value:
                check(item)
        else:
            assert type(value) in (int, float, bool, str, type(None)), (value, type(value))

    check(env.get_wrapper_attr("schedule_state"))


def test_docstring_examples_run() -> None:
    for module in (cbp_rl.envs.wrappers, cbp_rl.envs.schedules, cbp_rl.envs.parameters):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(cbp_rl.envs.wrappers).attempted >= 10
