"""cbp_rl.envs: non-stationary MuJoCo environments.

Importing this package registers ``SlipperyAnt-v4`` and ``SlipperyAnt-v5`` with Gymnasium.
Wrappers change a compiled MuJoCo model in place (friction, gravity, masses, gears, any float
field), fixed or on a schedule whose state can be saved and restored.
"""

from cbp_rl.envs.parameters import (
    PARAMETERS,
    ModelParameter,
    model_parameter,
    mujoco_model,
    refresh_model_constants,
)
from cbp_rl.envs.registration import SLIPPERY_ANT_KWARGS, register_envs
from cbp_rl.envs.schedules import ChangeSchedule, ListValues, RandomValues, ValueSequence
from cbp_rl.envs.slippery_ant import make_slippery_ant
from cbp_rl.envs.wrappers import (
    FrictionSchedule,
    ParameterSchedule,
    SetFriction,
    SetParameter,
)

register_envs()

__all__ = [
    "PARAMETERS",
    "SLIPPERY_ANT_KWARGS",
    "ChangeSchedule",
    "FrictionSchedule",
    "ListValues",
    "ModelParameter",
    "ParameterSchedule",
    "RandomValues",
    "SetFriction",
    "SetParameter",
    "ValueSequence",
    "make_slippery_ant",
    "model_parameter",
    "mujoco_model",
    "refresh_model_constants",
    "register_envs",
]
