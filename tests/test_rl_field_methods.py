"""The field's methods in PPO and SAC: flags, logged penalties, exact resume, refusals."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers import PPO_SMALL as SMALL
from helpers import assert_refused, run_and_resume, same, train_ppo

from cbp_rl.agents import ppo_command, sac_command
from cbp_rl.agents.config import FieldMethodsConfig, MethodsConfig, NetworkConfig
from cbp_rl.agents.networks import build_mlp
from cbp_rl.nets import CReLU
from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars

PPO_SMALL = [*SMALL, "--plasticity-every", "256"]
ALL_PPO_METHODS = [
    "--l2-init", "0.01",
    "--parseval", "0.001",
    "--layer-norm",
    "--reset-every", "10",
    "--regrama", "--regrama-period", "3", "--regrama-threshold", "0.5",
    "--pfo-coef", "1.0",
]  # fmt: skip


def agent_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint.pt")["agent"]


def test_ppo_runs_every_method_together_logs_them_and_resumes_exactly(tmp_path: Path) -> None:
    flags = [*PPO_SMALL, *ALL_PPO_METHODS]
    full, half = run_and_resume(train_ppo, flags, tmp_path, total=1024, stop=512)
    same(agent_state(full), agent_state(half))
    scalars = read_scalars(full)
    for tag in ("train/penalty/policy", "train/penalty/value", "train/pfo_penalty"):
        assert [step for step, _ in scalars[tag]] == [256, 512, 768, 1024], tag
        assert all(value >= 0 for _, value in scalars[tag])
    assert max(v for _, v in scalars["train/pfo_penalty"]) > 0
    assert sum(v for _, v in scalars["train/replaced_units"]) > 0  # ReGraMa


def test_ppo_injection_resumes_exactly_and_is_refused_with_unit_methods(tmp_path: Path) -> None:
    flags = [*PPO_SMALL, "--injection-every", "12", "--l2-init", "0.01"]
    full, half = run_and_resume(train_ppo, flags, tmp_path, total=1024, stop=512)
    state = agent_state(full)
    same(state, agent_state(half))
    assert int(state["methods"]["field_modules.policy_1.injections"]) == 2  # at 12 and 24
    refused = [*flags, "--cbp", "--run-dir", str(tmp_path / "x"), "--total-steps", "256"]
    assert ppo_command.main(refused) == 2


def test_ppo_upgd_and_crelu(tmp_path: Path) -> None:
    run = tmp_path / "upgd"
    flags = [*PPO_SMALL, "--optimizer", "upgd", "--lr", "0.01", "--activation", "crelu"]
    assert ppo_command.main([*flags, "--total-steps", "512", "--run-dir", str(run)]) == 0
    state = agent_state(run)
    assert "generator" in state["optimizers"]["policy"]
    assert state["policy"]["mean_net.2.weight"].shape == (32, 64)  # reads twice the width
    assert "plasticity/policy/dead_units/0" in read_scalars(run)


def test_sac_takes_the_methods_and_refuses_pfo(tmp_path: Path) -> None:
    run = tmp_path / "sac"
    flags = [
        "--env", "Hopper-v4", "--num-envs", "1", "--hidden-sizes", "16", "16",
        "--warmup-steps", "64", "--batch-size", "32", "--total-steps", "160",
        "--log-every", "80", "--plasticity-every", "0", "--no-progress",
        "--l2-init", "0.01", "--parseval", "0.001", "--reset-every", "20", "--regrama",
        "--regrama-period", "10", "--run-dir", str(run),
    ]  # fmt: skip
    assert sac_command.main(flags) == 0
    assert sac_command.main([*flags[:-2], "--pfo-coef", "1", "--run-dir", str(tmp_path / "x")]) == 2
    plain = [f for f in flags[:-2] if f not in ("--regrama", "--regrama-period", "10")]
    injected = [*plain, "--injection-every", "5", "--run-dir", str(tmp_path / "y")]
    assert sac_command.main(injected) == 2  # the critics' targets: --methods-on actor
    assert sac_command.main([*injected[:-2], "--methods-on", "actor", *injected[-2:]]) == 0


def test_network_options_build_on_every_init() -> None:
    for init in ("lecun", "kaiming", "orthogonal"):
        net = build_mlp(3, 2, NetworkConfig(hidden_sizes=(8, 8), activation="crelu", init=init))
        assert isinstance(net[1], CReLU) and net[2].in_features == 16
        assert net(torch.zeros(4, 3)).shape == (4, 2)
    norm = build_mlp(3, 2, NetworkConfig(hidden_sizes=(8,), layer_norm=True))
    assert isinstance(norm[1][0], torch.nn.LayerNorm)


def test_bad_method_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="--l2-init must be >= 0"):
        FieldMethodsConfig(l2_init=-1.0)
    with pytest.raises(ValueError, match="--reset-layers must be positive"):
        FieldMethodsConfig(reset_layers=0)
    with pytest.raises(ValueError, match=r"--upgd-beta-utility must be in \[0, 1\)"):
        FieldMethodsConfig(upgd_beta_utility=1.0)
    with pytest.raises(ValueError, match="injection-every with --cbp"):
        FieldMethodsConfig(injection_every=10, regrama=True).check_with(MethodsConfig())


@pytest.mark.parametrize("command", [ppo_command, sac_command])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--l2-init", "nan"], "--l2-init nan: not a finite number"),
        (["--parseval", "inf"], "--parseval inf: not a finite number"),
        (["--upgd-sigma", "-1"], "--upgd-sigma must be >= 0"),
        (["--regrama-period", "0"], "--regrama-period must be positive"),
    ],
)
def test_commands_refuse_bad_method_values_with_exit_code_2(
    command: ModuleType,
    flags: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert_refused(command.main, flags, message, tmp_path / "r", capsys)
