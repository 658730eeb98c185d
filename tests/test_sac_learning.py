"""SAC learns: Pendulum-v1 swung up and held within a 6k-step budget, with and without CBP.

Pendulum-v1 is a quick task for SAC (on InvertedPendulum-v4 its episodes were still about 100
steps long after 10k steps in our trials): random actions score about -1200 per 200-step episode,
a policy that swings the pole up and holds it about -150 (-142 here, with and without CBP).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbp_rl.agents import sac_command
from cbp_rl.agents.evaluation import evaluate_run
from cbp_rl.lab.commands import COMMANDS
from cbp_rl.run.logging import read_scalars

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.slow
@pytest.mark.parametrize("cbp", [False, True], ids=["sac", "sac+cbp"])
def test_sac_swings_up_the_pendulum(tmp_path: Path, cbp: bool) -> None:
    run = tmp_path / "run"
    argv = [
        "--env", "Pendulum-v1",
        "--total-steps", "6000",
        "--warmup-steps", "1000",
        "--hidden-sizes", "64", "64",
        "--batch-size", "128",
        "--lr", "1e-3",
        "--log-every", "500",
        "--plasticity-every", "0",
        "--run-dir", str(run),
        "--no-progress",
    ]  # fmt: skip
    if cbp:
        argv += ["--cbp", "--maturity-threshold", "100"]
    assert sac_command.main(argv) == 0
    scalars = read_scalars(run)
    returns = [value for _, value in scalars["charts/episodic_return"]]
    assert np.mean(returns[:5]) < -900  # the warm-up's random actions
    replaced = sum(value for _, value in scalars["train/replaced_units"])
    assert (replaced > 0) == cbp  # CBP keeps replacing units while the agent learns
    result = evaluate_run(run, episodes=5, seed=0, policy_loader=COMMANDS.policy_loader)
    assert result.mean_return >= -400, result.summary()
