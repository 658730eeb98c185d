"""Whole PPO runs through the command: logs, determinism, exact resume, signals, CBP, evaluation.

Real MuJoCo envs with tiny budgets and small networks, except the Ant smoke run, which uses the
paper's networks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PPO_SMALL as SMALL
from helpers import (
    PPO_TINY,
    evaluations,
    plasticity_tags,
    run_and_resume,
    same,
    train_ppo,
    training_state,
)

from cbp_rl import evaluate
from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- smoke


def test_cli_smoke_run_on_ant_writes_event_files_with_every_metric(tmp_path: Path) -> None:
    run = tmp_path / "ant"
    code = train_ppo(
        "--env", "Ant-v4", "--cbp",
        "--total-steps", "2048",
        "--num-envs", "2",
        "--batch-size", "1024",
        "--maturity-threshold", "20",
        "--plasticity-every", "1024",
        "--run-dir", str(run),
        "--no-progress",
    )  # fmt: skip
    assert code == 0
    assert list(run.glob("events.out.tfevents.*"))
    scalars = read_scalars(run)
    expected = [
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/learning_rate",
        "charts/sps",
        "charts/update_time_fraction",
        "train/policy_loss",
        "train/value_loss",
        "train/entropy",
        "train/approx_kl",
        "train/clip_fraction",
        "train/explained_variance",
        "train/log_std",
        "train/epochs",
        "train/replaced_units",
        "plasticity/policy/action_saturation",
    ]
    expected += plasticity_tags(("policy", "value"), hidden_layers=2)
    missing = [tag for tag in expected if tag not in scalars]
    assert not missing, f"tags not logged: {missing}"
    assert [step for step, _ in scalars["train/policy_loss"]] == [1024, 2048]
    assert [step for step, _ in scalars["plasticity/value/effective_rank/0"]] == [1024, 2048]
    # CBP with a maturity threshold of 20 updates replaces units in both networks
    for net in ("policy", "value"):
        assert scalars[f"plasticity/{net}/replacements/all"][-1][1] > 0
    assert sum(value for _, value in scalars["train/replaced_units"]) > 0
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"] == "ppo" and config["preset"] == "cbp"
    assert config["methods"]["cbp"] is True and config["optimizer"]["betas"] == [0.99, 0.99]
    rows = (run / "episodes.csv").read_text().splitlines()
    assert rows[0] == "step,return,length,env" and len(rows) > 1
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 2048 and state["algorithm"] == "ppo"
    cbp_state = state["agent"]["methods"]
    ages = cbp_state["cbp_modules.policy.age"]
    assert int(ages.max()) == 2 * 10 * 16 and int(ages.min()) < 2 * 10 * 16  # some were reset


# --------------------------------------------------------------------------- determinism


def test_seeded_runs_are_identical_and_resume_exactly_in_every_vector_mode(
    tmp_path: Path,
) -> None:
    flags = [*SMALL, "--cbp", "--maturity-threshold", "10", "--plasticity-every", "256"]
    finals = {}
    for mode in ("sync", "batched", "async"):
        mode_flags = [*flags, "--vector-mode", mode]
        full, half = run_and_resume(
            train_ppo, mode_flags, tmp_path, total=1024, stop=512, prefix=f"{mode}-"
        )
        finals[mode] = training_state(full)
        same(finals[mode], training_state(half), f"{mode} resumed")
        # the resumed run's logs continue the interrupted ones: one value per step
        scalars = read_scalars(half)
        assert [s for s, _ in scalars["train/value_loss"]] == [256, 512, 768, 1024]
    again = tmp_path / "sync-again"
    assert (
        train_ppo(*flags, "--vector-mode", "sync", "--total-steps", "1024", "--run-dir", str(again))
        == 0
    )
    same(finals["sync"], training_state(again), "second seeded run")
    same(finals["sync"], finals["batched"], "batched vs sync")
    same(finals["sync"], finals["async"], "async vs sync")


def test_a_killed_run_resumes_from_its_last_checkpoint_exactly(tmp_path: Path) -> None:
    """CleanRL-style options (normalizers, annealing, clipping) and a run killed after its
    checkpoint at step 512 (simulated: its latest checkpoint is the one at 512, its logs go on)."""
    flags = [
        *SMALL,
        "--preset", "cleanrl",
        "--num-envs", "2",
        "--total-steps", "1024",
        "--checkpoint-every", "512",
        "--max-grad-norm", "0.5",
        "--entropy-coef", "0.01",
        "--vector-mode", "sync",
        "--plasticity-every", "0",
    ]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train_ppo(*flags, "--run-dir", str(full)) == 0
    shutil.copytree(full, killed)
    os.replace(killed / "checkpoint.prev.pt", killed / "checkpoint.pt")
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 512
    # how the envs run and how the update is threaded may change on resume: same numbers
    assert (
        train_ppo("--resume", str(killed), "--vector-mode", "batched", "--no-parallel-update") == 0
    )
    a, b = training_state(full), training_state(killed)
    same(a, b)
    assert a["agent"]["obs_normalizer"] is not None and a["agent"]["reward_scaler"] is not None
    assert (full / "episodes.csv").read_text() == (killed / "episodes.csv").read_text()
    lr = read_scalars(killed)["charts/learning_rate"]
    assert [step for step, _ in lr] == [256, 512, 768, 1024]
    assert lr == read_scalars(full)["charts/learning_rate"] and lr[0][1] > lr[-1][1]


def test_parallel_and_sequential_updates_give_the_same_numbers(tmp_path: Path) -> None:
    flags = [*SMALL, "--cbp", "--maturity-threshold", "10", "--total-steps", "512"]
    flags += ["--vector-mode", "sync", "--plasticity-every", "0"]
    assert train_ppo(*flags, "--run-dir", str(tmp_path / "parallel")) == 0
    assert train_ppo(*flags, "--no-parallel-update", "--run-dir", str(tmp_path / "sequential")) == 0
    same(training_state(tmp_path / "parallel"), training_state(tmp_path / "sequential"))


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_writes_a_checkpoint_and_the_run_resumes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "cbp_rl.train", "ppo", *SMALL, "--run-dir", str(run)]
    command += ["--total-steps", "1e8", "--checkpoint-every", "1024", "--plasticity-every", "0"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():  # wait for the first periodic checkpoint
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + sig, stderr
    assert f"stopped by {sig.name} at step" in stderr
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert step >= 1024 and step % 256 == 0
    assert train_ppo("--resume", str(run), "--total-steps", str(step + 256)) == 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == step + 256


# --------------------------------------------------------------------------- env protocol


def test_env_schedules_are_logged_checkpointed_and_restored(tmp_path: Path) -> None:
    import gymnasium as gym
    from schedule_env import ENV_ID, register

    register()
    flags = ["--env", ENV_ID, *PPO_TINY]
    full, half = run_and_resume(train_ppo, flags, tmp_path, total=1536, stop=768)
    a, b = training_state(full), training_state(half)
    same(a, b)
    schedules = a["env"]["schedule_states"]
    # each sub-env counted every lockstep step as num_envs = 2 agent steps
    assert [s["agent_steps"] for s in schedules] == [1536, 1536]
    assert schedules[0] == schedules[1]  # one shared world
    scales = [value for _, value in read_scalars(full)["env/gravity_scale"]]
    assert len(scales) == 6 and len(set(scales)) > 1  # logged each iteration; it changed
    assert gym.spec(ENV_ID).kwargs["num_envs"] == 1


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("evaluate") / "run"
    code = train_ppo(*SMALL, "--total-steps", "512", "--vector-mode", "sync", "--run-dir", str(run))
    assert code == 0
    return run


def test_evaluate_prints_the_same_mean_return_for_the_same_seed(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = evaluations(trained_run, 3, ("3", "3", "4"), capsys)
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("mean return ") and "over 3 episodes" in outputs[0]
    assert outputs[0] != outputs[2]


def test_evaluate_rejects_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main([str(tmp_path / "nothing"), "--episodes", "1"]) == 2
    assert "not a run directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume errors


def test_resume_with_other_training_settings_is_refused(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (trained_run / "checkpoint.pt").read_bytes()
    assert train_ppo("--resume", str(trained_run), "--total-steps", "1024", "--lr", "1e-3") == 2
    err = capsys.readouterr().err
    assert "optimizer.lr: saved 0.0001, current 0.001" in err
    assert (trained_run / "checkpoint.pt").read_bytes() == before


def test_resume_past_the_budget_is_refused(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_ppo("--resume", str(trained_run)) == 2
    assert "raise --total-steps" in capsys.readouterr().err


def test_resume_from_a_corrupt_checkpoint_is_refused(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(data))
    assert train_ppo("--resume", str(run), "--total-steps", "1024") == 2
    assert "corrupt" in capsys.readouterr().err


def test_resume_falls_back_to_the_previous_checkpoint_when_asked(tmp_path: Path) -> None:
    flags = [*SMALL, "--vector-mode", "sync", "--plasticity-every", "0", "--total-steps", "1024"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert train_ppo(*flags, "--checkpoint-every", "512", "--run-dir", str(full)) == 0
    shutil.copytree(full, broken)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train_ppo("--resume", str(broken), "--total-steps", "1536") == 2
    with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
        code = train_ppo("--resume", str(broken), "--resume-fallback", "--total-steps", "1024")
    assert code == 0  # resumed at 512 from checkpoint.prev.pt and reached 1024 again
    same(training_state(full), training_state(broken))
