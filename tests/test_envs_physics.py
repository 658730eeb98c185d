"""Physics of in-place model changes: they are the model MuJoCo compiles from the edited XML,
and a low friction really makes the Ant slip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import gymnasium.envs.mujoco
import mujoco
import numpy as np
import pytest

from cbp_rl.envs import FrictionSchedule, SetFriction, SetParameter, mujoco_model

ANT_XML = (Path(gymnasium.envs.mujoco.__file__).parent / "assets" / "ant.xml").read_text()


def edited_ant(tmp_path: Path, old: str, new: str, count: int = 1) -> str:
    """Path of a copy of Gymnasium's ant.xml with ``old`` replaced by ``new`` (``count`` times)."""
    assert ANT_XML.count(old) == count, f"{old!r} is not in ant.xml {count} times"
    path = tmp_path / "ant_edited.xml"
    path.write_text(ANT_XML.replace(old, new))
    return str(path)


def rollout(env: gym.Env[Any, Any], steps: int = 150, seed: int = 0) -> np.ndarray:
    """Observations and rewards of ``steps`` seeded random actions from ``reset(seed)``."""
    observation, _ = env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 8)).astype(np.float32)
    rows = [np.append(observation, 0.0)]
    for action in actions:
        observation, reward, terminated, truncated, _ = env.step(action)
        rows.append(np.append(observation, reward))
        if terminated or truncated:
            break
    return np.array(rows)


def float_fields(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Every float array of the model, its options and its statistics."""
    fields = {}
    for owner, prefix in ((model, ""), (model.opt, "opt."), (model.stat, "stat.")):
        for name in dir(owner):
            value = getattr(owner, name, None) if not name.startswith("_") else None
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                fields[prefix + name] = value.copy()
            elif isinstance(value, float):
                fields[prefix + name] = np.array(value)
    return fields


def assert_same_model(a: mujoco.MjModel, b: mujoco.MjModel) -> None:
    fields_a, fields_b = float_fields(a), float_fields(b)
    assert fields_a.keys() == fields_b.keys()
    different = [name for name in fields_a if not np.array_equal(fields_a[name], fields_b[name])]
    assert different == []


def test_friction_sets_every_geom_and_keeps_torsional_and_rolling(tmp_path: Path) -> None:
    env = SetFriction(gym.make("Ant-v5"), friction=0.1)
    model = mujoco_model(env)
    assert model.ngeom == 14  # the floor and 13 ant geoms
    np.testing.assert_array_equal(model.geom_friction[:, 0], 0.1)
    np.testing.assert_array_equal(model.geom_friction[:, 1:], 0.5)  # the reference's "f 0.5 0.5"
    env.friction = 1.7
    np.testing.assert_array_equal(model.geom_friction[:, 0], 1.7)
    env.restore_base_values()
    np.testing.assert_array_equal(model.geom_friction, [[1.0, 0.5, 0.5]] * 14)


def test_friction_in_place_gives_the_trajectory_of_the_model_compiled_with_it(
    tmp_path: Path,
) -> None:
    xml = edited_ant(tmp_path, 'friction="1 0.5 0.5"', 'friction="0.3 0.5 0.5"')
    compiled = gym.make("Ant-v5", xml_file=xml)
    in_place = SetFriction(gym.make("Ant-v5"), friction=0.3)
    scheduled = FrictionSchedule(gym.make("Ant-v5"), values=[0.3])
    assert_same_model(mujoco_model(in_place), mujoco_model(compiled))
    expected = rollout(compiled)
    assert len(expected) > 50
    np.testing.assert_array_equal(rollout(in_place), expected)
    np.testing.assert_array_equal(rollout(scheduled), expected)
    # and friction matters here: the default friction gives another trajectory
    assert not np.array_equal(rollout(gym.make("Ant-v5"))[: len(expected)], expected)


@pytest.mark.parametrize(
    ("field", "value", "old", "new", "count"),
    [
        ("body_mass_scale", 2.0, 'density="5.0"', 'density="10.0"', 1),
        ("body_mass_scale", 0.5, 'density="5.0"', 'density="2.5"', 1),
        ("actuator_gear_scale", 0.5, 'gear="150"', 'gear="75"', 8),
        ("gravity_scale", 0.5, 'timestep="0.01"', 'timestep="0.01" gravity="0 0 -4.905"', 1),
        ("dof_damping", 2.0, 'armature="1" damping="1"', 'armature="1" damping="2"', 1),
    ],
)
def test_parameter_in_place_is_the_model_compiled_with_it(
    tmp_path: Path, field: str, value: float, old: str, new: str, count: int
) -> None:
    """Masses and gears enter derived constants (invweight0, actuator_acc0, the solver's
    meaninertia...): after the in-place change every float of the model equals the compiled one's
    and trajectories are identical. Scales are powers of two, so the products are exact."""
    compiled = gym.make("Ant-v5", xml_file=edited_ant(tmp_path, old, new, count))
    in_place = SetParameter(gym.make("Ant-v5"), field, value)
    assert_same_model(mujoco_model(in_place), mujoco_model(compiled))
    np.testing.assert_array_equal(rollout(in_place), rollout(compiled))


def test_mass_change_needs_the_derived_constants(tmp_path: Path) -> None:
    """Without recomputing them, a mass change is not the compiled model (the test above bites)."""
    compiled = gym.make("Ant-v5", xml_file=edited_ant(tmp_path, 'density="5.0"', 'density="10.0"'))
    naive = gym.make("Ant-v5")
    model = mujoco_model(naive)
    model.body_mass[:] *= 2
    model.body_inertia[:] *= 2
    assert not np.array_equal(model.dof_invweight0, mujoco_model(compiled).dof_invweight0)
    expected = rollout(compiled)
    assert not np.array_equal(rollout(naive)[: len(expected)], expected)


def test_any_mass_scale_matches_the_compiled_model_to_rounding(tmp_path: Path) -> None:
    compiled = gym.make("Ant-v5", xml_file=edited_ant(tmp_path, 'density="5.0"', 'density="6.5"'))
    in_place = SetParameter(gym.make("Ant-v5"), "body_mass_scale", 1.3)
    fields_a, fields_b = float_fields(mujoco_model(in_place)), float_fields(mujoco_model(compiled))
    for name in fields_a:
        np.testing.assert_allclose(fields_a[name], fields_b[name], rtol=1e-12, err_msg=name)


def test_restoring_base_values_gives_back_the_original_model() -> None:
    original = mujoco_model(gym.make("Ant-v5"))
    env = gym.make("Ant-v5")
    wrappers = [
        SetParameter(env, "body_mass_scale", 3.0),
    ]
    wrappers.append(SetParameter(wrappers[-1], "actuator_gear_scale", 0.7))
    wrappers.append(SetParameter(wrappers[-1], "gravity_scale", 0.2))
    wrappers.append(SetFriction(wrappers[-1], friction=0.05))
    for wrapper in reversed(wrappers):
        wrapper.restore_base_values()
    assert_same_model(mujoco_model(env), original)


def contact_friction_ratios(env: gym.Env[Any, Any]) -> list[float]:
    """``|tangential force| / normal force`` of every active contact of the current state."""
    model, data = mujoco_model(env), env.unwrapped.data  # type: ignore[attr-defined]
    force = np.zeros(6)
    ratios = []
    for contact in range(data.ncon):
        mujoco.mj_contactForce(model, data, contact, force)
        if force[0] > 1e-9:
            ratios.append(float(np.linalg.norm(force[1:3]) / force[0]))
    return ratios


def test_low_friction_makes_the_ant_slip() -> None:
    """Same state, same actions: at friction 0.02 no contact holds more tangential force than
    2% of its normal force (the feet slide), at 2.0 the feet grip far beyond that, and the ant
    ends elsewhere."""
    results = {}
    for friction in (0.02, 2.0):
        env = SetFriction(gym.make("Ant-v5", terminate_when_unhealthy=False), friction=friction)
        env.reset(seed=0)
        actions = np.random.default_rng(0).uniform(-1, 1, (200, 8)).astype(np.float32)
        ratios, positions = [], []
        for action in actions:
            env.step(action)
            ratios += contact_friction_ratios(env)
            positions.append(env.unwrapped.data.qpos[:3].copy())  # type: ignore[attr-defined]
        results[friction] = (np.array(ratios), np.array(positions))
    low_ratios, low_path = results[0.02]
    high_ratios, high_path = results[2.0]
    assert len(low_ratios) > 100 and len(high_ratios) > 100
    assert low_ratios.max() <= 0.02 * (1 + 1e-9)  # the friction cone of mu = 0.02
    assert high_ratios.max() <= 2.0 * (1 + 1e-9)
    assert high_ratios.max() > 0.5  # grip that friction 0.02 cannot give
    assert np.abs(low_path - high_path).max() > 0.1  # metres apart
