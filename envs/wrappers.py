"""Gymnasium wrappers that change a MuJoCo model's physics in place, fixed or on a schedule.

================================  ================================================================
:class:`SetParameter`             one model parameter held at a value you can change at any time
:class:`ParameterSchedule`        one model parameter changed every ``change_every`` agent steps
:class:`SetFriction`              ``SetParameter`` for the sliding friction of every geom
:class:`FrictionSchedule`         ``ParameterSchedule`` for it (SlipperyAnt), reference defaults
================================  ================================================================

Every wrapper puts its value in ``info`` at each step and reset (key :attr:`info_key`:
``"friction"``, ``"gravity_scale"``, ...), lists those keys in ``logged_info_keys`` and exposes a
read/write ``schedule_state`` (see ENV_PROTOCOL: agents save ``envs.get_attr("schedule_state")``
and restore it with ``envs.set_attr``). Wrappers on different parameters stack; the outermost
one's ``schedule_state`` and ``logged_info_keys`` include those of the wrappers inside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
from gymnasium.core import ActType, ObsType

from cbp_rl.envs.parameters import ModelParameter, model_parameter, mujoco_model
from cbp_rl.envs.schedules import STATE_VERSION, ChangeSchedule, make_values

REFERENCE_CHANGE_EVERY = 2_000_000
"""The reference's SlipperyAnt: the friction changes every 2e6 agent steps..."""
REFERENCE_LOW, REFERENCE_HIGH = 0.02, 2.0
"""...to a value drawn log-uniformly on [0.02, 2] (median 0.2)."""


class _ParameterWrapper(gym.Wrapper[ObsType, ActType, ObsType, ActType]):
    """What the wrappers share: the parameter, its ``info`` entry and state chaining."""

    def __init__(self, env: gym.Env[ObsType, ActType], field: str) -> None:
        gym.Wrapper.__init__(self, env)
        self.parameter: ModelParameter = model_parameter(mujoco_model(env), field)
        inner = _parameter_wrappers(env)
        for other in inner:
            shared = self.parameter.fields & other.parameter.fields
            if shared:
                raise ValueError(
                    f"{field!r} writes {sorted(shared)}, which the inner wrapper "
                    f"{type(other).__name__} on {other.parameter.name!r} already controls: "
                    "use one wrapper per model field"
                )
        self._inner: _ParameterWrapper[Any, Any] | None = inner[0] if inner else None

    @property
    def info_key(self) -> str:
        """The ``info`` key of the value: the parameter's name (``<field>_scale`` for fields)."""
        return self.parameter.info_key

    @property
    def value(self) -> float:
        """The value in force."""
        raise NotImplementedError

    @property
    def logged_info_keys(self) -> tuple[str, ...]:
        """Numeric ``info`` entries set at every step and reset: this wrapper's and inner ones'."""
        inner = self._inner.logged_info_keys if self._inner is not None else ()
        return (self.info_key, *inner)

    @property
    def parameter_values(self) -> dict[str, float]:
        """The values in force, by ``info`` key: this wrapper's and inner ones'."""
        inner = self._inner.parameter_values if self._inner is not None else {}
        return {self.info_key: self.value, **inner}

    def restore_base_values(self) -> None:
        """Put the model's base values back (as they were when the wrapper was created)."""
        self.parameter.restore()

    def step(self, action: ActType) -> tuple[ObsType, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        info[self.info_key] = self.value
        return observation, reward, terminated, truncated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        observation, info = self.env.reset(seed=seed, options=options)
        info[self.info_key] = self.value
        return observation, info

    def _inner_state(self) -> dict[str, Any] | None:
        return self._inner.schedule_state if self._inner is not None else None

    def _load_inner_state(self, state: Mapping[str, Any]) -> None:
        inner_state = state.get("inner")
        if (inner_state is None) != (self._inner is None):
            raise ValueError(
                "the saved schedule state and this environment wrap different numbers of "
                "parameter wrappers: create the environment as in the saved run"
            )
        if self._inner is not None and inner_state is not None:
            self._inner.schedule_state = inner_state

    def _check_field(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"a schedule state must be a dict, got {type(state).__name__}")
        if state.get("field") != self.parameter.name:
            raise ValueError(
                f"the saved schedule state is for {state.get('field')!r}, this wrapper controls "
                f"{self.parameter.name!r}: create the environment as in the saved run"
            )

    @property
    def schedule_state(self) -> dict[str, Any]:
        raise NotImplementedError

    @schedule_state.setter
    def schedule_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError


def _parameter_wrappers(env: gym.Env[Any, Any]) -> list[_ParameterWrapper[Any, Any]]:
    """The parameter wrappers inside ``env`` (``env`` included), outermost first."""
    found = []
    while isinstance(env, gym.Wrapper):
        if isinstance(env, _ParameterWrapper):
            found.append(env)
        env = env.env
    return found


class SetParameter(_ParameterWrapper[ObsType, ActType], gym.utils.RecordConstructorArgs):
    """Holds a physical parameter of a MuJoCo env at a value, changed in place.

    ``field`` is a named parameter (``"friction"``, ``"friction_scale"``, ``"gravity_scale"``,
    ``"body_mass_scale"``, ``"actuator_gear_scale"``) or a float field of ``mujoco.MjModel``
    (``"dof_damping"``, ``"opt.viscosity"``), scaled; see :mod:`cbp_rl.envs.parameters`. The base
    values are copied when the wrapper is created; :attr:`value` can be set at any time, and the
    change holds from the next simulation step (no rebuild, the episode goes on).

    Examples:
        >>> import gymnasium as gym
        >>> from cbp_rl.envs import SetParameter
        >>> env = SetParameter(gym.make("Ant-v5"), "gravity_scale", 0.5)
        >>> env.unwrapped.model.opt.gravity.tolist()
        [0.0, 0.0, -4.905]
        >>> _, info = env.reset(seed=0)
        >>> info["gravity_scale"]
        0.5
        >>> env.value = 2.0
        >>> env.unwrapped.model.opt.gravity.tolist()
        [0.0, 0.0, -19.62]

    Args:
        env: a Gymnasium MuJoCo environment (``env.unwrapped.model`` is a ``mujoco.MjModel``).
        field: the parameter.
        value: its value (absolute friction, or a scale of the base values).

    Raises:
        TypeError: ``env`` is not a MuJoCo environment.
        ValueError: unknown ``field``, invalid ``value``, or an inner wrapper already controls it.
    """

    def __init__(self, env: gym.Env[ObsType, ActType], field: str, value: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, field=field, value=value)
        _ParameterWrapper.__init__(self, env, field)
        self._value = self.parameter.check(value)
        self.parameter.apply(self._value)

    @property
    def value(self) -> float:
        """The value in force; set it to change the model in place."""
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        self._value = self.parameter.check(value)
        self.parameter.apply(self._value)

    @property
    def schedule_state(self) -> dict[str, Any]:
        """The value (and inner wrappers' states); setting it applies the saved value."""
        return {
            "version": STATE_VERSION,
            "field": self.parameter.name,
            "value": float(self._value),
            "inner": self._inner_state(),
        }

    @schedule_state.setter
    def schedule_state(self, state: Mapping[str, Any]) -> None:
        self._check_field(state)
        self._load_inner_state(state)
        self.value = state["value"]


class ParameterSchedule(_ParameterWrapper[ObsType, ActType], gym.utils.RecordConstructorArgs):
    """Changes a physical parameter of a MuJoCo env every ``change_every`` agent steps.

    The world's value after ``n`` agent steps is value number ``n // change_every`` of the
    sequence (value 0 from the start). With ``at_episode_end`` (the reference's rule) the env
    adopts it at its next reset, so an episode never changes physics midway; otherwise at once,
    from the next step. Values: ``values`` (an explicit list, held at its last value or repeated
    with ``cycle``) or a draw on ``[low, high]`` from ``seed`` (log-uniform, or uniform with
    ``log_uniform=False``). The model is changed in place, never rebuilt.

    In a vector env every sub-env runs its own copy: give ``num_envs`` (the number of sub-envs
    stepping in lockstep) so that each step counts ``num_envs`` agent steps; all copies then hold
    the same count, agree on the world's value, and each adopts it at its own episode boundary.

    Examples:
        >>> import gymnasium as gym
        >>> from cbp_rl.envs import ParameterSchedule
        >>> env = ParameterSchedule(
        ...     gym.make("Ant-v5"), "body_mass_scale", values=[1.0, 2.0], change_every=3,
        ...     at_episode_end=False,
        ... )
        >>> _ = env.reset(seed=0)
        >>> [env.step(env.action_space.sample())[4]["body_mass_scale"] for _ in range(5)]
        [1.0, 1.0, 1.0, 2.0, 2.0]

    Args:
        env: a Gymnasium MuJoCo environment.
        field: the parameter (see :class:`SetParameter`).
        change_every: agent steps between changes of the world's value (``K > 0``).
        low: the lower end of the random values (``0 < low <= high`` for log-uniform).
        high: the upper end of the random values.
        seed: the seed of the random values; the same seed gives the same sequence.
        values: an explicit list of values instead of a random draw.
        cycle: repeat ``values`` after the last one (otherwise stay at the last one).
        log_uniform: draw log-uniformly (default) or uniformly on ``[low, high]``.
        at_episode_end: adopt a change at the next reset (default) or at once.
        num_envs: sub-environments stepping in lockstep (each step counts ``num_envs``).
        reset_counts_as_step: see :class:`cbp_rl.envs.schedules.ChangeSchedule`; ``None`` counts a
            reset as a step when ``num_envs > 1`` (Gymnasium's default next-step autoreset).

    Raises:
        TypeError: ``env`` is not a MuJoCo environment.
        ValueError: an unknown ``field``, ``low <= 0``, ``high < low``, ``change_every <= 0``,
            values invalid for the parameter, both or neither of ``values`` and ``low``/``high``.
    """

    def __init__(
        self,
        env: gym.Env[ObsType, ActType],
        field: str,
        *,
        change_every: int,
        low: float | None = None,
        high: float | None = None,
        seed: int = 0,
        values: Sequence[float] | None = None,
        cycle: bool = False,
        log_uniform: bool = True,
        at_episode_end: bool = True,
        num_envs: int = 1,
        reset_counts_as_step: bool | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            field=field,
            change_every=change_every,
            low=low,
            high=high,
            seed=seed,
            values=values,
            cycle=cycle,
            log_uniform=log_uniform,
            at_episode_end=at_episode_end,
            num_envs=num_envs,
            reset_counts_as_step=reset_counts_as_step,
        )
        _ParameterWrapper.__init__(self, env, field)
        sequence = make_values(
            low=low, high=high, seed=seed, values=values, cycle=cycle, log_uniform=log_uniform
        )
        sequence.check_values(self.parameter.check)
        self.schedule = ChangeSchedule(
            sequence,
            change_every=change_every,
            at_episode_end=at_episode_end,
            num_envs=num_envs,
            reset_counts_as_step=reset_counts_as_step,
        )
        self.parameter.apply(self.schedule.value)

    @property
    def value(self) -> float:
        """The value in force."""
        return self.schedule.value

    def step(self, action: ActType) -> tuple[ObsType, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.schedule.before_step():
            self.parameter.apply(self.schedule.value)
        result = super().step(action)
        self.schedule.after_step()
        return result

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        if self.schedule.at_reset():
            self.parameter.apply(self.schedule.value)
        return super().reset(seed=seed, options=options)

    @property
    def schedule_state(self) -> dict[str, Any]:
        """Counters, value index, pending change, value-sequence identity (its seed), current
        value and inner wrappers' states: plain data, safe for ``torch.load(weights_only=True)``.
        Setting it continues that schedule exactly and applies its value to the model."""
        return {
            **self.schedule.state_dict(),
            "field": self.parameter.name,
            "inner": self._inner_state(),
        }

    @schedule_state.setter
    def schedule_state(self, state: Mapping[str, Any]) -> None:
        self._check_field(state)
        self._load_inner_state(state)
        self.schedule.load_state_dict(state)
        self.parameter.apply(self.schedule.value)


class SetFriction(SetParameter[ObsType, ActType]):
    """Sets the sliding friction of every geom of a MuJoCo env (and of its contact pairs).

    MuJoCo gives a contact the larger friction of its two geoms, so lowering the floor alone
    would not make a robot slip: every geom gets ``friction``. Torsional and rolling friction
    keep their base values, which are kept to restore (:meth:`restore_base_values`).

    Examples:
        >>> import gymnasium as gym
        >>> from cbp_rl.envs import SetFriction
        >>> env = SetFriction(gym.make("Ant-v5"), friction=0.1)
        >>> env.unwrapped.model.geom_friction[0].tolist()
        [0.1, 0.5, 0.5]
        >>> env.friction = 1.5
        >>> env.unwrapped.model.geom_friction[:, 0].max()
        np.float64(1.5)
    """

    def __init__(self, env: gym.Env[ObsType, ActType], friction: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, friction=friction)
        SetParameter.__init__(self, env, "friction", friction)

    @property
    def friction(self) -> float:
        """The sliding friction in force; set it to change every geom's."""
        return self.value

    @friction.setter
    def friction(self, friction: float) -> None:
        self.value = friction


class FrictionSchedule(ParameterSchedule[ObsType, ActType]):
    """The sliding friction of every geom on a schedule: SlipperyAnt's wrapper.

    Defaults are the reference's: a change every 2e6 agent steps, adopted at the next episode
    end, to a value drawn log-uniformly on [0.02, 2] from ``seed``. ``values`` (an explicit list,
    ``cycle`` to repeat it) replaces the random draw. ``info["friction"]`` and :attr:`friction`
    hold the friction in force.

    Examples:
        >>> import gymnasium as gym
        >>> from cbp_rl.envs import FrictionSchedule
        >>> env = FrictionSchedule(gym.make("Ant-v5"), change_every=1000, seed=3)
        >>> _, info = env.reset(seed=0)
        >>> bool(info["friction"] == env.friction == env.unwrapped.model.geom_friction[0, 0])
        True
        >>> 0.02 <= env.friction <= 2.0
        True

    Args: as :class:`ParameterSchedule`, without ``field`` and ``log_uniform``.
    """

    def __init__(
        self,
        env: gym.Env[ObsType, ActType],
        *,
        change_every: int = REFERENCE_CHANGE_EVERY,
        low: float = REFERENCE_LOW,
        high: float = REFERENCE_HIGH,
        seed: int = 0,
        values: Sequence[float] | None = None,
        cycle: bool = False,
        at_episode_end: bool = True,
        num_envs: int = 1,
        reset_counts_as_step: bool | None = None,
    ) -> None:
        arguments: dict[str, Any] = {
            "change_every": change_every,
            "low": low,
            "high": high,
            "seed": seed,
            "values": values,
            "cycle": cycle,
            "at_episode_end": at_episode_end,
            "num_envs": num_envs,
            "reset_counts_as_step": reset_counts_as_step,
        }
        gym.utils.RecordConstructorArgs.__init__(self, **arguments)
        if values is not None:  # the list replaces the default range
            arguments.update(low=None, high=None)
        ParameterSchedule.__init__(self, env, "friction", **arguments)

    @property
    def friction(self) -> float:
        """The sliding friction in force."""
        return self.value
