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
from typing import Any

import tyro

from cbp_rl.lab.commands import COMMANDS
from cbp_rl.run.conventions import run_command
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
    """Evaluate and print; returns the exit code (2 for bad input; see cbp_rl.run.conventions)."""
    quiet_superseded_env_notices()
    args = list(sys.argv[1:] if argv is None else argv)

    def parse() -> EvaluateArgs:
        return tyro.cli(EvaluateArgs, args=args, prog="python -m cbp_rl.evaluate")

    def evaluate(parsed: EvaluateArgs) -> Any:
        from cbp_rl.agents.evaluation import evaluate_run

        try:
            return evaluate_run(
                parsed.run_dir,
                episodes=parsed.episodes,
                seed=parsed.seed,
                policy_loader=COMMANDS.policy_loader,
                device=parsed.device,
                checkpoint=parsed.checkpoint,
            )
        except RuntimeError as err:  # a device that is not there
            raise ValueError(str(err)) from err

    def show(result: Any) -> int:
        print(result.summary())
        return 0

    return run_command("evaluate", parse, evaluate, show)


if __name__ == "__main__":
    sys.exit(main())
