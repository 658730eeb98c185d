"""The PPO command line: presets (the paper's Ant configurations), overrides, bad input, help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import assert_refused

from cbp_rl.agents import ppo_command
from cbp_rl.agents.ppo import PPOAlgorithmConfig, PPOConfig
from cbp_rl.train import main as train_main


def parse(*argv: str) -> PPOConfig:
    return ppo_command.parse(list(argv))


def test_the_default_is_the_papers_standard_ppo() -> None:
    config = parse()
    assert config.preset == "standard"
    assert config.network.hidden_sizes == (256, 256)
    assert config.network.activation == "relu" and config.network.init == "lecun"
    assert config.optimizer.optimizer == "adam" and config.optimizer.lr == 1e-4
    assert config.optimizer.betas == (0.9, 0.999) and config.optimizer.eps == 1e-8
    assert config.optimizer.weight_decay == 0.0
    ppo = config.ppo
    assert (ppo.batch_size, ppo.num_minibatches, ppo.update_epochs) == (2048, 16, 10)
    assert ppo.minibatch_size == 128
    assert (ppo.gamma, ppo.gae_lambda, ppo.clip_coef) == (0.99, 0.95, 0.2)
    assert (ppo.value_coef, ppo.entropy_coef, ppo.max_grad_norm) == (1.0, 0.0, 0.0)
    assert not ppo.clip_value_loss and not ppo.normalize_obs and not ppo.normalize_reward
    assert ppo.advantage_norm == "batch" and ppo.truncation_as_termination
    assert ppo.init_log_std == 0.0 and not ppo.clip_actions
    assert not config.methods.cbp and not config.methods.redo
    assert config.run.env == "Ant-v4" and config.run.total_steps == 100_000_000
    assert config == PPOConfig() == ppo_command.PRESETS["standard"]
    assert not PPOAlgorithmConfig().truncation_as_termination  # the library default bootstraps


def test_cbp_flag_selects_the_papers_cbp_configuration() -> None:
    config = parse("--cbp")
    assert config.preset == "cbp"
    assert config.optimizer.betas == (0.99, 0.99) and config.optimizer.weight_decay == 1e-4
    methods = config.methods
    assert methods.cbp and methods.replacement_rate == 1e-4
    assert methods.maturity_threshold == 10_000 and methods.decay_rate == 0.99
    assert methods.utility == "contribution" and not methods.accumulate
    assert methods.reset_optimizer_state == "auto"  # plain Adam: no reset, as the reference
    assert config.ppo == parse().ppo  # the PPO settings are the standard ones


@pytest.mark.parametrize(
    ("preset", "betas", "weight_decay", "cbp", "redo"),
    [
        ("standard", (0.9, 0.999), 0.0, False, False),
        ("ns", (0.99, 0.99), 0.0, False, False),
        ("l2", (0.99, 0.99), 1e-3, False, False),
        ("redo", (0.99, 0.99), 1e-4, False, True),
        ("cbp", (0.99, 0.99), 1e-4, True, False),
    ],
)
def test_paper_presets(
    preset: str, betas: tuple[float, float], weight_decay: float, cbp: bool, redo: bool
) -> None:
    config = parse("--preset", preset)
    assert config.preset == preset
    assert config.optimizer.betas == betas and config.optimizer.weight_decay == weight_decay
    assert config.methods.cbp is cbp and config.methods.redo is redo
    if redo:
        assert config.methods.redo_threshold == 0.1 and config.methods.redo_period == 100
    assert config.ppo.truncation_as_termination


def test_flags_given_override_the_preset() -> None:
    config = parse("--preset", "l2", "--weight-decay", "1e-2", "--num-envs", "4")
    assert config.optimizer.weight_decay == 1e-2 and config.optimizer.betas == (0.99, 0.99)
    assert config.run.num_envs == 4
    config = parse("--cbp", "--maturity-threshold", "100", "--betas", "0.9", "0.999")
    assert config.methods.cbp and config.methods.maturity_threshold == 100
    assert config.optimizer.betas == (0.9, 0.999) and config.optimizer.weight_decay == 1e-4
    config = parse("--preset", "standard", "--cbp")  # standard Adam with CBP on
    assert config.methods.cbp and config.optimizer.betas == (0.9, 0.999)
    assert not parse("--cbp", "--no-cbp").methods.cbp


def test_cleanrl_preset() -> None:
    config = parse("--preset", "cleanrl")
    assert config.network.hidden_sizes == (64, 64) and config.network.activation == "tanh"
    assert config.network.init == "orthogonal"
    assert config.optimizer.lr == 3e-4 and config.optimizer.anneal_lr
    assert config.ppo.num_minibatches == 32 and config.ppo.clip_value_loss
    assert config.ppo.normalize_obs and config.ppo.normalize_reward
    assert config.ppo.max_grad_norm == 0.5 and config.ppo.advantage_norm == "minibatch"


def test_step_counts_accept_scientific_notation() -> None:
    assert parse("--total-steps", "2e7").run.total_steps == 20_000_000
    assert parse("--checkpoint-every", "500_000").run.checkpoint_every == 500_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "Antt-v4"], "unknown environment id 'Antt-v4': did you mean Ant-v4"),
        (["--env", "CartPole-v1"], "continuous (Box) actions"),
        (["--env", "Ant-v3"], "Use the -v4 or -v5 MuJoCo envs"),
        (["--batch-size", "2040"], "does not split into 16 equal minibatches"),
        (["--batch-size", "2044", "--num-minibatches", "4"], "does not split over 8 environments"),
        (["--total-steps", "-5"], "--total-steps must be positive"),
        (["--total-steps", "1.5"], "whole number"),
        (["--lr", "0"], "lr must be positive"),
        (["--betas", "0.9", "1.5"], "betas must be two numbers in [0, 1)"),
        (["--hidden-sizes", "0"], "hidden_sizes must be positive"),
        (["--device", "tpu"], "unknown device"),
        (["--replacement-rate", "2"], "replacement_rate must be in [0, 1]"),
        (["--bogus-flag", "1"], "Unrecognized"),
        (["--preset", "nope"], "Invalid choice"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(ppo_command.main, argv, message, tmp_path / "run", capsys)


def test_a_run_directory_that_holds_a_run_is_not_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert ppo_command.main(["--run-dir", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_needs_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ppo_command.main(["--resume", str(tmp_path / "missing")]) == 2
    assert "no config.json there" in capsys.readouterr().err
    assert ppo_command.main(["--resume", str(tmp_path), "--preset", "l2"]) == 2
    assert "--preset cannot be combined with --resume" in capsys.readouterr().err


def test_help_lists_every_flag_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["ppo", "--help"]) == 0
    text = capsys.readouterr().out
    for group in ("run options", "ppo options", "network options", "optimizer options"):
        assert group in text
    for flag in ("--cbp, --no-cbp", "--total-steps", "--resume", "--preset", "--num-envs"):
        assert flag in text


def test_library_configs_validate_on_construction() -> None:
    with pytest.raises(ValueError, match="does not split into 3 equal minibatches"):
        PPOAlgorithmConfig(batch_size=64, num_minibatches=3)
    with pytest.raises(ValueError, match="does not split over 3 environments"):
        dataclasses.replace(parse(), run=dataclasses.replace(parse().run, num_envs=3))
