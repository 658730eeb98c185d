"""``python -m cbp_rl.train regression [FLAGS]``: slowly-changing regression, many seeds.

    python -m cbp_rl.train regression --seeds 100                      # bp, ReLU, SGD 0.01
    python -m cbp_rl.train regression --learner cbp --seeds 30 --run-dir runs/cbp
    python -m cbp_rl.train regression --activation tanh --step-size 0.003
    python -m cbp_rl.train regression --resume runs/cbp --examples 2000000   # continue, exactly

``--resume DIR`` takes the saved configuration as the defaults, so only what changes (e.g.
``--examples``) needs to be given; changing anything else is refused. ``--resume-fallback``
resumes from the previous checkpoint when the latest is unreadable; exit codes, the run
directory's lock and the refusals follow :mod:`cbp_rl.run.conventions`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from cbp_rl.run.command import Command, Cost, Measure
from cbp_rl.supervised.command import (
    command_main,
    load_saved_config,
    parse_config,
    seed_fields,
)
from cbp_rl.supervised.regression_config import RegressionConfig
from cbp_rl.supervised.regression_run import NAME, prepare, train


def saved_config(run_dir: Path) -> RegressionConfig:
    """The configuration a regression run directory was started with (its ``config.json``)."""
    return load_saved_config(run_dir, RegressionConfig, NAME)


def parse(argv: Sequence[str]) -> RegressionConfig:
    """The configuration from command-line flags (with ``--resume``: over the saved one)."""
    return parse_config(RegressionConfig, argv, NAME)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (:mod:`cbp_rl.run.conventions`'s convention)."""
    return command_main(NAME, parse, prepare, train, argv)


def cost(config: RegressionConfig, total: int, units: int | None, measure: Measure) -> Cost:
    """A run's cost from two short runs of whole bins: ``units`` (default one bin) and
    3 x ``units`` examples (the slope per example includes each bin's measures)."""
    size = -(-(units or config.bin_size) // config.bin_size) * config.bin_size
    c1, s1 = measure(["--examples", str(size)])
    c2, s2 = measure(["--examples", str(3 * size)])
    per_unit = max(0.0, (c2 - c1) / max(1, s2 - s1))
    fixed = max(0.0, c1 - per_unit * s1)
    return Cost(per_unit, 0.0, fixed, fixed + per_unit * total)


COMMAND = Command(
    name=NAME,
    summary="slowly-changing regression (bit flipping): backprop, L2, shrink-and-perturb, CBP",
    main=main,
    parse=parse,
    config=RegressionConfig,
    metric="error",
    unit="examples",
    budget=lambda config: int(config.examples),
    budget_flags=("--examples",),
    resume_flags=lambda config: ["--examples", str(config.examples), "--resume-fallback"],
    cost=cost,
    **seed_fields(many_seeds=True),
)
"""This command, as ``python -m cbp_rl.train``, the sweeps and ``plot`` see it."""


if __name__ == "__main__":
    sys.exit(main())
