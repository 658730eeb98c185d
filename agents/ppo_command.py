"""``python -m cbp_rl.train ppo``: PPO, with ``--cbp`` continual backprop, on MuJoCo.

Presets (``--preset NAME``; ``--cbp`` alone picks ``cbp``; flags given override a preset):

=========  ==================================================================================
standard   the paper's PPO (lop/rl/cfg/ant/std.yml): 256-256 ReLU, lecun init, Adam lr 1e-4
           betas (0.9, 0.999), 2048-step rollouts, 10 epochs x 16 minibatches, clip 0.2,
           gamma 0.99, lambda 0.95, value coef 1, truncation treated as termination
ns         standard with Adam betas (0.99, 0.99) (ns.yml)
l2         ns with weight decay 1e-3 (l2.yml)
redo       ns with weight decay 1e-4 and ReDo, threshold 0.1 every 100 updates (redo.yml)
cbp        ns with weight decay 1e-4 and CBP: rr 1e-4, mt 1e4, contribution utility,
           decay 0.99, probabilistic replacement (cbp.yml)
cleanrl    CleanRL's ppo_continuous_action.py defaults (64-64 tanh, orthogonal init, lr 3e-4
           annealed, 32 minibatches, clipped value loss, observation and reward
           normalization, gradient clipping 0.5, 1 env, 1e6 steps)
=========  ==================================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cbp_rl.agents.cli import RLCommandParts
from cbp_rl.agents.config import (
    MethodsConfig,
    NetworkConfig,
    OptimizerConfig,
    RunConfig,
)
from cbp_rl.agents.methods import PAPER_CBP
from cbp_rl.agents.normalization import ObservationNormalizer
from cbp_rl.agents.ppo import GaussianPolicy, PPOAgent, PPOAlgorithmConfig, PPOConfig
from cbp_rl.agents.runner import RESUME_IGNORE_RUN, AgentContext
from cbp_rl.envs.vector import EnvDescription
from cbp_rl.run.configs import config_from_dict

__all__ = ["COMMAND", "PRESETS", "build_agent", "load_policy", "main", "parse"]

ALGORITHM = "ppo"

_PAPER = PPOConfig()  # the defaults are the paper's standard PPO
_NS_ADAM = OptimizerConfig(betas=(0.99, 0.99))

PRESETS: dict[str, PPOConfig] = {
    "standard": dataclasses.replace(_PAPER, preset="standard"),
    "ns": dataclasses.replace(_PAPER, preset="ns", optimizer=_NS_ADAM),
    "l2": dataclasses.replace(
        _PAPER, preset="l2", optimizer=dataclasses.replace(_NS_ADAM, weight_decay=1e-3)
    ),
    "redo": dataclasses.replace(
        _PAPER,
        preset="redo",
        optimizer=dataclasses.replace(_NS_ADAM, weight_decay=1e-4),
        methods=MethodsConfig(redo=True, redo_threshold=0.1, redo_period=100),
    ),
    "cbp": dataclasses.replace(
        _PAPER,
        preset="cbp",
        optimizer=dataclasses.replace(_NS_ADAM, weight_decay=1e-4),
        methods=PAPER_CBP,
    ),
    "cleanrl": PPOConfig(
        preset="cleanrl",
        run=RunConfig(num_envs=1, total_steps=1_000_000),
        ppo=PPOAlgorithmConfig(
            num_minibatches=32,
            value_coef=0.25,
            clip_value_loss=True,
            max_grad_norm=0.5,
            advantage_norm="minibatch",
            truncation_as_termination=True,
            normalize_obs=True,
            normalize_reward=True,
            clip_actions=True,
        ),
        network=NetworkConfig(hidden_sizes=(64, 64), activation="tanh", init="orthogonal"),
        optimizer=OptimizerConfig(lr=3e-4, eps=1e-5, anneal_lr=True),
    ),
}
"""The presets by name; ``--preset NAME`` starts from one."""

DESCRIPTION = (
    "PPO on a continuous-action Gymnasium env, with --cbp the paper's continual backprop. "
    "--preset standard|ns|l2|redo|cbp|cleanrl picks a configuration (default: standard; --cbp "
    "alone picks cbp); flags given override the preset. --resume RUN_DIR continues a run "
    "exactly."
)

RESUME_IGNORE = (*RESUME_IGNORE_RUN, "ppo.parallel_update")
"""Config fields that may change on resume (budget, output, how envs run); the rest must match."""


def build_agent(context: AgentContext) -> PPOAgent:
    """The PPO agent of a run."""
    return PPOAgent(context)


PARTS = RLCommandParts(ALGORITHM, PPOConfig, PRESETS, DESCRIPTION, build_agent, RESUME_IGNORE)
prepare = PARTS.prepare


def load_policy(
    config: dict[str, Any],
    agent_state: dict[str, Any],
    description: EnvDescription,
    device: torch.device,
) -> Callable[[np.ndarray], np.ndarray]:
    """The saved deterministic policy (the mean action) of a PPO checkpoint, for evaluation."""
    ppo_config = config_from_dict(PPOConfig, config)
    policy = GaussianPolicy(
        description.observation_dim,
        description.action_dim,
        ppo_config.network,
        init_log_std=ppo_config.ppo.init_log_std,
    ).to(device)
    policy.load_state_dict(agent_state["policy"])
    policy.eval()
    normalizer = None
    if agent_state.get("obs_normalizer") is not None:
        normalizer = ObservationNormalizer(
            (description.observation_dim,), clip=ppo_config.ppo.obs_clip
        ).to(device)
        normalizer.load_state_dict(agent_state["obs_normalizer"])
    low, high = np.array(description.action_low), np.array(description.action_high)
    clip = ppo_config.ppo.clip_actions

    def act(observations: np.ndarray) -> np.ndarray:
        raw = torch.as_tensor(observations, dtype=torch.float64, device=device)
        obs = raw.to(torch.float32) if normalizer is None else normalizer(raw)
        with torch.inference_mode():
            actions = policy(obs).cpu().numpy()
        return np.clip(actions, low, high) if clip else actions

    return act


COMMAND = PARTS.command(
    "PPO (with --cbp: continual backprop) on any continuous-action Gymnasium MuJoCo env",
    load_policy,
)
"""This command, as ``python -m cbp_rl.train``, the sweeps and ``evaluate`` see it."""
parse = COMMAND.parse
main = COMMAND.main
