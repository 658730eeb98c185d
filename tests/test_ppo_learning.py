"""PPO learns: InvertedPendulum-v4 balanced for whole episodes within a 40k-step budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbp_rl.agents import ppo_command
from cbp_rl.agents.evaluation import evaluate_run
from cbp_rl.lab.commands import COMMANDS
from cbp_rl.run.logging import read_scalars


@pytest.mark.slow
@pytest.mark.parametrize("cbp", [False, True], ids=["ppo", "ppo+cbp"])
def test_ppo_balances_the_inverted_pendulum(tmp_path: Path, cbp: bool) -> None:
    run = tmp_path / "run"
    argv = [
        "--env", "InvertedPendulum-v4",
        "--total-steps", "40000",
        "--num-envs", "4",
        "--vector-mode", "sync",
        "--batch-size", "1024",
        "--hidden-sizes", "64", "64",
        "--lr", "1e-3",
        "--plasticity-every", "0",
        "--run-dir", str(run),
        "--no-progress",
    ]  # fmt: skip
    if cbp:
        argv += ["--cbp", "--lr", "1e-3", "--maturity-threshold", "100"]
    assert ppo_command.main(argv) == 0
    returns = [value for _, value in read_scalars(run)["charts/episodic_return"]]
    assert max(returns[:20]) < 200  # it starts out falling quickly
    result = evaluate_run(run, episodes=5, seed=0, policy_loader=COMMANDS.policy_loader)
    assert result.mean_return >= 900, result.summary()
