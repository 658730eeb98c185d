"""The SAC command line: presets, overrides, shared flag groups, bad input, help."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_refused

from cbp_rl.agents import ppo_command, sac_command
from cbp_rl.agents.sac import SACAlgorithmConfig, SACConfig
from cbp_rl.train import main as train_main


def parse(*argv: str) -> SACConfig:
    return sac_command.parse(list(argv))


def test_the_default_is_the_usual_sac() -> None:
    config = parse()
    assert config.preset == "standard" and config == SACConfig() == sac_command.PRESETS["standard"]
    assert config.network.hidden_sizes == (256, 256) and config.network.activation == "relu"
    assert config.network.init == "default"
    assert config.optimizer.optimizer == "adam" and config.optimizer.lr == 3e-4
    assert config.optimizer.betas == (0.9, 0.999) and config.optimizer.weight_decay == 0.0
    sac = config.sac
    assert (sac.batch_size, sac.buffer_size, sac.replay_ratio) == (256, 1_000_000, 1.0)
    assert (sac.gamma, sac.tau, sac.warmup_steps) == (0.99, 0.005, 5000)
    assert sac.autotune and sac.init_alpha == 1.0 and sac.target_entropy is None
    assert (sac.policy_frequency, sac.target_update_every) == (1, 1)
    assert (sac.critic_lr, sac.alpha_lr) == (0.0, 0.0)  # both --lr
    assert sac.save_replay and sac.methods_on == "all"
    assert config.run.env == "Hopper-v4" and config.run.num_envs == 1
    assert config.run.total_steps == 1_000_000
    assert not config.methods.cbp and not config.methods.redo


def test_cbp_flag_selects_cbp_on_every_network() -> None:
    config = parse("--cbp")
    assert config.preset == "cbp" and config.networks_with_methods == ("actor", "q1", "q2")
    methods = config.methods
    assert methods.cbp and methods.replacement_rate == 1e-4
    assert methods.maturity_threshold == 10_000 and methods.decay_rate == 0.99
    assert methods.utility == "contribution" and not methods.accumulate
    assert config.sac == parse().sac and config.optimizer == parse().optimizer


def test_the_other_methods_use_the_flags_ppo_uses() -> None:
    config = parse("--weight-decay", "1e-4", "--redo", "--perturb-std", "1e-5", "--shrink", "0.999")
    assert config.optimizer.weight_decay == 1e-4
    assert config.methods.redo and config.methods.perturb_std == 1e-5
    assert config.methods.shrink == 0.999
    assert type(config.methods) is type(ppo_command.parse([]).methods)  # one settings group


def test_flags_override_the_preset_and_accept_scientific_notation() -> None:
    config = parse("--cbp", "--maturity-threshold", "100", "--replay-ratio", "0.25")
    assert config.methods.cbp and config.methods.maturity_threshold == 100
    assert config.sac.replay_ratio == 0.25
    config = parse("--buffer-size", "1e5", "--total-steps", "3e6", "--warmup-steps", "1e4")
    assert (config.sac.buffer_size, config.run.total_steps) == (100_000, 3_000_000)
    assert config.sac.warmup_steps == 10_000
    assert not parse("--cbp", "--no-cbp").methods.cbp
    assert not parse("--no-save-replay").sac.save_replay


def test_fractional_replay_ratios_are_exact() -> None:
    assert SACAlgorithmConfig(replay_ratio=0.1).ratio.as_integer_ratio() == (1, 10)
    assert SACAlgorithmConfig(replay_ratio=8).ratio == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "Hoper-v4"], "unknown environment id 'Hoper-v4': did you mean Hopper-v4"),
        (["--env", "CartPole-v1"], "continuous (Box) actions"),
        (["--replay-ratio", "0"], "replay_ratio must be a positive number"),
        (["--tau", "0"], "tau must be in (0, 1]"),
        (["--gamma", "1.5"], "gamma must be in [0, 1]"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--buffer-size", "0"], "buffer_size must be >= 1"),
        (["--warmup-steps", "-1"], "warmup_steps must be >= 0"),
        (["--init-alpha", "0"], "init_alpha must be positive"),
        (["--log-std-min", "3"], "log_std_min (3.0) must be below log_std_max (2.0)"),
        (["--num-envs", "3"], "log_every 1000 is not a whole number of vector steps of 3"),
        (["--policy-frequency", "0"], "policy_frequency must be >= 1"),
        (["--methods-on", "targets"], "Invalid choice"),
        (["--lr", "-1"], "lr must be positive"),
        (["--preset", "ns"], "Invalid choice"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(sac_command.main, argv, message, tmp_path / "run", capsys)


def test_help_lists_every_flag_group_and_says_when_resume_is_exact(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert train_main(["sac", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for group in ("run options", "sac options", "network options", "optimizer options"):
        assert group in text
    for group in ("methods options", "measure options"):
        assert group in text
    for flag in ("--cbp, --no-cbp", "--save-replay, --no-save-replay", "--replay-ratio"):
        assert flag in text
    assert "Resume is exact only with it" in text
