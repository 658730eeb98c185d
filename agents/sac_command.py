"""``python -m cbp_rl.train sac``: SAC, with ``--cbp`` continual backprop, on MuJoCo.

Presets (``--preset NAME``; ``--cbp`` alone picks ``cbp``; flags given override a preset):

=========  ==================================================================================
standard   CleanRL's / Stable-Baselines3's SAC: actor and twin critics 256-256 ReLU (PyTorch's
           default weight init, zero biases), Adam lr 3e-4 for actor, critics and alpha, batch
           256, replay ratio 1, buffer 1e6, 5000 warm-up steps, gamma 0.99, tau 0.005,
           automatic alpha from 1.0 towards entropy -action_dim, 1 env, 1e6 steps on Hopper-v4
cbp        standard with CBP on the actor and both critics: rr 1e-4, mt 1e4 updates,
           contribution utility, decay 0.99, probabilistic replacement (the paper's RL settings)
=========  ==================================================================================

L2 (``--weight-decay``), ReDo (``--redo``) and shrink-and-perturb (``--perturb-std``,
``--shrink``) go through the same flags as PPO's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cbp_rl.agents.cli import RLCommandParts
from cbp_rl.agents.methods import PAPER_CBP
from cbp_rl.agents.runner import RESUME_IGNORE_RUN, AgentContext
from cbp_rl.agents.sac import SACAgent, SACConfig, SquashedGaussianActor
from cbp_rl.envs.vector import EnvDescription
from cbp_rl.run.configs import config_from_dict

__all__ = [
    "COMMAND",
    "PRESETS",
    "RESUME_IGNORE",
    "build_agent",
    "load_policy",
    "main",
    "parse",
    "prepare",
]

ALGORITHM = "sac"

_STANDARD = SACConfig()

PRESETS: dict[str, SACConfig] = {
    "standard": _STANDARD,
    "cbp": dataclasses.replace(
        _STANDARD,
        preset="cbp",
        methods=PAPER_CBP,
    ),
}
"""The presets by name; ``--preset NAME`` starts from one."""

DESCRIPTION = (
    "Soft Actor-Critic on a continuous-action Gymnasium env, with --cbp continual backprop on "
    "the actor and both critics (never on the target critics). --preset standard|cbp picks a "
    "configuration (default: standard; --cbp alone picks cbp); flags given override the preset. "
    "--resume RUN_DIR continues a run, exactly when its checkpoints hold the replay buffer "
    "(--save-replay, the default)."
)

RESUME_IGNORE = (*RESUME_IGNORE_RUN, "sac.save_replay", "sac.log_every")
"""Config fields that may change on resume (budget, output, how envs run, whether checkpoints
hold the buffer, the logging period); the rest must match."""


def build_agent(context: AgentContext) -> SACAgent:
    """The SAC agent of a run."""
    return SACAgent(context)


PARTS = RLCommandParts(
    ALGORITHM, SACConfig, PRESETS, DESCRIPTION, build_agent, RESUME_IGNORE, network_count=5
)
prepare = PARTS.prepare


def load_policy(
    config: dict[str, Any],
    agent_state: dict[str, Any],
    description: EnvDescription,
    device: torch.device,
) -> Callable[[np.ndarray], np.ndarray]:
    """The saved deterministic policy (``tanh(mean)`` scaled to the action bounds) of a SAC
    checkpoint, for evaluation."""
    sac_config = config_from_dict(SACConfig, config)
    actor = SquashedGaussianActor(
        description.observation_dim,
        description.action_dim,
        sac_config.network,
        log_std_min=sac_config.sac.log_std_min,
        log_std_max=sac_config.sac.log_std_max,
    ).to(device)
    actor.load_state_dict(agent_state["actor"])
    actor.eval()
    low = np.asarray(description.action_low, dtype=np.float32)
    high = np.asarray(description.action_high, dtype=np.float32)
    scale, center = (high - low) / 2.0, (high + low) / 2.0

    def act(observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=device)
        with torch.inference_mode():
            actions = actor.mode(obs).cpu().numpy()
        result: np.ndarray = center + scale * actions
        return result

    return act


COMMAND = PARTS.command(
    "SAC (with --cbp: continual backprop) on any continuous-action Gymnasium MuJoCo env",
    load_policy,
)
"""This command, as ``python -m cbp_rl.train``, the sweeps and ``evaluate`` see it."""
parse = COMMAND.parse
main = COMMAND.main
