"""``python -m cbp_rl.evaluate RUN_DIR --episodes K --seed S``: the saved policy's mean return.

Loads the run's latest checkpoint, runs K episodes of its deterministic policy (the mean action
for PPO) on one environment seeded S and prints the mean return (and its spread). The same
checkpoint and seed print the same numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tyro

from cbp_rl.lab.commands import COMMANDS
from cbp_rl.run.checkpoint import CheckpointError
from cbp_rl.run.runtime import quiet_superseded_env_notices


@dataclass(frozen=True)
class EvaluateArgs:
    """Evaluate the saved deterministic policy of a training run."""

    run_dir: tyro.conf.Positional[Path]
    """The run directory (holds checkpoint.pt)."""
    episodes: int = 10
    """Episodes to run."""
    seed: int = 0
    """Seed of the environment's first reset."""
    device: str = "cpu"
    """Torch device of the policy."""
    checkpoint: Path | None = None
    """Evaluate this checkpoint file instead of RUN_DIR/checkpoint.pt (e.g. checkpoint.prev.pt)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate and print; returns the exit code (2 for bad input)."""
    quiet_superseded_env_notices()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        parsed = tyro.cli(EvaluateArgs, args=args, prog="python -m cbp_rl.evaluate")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    from cbp_rl.agents.evaluation import evaluate_run

    try:
        result = evaluate_run(
            parsed.run_dir,
            episodes=parsed.episodes,
            seed=parsed.seed,
            policy_loader=COMMANDS.policy_loader,
            device=parsed.device,
            checkpoint=parsed.checkpoint,
        )
    except (ValueError, CheckpointError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
