"""Helpers the RL run tests share: the PPO command, bitwise comparison of checkpoint states, the
plasticity tags every RL command logs, what a run's checkpoint says training produced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbp_rl.agents import ppo_command
from cbp_rl.run.checkpoint import load_checkpoint


def train_ppo(*argv: str) -> int:
    """``python -m cbp_rl.train ppo ARGV`` in this process; its exit code."""
    return ppo_command.main(list(argv))


def same(a: Any, b: Any, where: str = "state") -> None:
    """Assert two checkpoint states are equal, tensors and arrays bit for bit (NaN equal NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


LAYER_MEASURES = (
    "dead_units",
    "dormant",
    "effective_rank",
    "rank99",
    "stable_rank",
    "weight_magnitude",
    "weight_change",
    "grad_norm",
    "replacements",
)
"""Per-hidden-layer plasticity tags every RL command logs, written out here on purpose."""


def plasticity_tags(nets: tuple[str, ...], *, hidden_layers: int) -> list[str]:
    """``plasticity/<net>/<measure>/<layer>`` for every net, measure and hidden layer."""
    return [
        f"plasticity/{net}/{measure}/{layer}"
        for net in nets
        for measure in LAYER_MEASURES
        for layer in range(hidden_layers)
    ]


def training_state(run_dir: Path) -> dict[str, Any]:
    """What training produced: the agent and the envs (without the MjData bytes, which also hold
    scratch memory), from the run's checkpoint."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    for snapshot in state["env"]["snapshots"]:
        snapshot.pop("mujoco_data")
    return {"step": state["step"], "agent": state["agent"], "env": state["env"]}
