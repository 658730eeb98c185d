"""Evaluation of a saved policy: deterministic actions, seeded episodes, the mean return.

Works for every algorithm whose command has a ``load_policy(config, agent_state, description,
device) -> act`` (:attr:`cbp_rl.run.command.Command.load_policy`), where ``act`` maps a batch of
raw observations ``[N, obs_dim]`` to deterministic actions; the caller passes how to find it
(``python -m cbp_rl.evaluate``: the command registry, :mod:`cbp_rl.lab.commands`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbp_rl.envs.vector import describe_env, make_sub_env, seeded_env_kwargs, sub_env_kwargs
from cbp_rl.run.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from cbp_rl.run.command import PolicyLoader
from cbp_rl.run.conventions import command_of
from cbp_rl.run.logging import CONFIG_FILE, read_config
from cbp_rl.run.runtime import resolve_device

__all__ = ["EvaluationResult", "evaluate_run"]


@dataclass(frozen=True)
class EvaluationResult:
    """Returns and lengths of the evaluation episodes, in order."""

    returns: tuple[float, ...]
    lengths: tuple[int, ...]
    step: int
    """The training step of the evaluated checkpoint."""
    algorithm: str = ""
    """The command that trained the policy."""
    env_id: str = ""

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    def summary(self) -> str:
        """One line: mean return, spread, mean length."""
        returns = np.asarray(self.returns)
        return (
            f"mean return {returns.mean():.6f} over {len(returns)} episodes (std "
            f"{returns.std():.6f}, min {returns.min():.6f}, max {returns.max():.6f}, mean length "
            f"{np.mean(self.lengths):.1f}; {self.algorithm} on {self.env_id}, checkpoint at "
            f"step {self.step})"
        )


def evaluate_run(
    run_dir: Path,
    *,
    episodes: int,
    seed: int,
    policy_loader: Callable[[str], PolicyLoader],
    device: str = "cpu",
    checkpoint: Path | None = None,
) -> EvaluationResult:
    """Run ``episodes`` episodes of the saved deterministic policy of ``run_dir``.

    One environment, reset with ``seed`` before the first episode (the later resets continue its
    random generator), so the same checkpoint and seed give the same returns. An env with a
    schedule starts from the schedule state of the checkpoint's first sub-env. Raises
    ``CheckpointError`` for a missing or unusable checkpoint and ``ValueError`` for bad input.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    run_dir = Path(run_dir)
    _check_evaluable(run_dir, policy_loader)
    state = _load(run_dir, checkpoint)
    algorithm = state.get("algorithm")
    config = state["config"]
    env_id = config["run"]["env"]
    if checkpoint is not None:
        _check_same_run(run_dir, checkpoint, algorithm, env_id)
    try:
        load_policy = policy_loader(str(algorithm))
    except ValueError as err:
        raise CheckpointError(
            f"was written by {algorithm!r}, which this installation cannot evaluate ({err})",
            checkpoint or run_dir,
        ) from err
    kwargs = {
        **seeded_env_kwargs(env_id, int(config["run"]["seed"])),
        **json.loads(config["run"].get("env_kwargs", "{}")),
        **sub_env_kwargs(env_id, 1),
    }
    description = describe_env(env_id, kwargs)
    act = load_policy(config, state["agent"], description, resolve_device(device))
    env = make_sub_env(env_id, kwargs)
    try:
        schedules = state.get("env", {}).get("schedule_states")
        if description.has_schedule and schedules:
            env.set_wrapper_attr("schedule_state", schedules[0])
        returns, lengths = _episodes(env, act, episodes, seed)
    finally:
        env.close()
    return EvaluationResult(
        tuple(returns), tuple(lengths), int(state["step"]), str(algorithm), env_id
    )


def _check_evaluable(run_dir: Path, policy_loader: Callable[[str], PolicyLoader]) -> None:
    """Refuse a directory that is no run, or a run of a command without a policy (pmnist)."""
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        return
    command = command_of(read_config(run_dir))
    if command is None:
        return
    try:
        policy_loader(command)
    except ValueError as err:
        raise ValueError(
            f"{run_dir} is a {command} run: {err} (its results are in its logs: "
            f"`python -m cbp_rl.plot {run_dir}`)"
        ) from None


def _check_same_run(run_dir: Path, checkpoint: Path, algorithm: Any, env_id: str) -> None:
    """Refuse ``--checkpoint FILE`` of another run (another algorithm or env) than RUN_DIR."""
    if not (run_dir / CONFIG_FILE).is_file():
        return
    config = read_config(run_dir)
    own = (command_of(config), config.get("run", {}).get("env"))
    if own != (algorithm, env_id):
        raise ValueError(
            f"--checkpoint {checkpoint} is a {algorithm} checkpoint on {env_id}, but {run_dir} "
            f"is a {own[0]} run on {own[1]}: pass a checkpoint of {run_dir} (e.g. "
            f"{run_dir / CheckpointManager.PREV_FILENAME}), or that checkpoint's own run directory"
        )


def _load(run_dir: Path, checkpoint: Path | None) -> dict[str, Any]:
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    manager = CheckpointManager(run_dir)
    try:
        state = manager.load_latest(required=True)
    except CheckpointError as err:
        if err.path != manager.path or not manager.prev_path.is_file():
            raise
        raise CheckpointError(
            err.problem,
            err.path,
            f"evaluate the previous checkpoint instead: --checkpoint {manager.prev_path}",
        ) from err
    assert state is not None
    return state


def _episodes(env: Any, act: Any, episodes: int, seed: int) -> tuple[list[float], list[int]]:
    returns, lengths = [], []
    observation, _ = env.reset(seed=seed)
    for episode in range(episodes):
        if episode:
            observation, _ = env.reset()
        total, length, done = 0.0, 0, False
        while not done:
            with torch.inference_mode():
                action = act(np.asarray(observation)[None])[0]
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = bool(terminated or truncated)
        returns.append(total)
        lengths.append(length)
    return returns, lengths
