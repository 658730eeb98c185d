"""Physical parameters of a compiled MuJoCo model, changed in place.

A :class:`ModelParameter` is one scalar knob on an ``mujoco.MjModel``: it copies the base values
of the fields it writes when it is created, and ``apply(value)`` writes ``value`` (an absolute
friction) or ``base * value`` (a scale) into the model. An in-place change is made equivalent to
compiling the model with the new values: where the compiler derives constants from the changed
fields (masses and gears enter ``body_subtreemass``, ``dof_invweight0``, ``actuator_acc0``, the
solver's ``stat.meaninertia``, ...), they are recomputed (:func:`refresh_model_constants`).
``tests/test_envs_physics.py`` checks every named parameter against a model compiled from XML.

Named parameters (``PARAMETERS``):

==========================  ======================================================================
``friction``                sliding friction of every geom and contact pair set to the value
``friction_scale``          every geom's sliding friction times the value
``gravity_scale``           the gravity vector times the value
``body_mass_scale``         every body's mass and rotational inertia times the value (the density)
``actuator_gear_scale``     every actuator's gear (its force per unit control) times the value
==========================  ======================================================================

Any other name is read as a float field of ``mujoco.MjModel`` (``"dof_damping"``) or of its
options (``"opt.viscosity"``), scaled relative to its base values, with the constants recomputed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np


def mujoco_model(env: gym.Env[Any, Any]) -> mujoco.MjModel:
    """The compiled model of a Gymnasium MuJoCo env (``env.unwrapped.model``)."""
    model = getattr(env.unwrapped, "model", None)
    if not isinstance(model, mujoco.MjModel):
        raise TypeError(
            f"{type(env.unwrapped).__name__} is not a Gymnasium MuJoCo environment: its "
            "`unwrapped.model` is not a mujoco.MjModel. Wrap a MuJoCo env such as "
            "gymnasium.make('Ant-v5')."
        )
    return model


def refresh_model_constants(model: mujoco.MjModel, scratch: mujoco.MjData) -> None:
    """Recompute what the compiler derives from masses, inertias, gears, armature, ...

    ``mj_setConst`` recomputes the quantities that depend on ``qpos0`` (``body_subtreemass``,
    ``dof_M0``, ``*_invweight0``, ``actuator_acc0``, ...). Some MuJoCo releases leave the model
    statistics alone; ``stat.meanmass`` and ``stat.meaninertia`` (which scales the constraint
    solver's tolerance) are then recomputed here the way the compiler does it, summing in the same
    order so the result is bit-identical to a compiled model. ``scratch`` is a spare ``MjData``
    of this model: the simulation's own data is not touched.
    """
    mujoco.mj_setConst(model, scratch)
    if model.nbody > 1:
        model.stat.meanmass = _sequential_mean(model.body_mass[1:])
    if model.nv > 0:
        scratch.qpos[:] = model.qpos0
        mujoco.mj_kinematics(model, scratch)
        mujoco.mj_comPos(model, scratch)
        mujoco.mj_crb(model, scratch)
        diagonal = scratch.M[model.M_rowadr + model.M_rownnz - 1]
        model.stat.meaninertia = _sequential_mean(diagonal)


def _sequential_mean(values: np.ndarray) -> float:
    total = 0.0
    for value in values.tolist():  # left to right, as MuJoCo's compiler sums
        total += value
    return total / len(values)


class ModelParameter(ABC):
    """One scalar parameter of a compiled MuJoCo model, applied in place.

    Attributes:
        name: the parameter's name (``"friction"``, ``"body_mass_scale"``, ``"dof_damping"``...).
        info_key: the key under which wrappers report its value in ``info``.
        fields: the ``MjModel`` fields it writes; two parameters writing the same field conflict.
        minimum: the smallest valid value, itself valid unless ``positive``.
        positive: values must be above ``minimum`` (a body needs a positive mass).
    """

    name: str
    info_key: str
    fields: frozenset[str]
    minimum: float = 0.0
    positive: bool = False

    def __init__(self, model: mujoco.MjModel) -> None:
        self.model = model
        self._scratch: mujoco.MjData | None = None

    @abstractmethod
    def apply(self, value: float) -> None:
        """Write ``value`` into the model (relative to the base values for scales)."""

    @abstractmethod
    def restore(self) -> None:
        """Put the base values back (the model as it was when this parameter was created)."""

    def check(self, value: float, what: str = "value") -> float:
        """``value`` as a float; ``ValueError`` if it is not finite or below ``minimum``."""
        value = float(value)
        too_small = value <= self.minimum if self.positive else value < self.minimum
        if not math.isfinite(value) or too_small:
            bound = f"{'>' if self.positive else '>='} {self.minimum:g}"
            raise ValueError(
                f"{what} {value!r} is not a valid {self.name}: it must be a finite number {bound}"
            )
        return value

    def _refresh_constants(self) -> None:
        if self._scratch is None:
            self._scratch = mujoco.MjData(self.model)
        refresh_model_constants(self.model, self._scratch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SlidingFriction(ModelParameter):
    """``friction``: the sliding friction of every geom and contact pair, set to the value.

    MuJoCo gives a contact the larger friction of its two geoms (at equal priority), so every
    geom gets the value, the floor and the robot alike; torsional and rolling friction keep their
    base values. Nothing is derived from friction: no constants need recomputing.
    """

    name = "friction"
    info_key = "friction"
    fields = frozenset({"geom_friction", "pair_friction"})

    def __init__(self, model: mujoco.MjModel) -> None:
        super().__init__(model)
        self.base_geom_friction = model.geom_friction.copy()
        self.base_pair_friction = model.pair_friction.copy()

    def apply(self, value: float) -> None:
        self.model.geom_friction[:, 0] = value
        self.model.pair_friction[:, :2] = value  # explicit pairs: both tangential directions

    def restore(self) -> None:
        self.model.geom_friction[:] = self.base_geom_friction
        self.model.pair_friction[:] = self.base_pair_friction


class SlidingFrictionScale(SlidingFriction):
    """``friction_scale``: every geom's (and pair's) base sliding friction times the value."""

    name = "friction_scale"
    info_key = "friction_scale"

    def apply(self, value: float) -> None:
        self.model.geom_friction[:, 0] = self.base_geom_friction[:, 0] * value
        self.model.pair_friction[:, :2] = self.base_pair_friction[:, :2] * value


class GravityScale(ModelParameter):
    """``gravity_scale``: the base gravity vector times the value (0 is weightless)."""

    name = "gravity_scale"
    info_key = "gravity_scale"
    fields = frozenset({"opt.gravity"})

    def __init__(self, model: mujoco.MjModel) -> None:
        super().__init__(model)
        self.base_gravity = model.opt.gravity.copy()

    def apply(self, value: float) -> None:
        self.model.opt.gravity[:] = self.base_gravity * value

    def restore(self) -> None:
        self.model.opt.gravity[:] = self.base_gravity


class BodyMassScale(ModelParameter):
    """``body_mass_scale``: every body's mass and rotational inertia times the value.

    Scaling both is scaling the density of every body, what the compiler does for
    ``<geom density=...>`` times the value; the derived constants are recomputed.
    """

    name = "body_mass_scale"
    info_key = "body_mass_scale"
    fields = frozenset({"body_mass", "body_inertia"})
    positive = True

    def __init__(self, model: mujoco.MjModel) -> None:
        super().__init__(model)
        self.base_mass = model.body_mass.copy()
        self.base_inertia = model.body_inertia.copy()

    def apply(self, value: float) -> None:
        self.model.body_mass[:] = self.base_mass * value
        self.model.body_inertia[:] = self.base_inertia * value
        self._refresh_constants()

    def restore(self) -> None:
        self.model.body_mass[:] = self.base_mass
        self.model.body_inertia[:] = self.base_inertia
        self._refresh_constants()


class ActuatorGearScale(ModelParameter):
    """``actuator_gear_scale``: every actuator's gear times the value (force = gear * control)."""

    name = "actuator_gear_scale"
    info_key = "actuator_gear_scale"
    fields = frozenset({"actuator_gear"})

    def __init__(self, model: mujoco.MjModel) -> None:
        super().__init__(model)
        self.base_gear = model.actuator_gear.copy()

    def apply(self, value: float) -> None:
        self.model.actuator_gear[:] = self.base_gear * value
        self._refresh_constants()

    def restore(self) -> None:
        self.model.actuator_gear[:] = self.base_gear
        self._refresh_constants()


class FieldScale(ModelParameter):
    """Any float field of ``MjModel`` (``"dof_damping"``) or of ``MjModel.opt``
    (``"opt.viscosity"``), scaled relative to its base values; constants are recomputed."""

    def __init__(self, model: mujoco.MjModel, field: str) -> None:
        super().__init__(model)
        self.name = field
        self.info_key = f"{field}_scale"
        self.fields = frozenset({field})
        self._owner, self._attribute = _float_field(model, field)
        base = getattr(self._owner, self._attribute)
        self._is_array = isinstance(base, np.ndarray)
        self.base = base.copy() if self._is_array else float(base)

    def apply(self, value: float) -> None:
        self._write(self.base * value)
        self._refresh_constants()

    def restore(self) -> None:
        self._write(self.base)
        self._refresh_constants()

    def _write(self, new: Any) -> None:
        if self._is_array:
            getattr(self._owner, self._attribute)[...] = new
        else:
            setattr(self._owner, self._attribute, float(new))


def _float_field(model: mujoco.MjModel, field: str) -> tuple[Any, str]:
    """The object and attribute name holding a float field of the model; ``ValueError`` if none."""
    owner: Any = model
    attribute = field
    if field.startswith("opt."):
        owner, attribute = model.opt, field.removeprefix("opt.")
    value = getattr(owner, attribute, None) if not attribute.startswith("_") else None
    is_float_array = isinstance(value, np.ndarray) and value.dtype.kind == "f"
    if not (is_float_array or isinstance(value, float)):
        raise ValueError(
            f"unknown model parameter {field!r}: MuJoCo's MjModel has no float field of that name. "
            f"Use one of {', '.join(PARAMETERS)}, or the name of a float field of mujoco.MjModel "
            "(e.g. 'dof_damping', 'geom_solref') or of its options (e.g. 'opt.viscosity')."
        )
    return owner, attribute


PARAMETERS: dict[str, Callable[[mujoco.MjModel], ModelParameter]] = {
    "friction": SlidingFriction,
    "friction_scale": SlidingFrictionScale,
    "gravity_scale": GravityScale,
    "body_mass_scale": BodyMassScale,
    "actuator_gear_scale": ActuatorGearScale,
}
"""The named parameters; any other name is a :class:`FieldScale` of an MjModel float field."""


def model_parameter(model: mujoco.MjModel, name: str) -> ModelParameter:
    """The parameter ``name`` of ``model``, with the model's current values as its base values.

    Raises:
        ValueError: ``name`` is neither a named parameter nor a float field of the model.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model parameter name must be a non-empty string, got {name!r}")
    make = PARAMETERS.get(name)
    return make(model) if make is not None else FieldScale(model, name)
