"""Helpers the RL run tests share: the PPO and SAC commands, small runs' flags, a run and its
resumed twin, refused flags, bitwise comparison of checkpoint states, the plasticity tags every RL
command logs, what a run's checkpoint says training produced."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cbp_rl import evaluate
from cbp_rl.agents import ppo_command, sac_command
from cbp_rl.run.checkpoint import load_checkpoint

PPO_SMALL = (
    "--env", "Hopper-v4",
    "--num-envs", "2",
    "--batch-size", "256",
    "--num-minibatches", "4",
    "--update-epochs", "2",
    "--hidden-sizes", "32", "32",
    "--no-progress",
)  # fmt: skip
"""A small PPO on Hopper: 2 envs, rollouts of 256 steps, 2 epochs of 4 minibatches, 32-32."""

PPO_TINY = (
    "--num-envs", "2",
    "--batch-size", "256",
    "--num-minibatches", "4",
    "--update-epochs", "1",
    "--hidden-sizes", "16",
    "--vector-mode", "batched",
    "--plasticity-every", "0",
    "--no-progress",
)  # fmt: skip
"""A tinier PPO for the env-protocol runs (give ``--env``): one epoch, 16 units, no probes."""

SLIPPERY_ANT = (
    "--env", "SlipperyAnt-v5",
    "--env-kwargs", json.dumps({"change_every": 256, "at_episode_end": False}),
)  # fmt: skip
"""SlipperyAnt with a new friction every 256 agent steps, adopted at once."""


def train_ppo(*argv: str) -> int:
    """``python -m cbp_rl.train ppo ARGV`` in this process; its exit code."""
    return ppo_command.main(list(argv))


def train_sac(*argv: str) -> int:
    """``python -m cbp_rl.train sac ARGV`` in this process; its exit code."""
    return sac_command.main(list(argv))


def run_and_resume(
    train: Callable[..., int],
    flags: Sequence[str],
    where: Path,
    *,
    total: int,
    stop: int,
    resume_flags: Sequence[str] = (),
    prefix: str = "",
) -> tuple[Path, Path]:
    """Train ``total`` steps in ``where/full``, and ``stop`` steps in ``where/half`` resumed to
    ``total`` (with ``resume_flags``); asserts every launch succeeds, returns both directories."""
    full, half = where / f"{prefix}full", where / f"{prefix}half"
    assert train(*flags, "--total-steps", str(total), "--run-dir", str(full)) == 0
    assert train(*flags, "--total-steps", str(stop), "--run-dir", str(half)) == 0
    assert train("--resume", str(half), "--total-steps", str(total), *resume_flags) == 0
    return full, half


def assert_refused(
    main: Callable[[list[str]], int],
    argv: Sequence[str],
    message: str,
    run_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A command given ``argv`` exits 2 saying ``message`` (on stderr, white space and box
    borders folded) before it makes its run directory."""
    assert main([*argv, "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert not run_dir.exists()


def evaluations(
    run_dir: Path, episodes: int, seeds: Sequence[str], capsys: pytest.CaptureFixture[str]
) -> list[str]:
    """What ``python -m cbp_rl.evaluate RUN_DIR --episodes N --seed S`` prints for each seed;
    asserts each exits 0."""
    outputs = []
    for seed in seeds:
        assert evaluate.main([str(run_dir), "--episodes", str(episodes), "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out.strip())
    return outputs


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
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif a != a and b != b:  # NaN
        return
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


LAYER_MEASURES = (
    "dead_units",
    "inactive",
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


def tiny_ppo_sweep_spec(*, seeds: int, total_steps: int, settings: str) -> str:
    """A sweep spec of tiny PPO runs on Hopper-v4 (16-16 networks, 256-step batches, one epoch)."""
    return f"""
command = "ppo"
seeds = {seeds}
[base]
env = "Hopper-v4"
num-envs = 2
batch-size = 256
num-minibatches = 4
update-epochs = 1
hidden-sizes = [16, 16]
total-steps = {total_steps}
plasticity-every = 512
probe-size = 64
progress = false
{settings}"""
