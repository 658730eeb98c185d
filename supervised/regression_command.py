"""``python -m cbp_rl.train regression [FLAGS]``: slowly-changing regression, many seeds.

    python -m cbp_rl.train regression --seeds 100                      # bp, ReLU, SGD 0.01
    python -m cbp_rl.train regression --learner cbp --seeds 30 --run-dir runs/cbp
    python -m cbp_rl.train regression --activation tanh --step-size 0.003
    python -m cbp_rl.train regression --resume runs/cbp --examples 2000000   # continue, exactly

``--resume DIR`` takes the saved configuration as the defaults, so only what changes (e.g.
``--examples``) needs to be given; changing anything else is refused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from cbp_rl.supervised.command import load_saved_config, parse_config, run_command
from cbp_rl.supervised.regression_config import RegressionConfig
from cbp_rl.supervised.regression_run import COMMAND, run


def saved_config(run_dir: Path) -> RegressionConfig:
    """The configuration a regression run directory was started with (its ``config.json``)."""
    return load_saved_config(run_dir, RegressionConfig, COMMAND)


def parse(argv: Sequence[str]) -> RegressionConfig:
    """The configuration from command-line flags (with ``--resume``: over the saved one)."""
    return parse_config(RegressionConfig, argv, COMMAND)


def _start(config: RegressionConfig) -> bool:
    summary = run(config)
    return bool(summary.bins_done or summary.stopped)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (2 for bad input, with the reason on stderr)."""
    return run_command(argv, parse, _start)


if __name__ == "__main__":
    sys.exit(main())
