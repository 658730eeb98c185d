"""Whole SAC runs through the command: logs and metrics, CBP in every network, determinism,
exact resume with the replay buffer, resume without it, evaluation, a non-stationary env.

Real MuJoCo envs with tiny budgets and small networks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
    SLIPPERY_ANT,
    evaluations,
    plasticity_tags,
    run_and_resume,
    same,
    train_sac,
    training_state,
)

from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = [
    "--env", "Hopper-v4",
    "--hidden-sizes", "32", "32",
    "--batch-size", "64",
    "--warmup-steps", "100",
    "--buffer-size", "5000",
    "--log-every", "100",
    "--no-progress",
]  # fmt: skip


# --------------------------------------------------------------------------- smoke


@pytest.fixture(scope="module")
def cbp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sac") / "cbp"
    code = train_sac(
        *SMALL,
        "--cbp",
        "--maturity-threshold", "20",
        "--total-steps", "500",
        "--plasticity-every", "200",
        "--run-dir", str(run),
    )  # fmt: skip
    assert code == 0
    return run


def test_a_cbp_run_logs_every_metric(cbp_run: Path) -> None:
    scalars = read_scalars(cbp_run)
    expected = [
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/sps",
        "charts/update_time_fraction",
        "charts/learning_rate",
        "charts/replay_size",
        "charts/updates",
        "train/q1_loss",
        "train/q2_loss",
        "train/critic_loss",
        "train/q1_values",
        "train/q2_values",
        "train/target_q",
        "train/actor_loss",
        "train/entropy",
        "train/log_std",
        "train/alpha",
        "train/alpha_loss",
        "train/updates",
        "train/actor_updates",
        "train/replaced_units",
        "plasticity/actor/action_saturation",
        "plasticity/actor/log_std",
    ]
    expected += plasticity_tags(("actor", "q1", "q2"), hidden_layers=2)
    missing = [tag for tag in expected if tag not in scalars]
    assert not missing, f"tags not logged: {missing}"
    assert [step for step, _ in scalars["charts/updates"]] == [100, 200, 300, 400, 500]
    assert [value for _, value in scalars["charts/updates"]] == [0, 100, 200, 300, 400]
    assert [step for step, _ in scalars["train/q1_loss"]] == [200, 300, 400, 500]  # not in warm-up
    probes = [step for step, _ in scalars["plasticity/q1/effective_rank/0"]]
    assert probes == [100, 200, 400]  # the baseline at the first iteration, then every 200
    assert [value for _, value in scalars["charts/replay_size"]][-1] == 500
    config = json.loads((cbp_run / "config.json").read_text())
    assert config["algorithm"] == "sac" and config["preset"] == "cbp"
    rows = (cbp_run / "episodes.csv").read_text().splitlines()
    assert rows[0] == "step,return,length,env" and len(rows) > 1


def test_cbp_replaces_units_in_the_actor_and_both_critics(cbp_run: Path) -> None:
    scalars = read_scalars(cbp_run)
    for net in ("actor", "q1", "q2"):
        assert scalars[f"plasticity/{net}/replacements/all"][-1][1] > 0, net
    state = load_checkpoint(cbp_run / "checkpoint.pt")
    assert state["step"] == 500 and state["algorithm"] == "sac"
    methods = state["agent"]["methods"]
    for net in ("actor", "q1", "q2"):
        ages = methods[f"cbp_modules.{net}.age"]
        assert int(ages.max()) == 400 and int(ages.min()) < 400  # one CBP step per update
    assert not any("target" in key for key in methods)
    replay = state["agent"]["replay"]
    assert replay["obs"].shape == (501, 1, 11)  # the buffer, filled part only


def test_evaluate_prints_the_same_mean_return_for_the_same_seed(
    cbp_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = evaluations(cbp_run, 2, ("3", "3", "4"), capsys)
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    assert outputs[0].startswith("mean return ") and "checkpoint at step 500" in outputs[0]


# --------------------------------------------------------------------------- resume


def test_seeded_runs_are_identical_and_resume_with_the_buffer_exactly(tmp_path: Path) -> None:
    flags = [*SMALL, "--cbp", "--maturity-threshold", "10", "--num-envs", "2"]
    flags += ["--replay-ratio", "0.75", "--plasticity-every", "200"]
    sync = [*flags, "--vector-mode", "sync"]
    # how the envs run may change on resume: the same numbers
    batched = ("--vector-mode", "batched")
    full, half = run_and_resume(
        train_sac, sync, tmp_path, total=600, stop=300, resume_flags=batched
    )
    final = training_state(full)
    same(final, training_state(half), "resumed")
    assert final["agent"]["updates"] == 375  # 0.75 x (600 - 100 warm-up steps)
    again = tmp_path / "again"
    assert train_sac(*sync, "--total-steps", "600", "--run-dir", str(again)) == 0
    same(final, training_state(again), "second seeded run")
    # the resumed run's logs continue the interrupted ones: one value per step
    resumed, uninterrupted = read_scalars(half), read_scalars(full)
    assert [s for s, _ in resumed["train/q1_loss"]] == [200, 300, 400, 500, 600]
    assert resumed["train/q1_loss"] == uninterrupted["train/q1_loss"]
    assert (
        resumed["plasticity/q2/replacements/all"] == uninterrupted["plasticity/q2/replacements/all"]
    )
    assert (full / "episodes.csv").read_text() == (half / "episodes.csv").read_text()


def test_without_the_buffer_a_resumed_run_refills_it_before_learning_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = [*SMALL, "--plasticity-every", "0"]
    assert train_sac(*flags, "--no-save-replay", "--total-steps", "300", "--run-dir", str(run)) == 0
    small = load_checkpoint(run / "checkpoint.pt")
    assert small["agent"]["replay"] is None and small["agent"]["updates"] == 200
    with pytest.warns(UserWarning, match="holds no replay buffer"):
        code = train_sac("--resume", str(run), "--total-steps", "600", "--save-replay")
    assert code == 0
    state = load_checkpoint(run / "checkpoint.pt")["agent"]
    # 100 steps of the current policy refill the buffer, then one update per step again
    assert state["learn_from"] == 400 and state["updates"] == 400
    assert state["replay"]["obs"].shape[0] == 301  # from the resume on; saved again
    updates = read_scalars(run)["charts/updates"]
    assert [value for _, value in updates] == [0, 100, 200, 200, 300, 400]


def test_resume_with_other_training_settings_is_refused(
    cbp_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (cbp_run / "checkpoint.pt").read_bytes()
    code = train_sac("--resume", str(cbp_run), "--total-steps", "600", "--replay-ratio", "2")
    assert code == 2
    assert "sac.replay_ratio: saved 1.0, current 2.0" in capsys.readouterr().err
    assert (cbp_run / "checkpoint.pt").read_bytes() == before
    assert train_sac("--resume", str(cbp_run)) == 2
    assert "raise --total-steps" in capsys.readouterr().err


# --------------------------------------------------------------------------- non-stationary


def test_slippery_ant_logs_friction_and_resumes_on_the_same_schedule(tmp_path: Path) -> None:
    flags = [
        *SLIPPERY_ANT,
        "--hidden-sizes", "16",
        "--batch-size", "32",
        "--warmup-steps", "512",
        "--log-every", "256",
        "--seed", "3",
        "--plasticity-every", "0",
        "--no-progress",
    ]  # fmt: skip
    full, half = run_and_resume(train_sac, flags, tmp_path, total=768, stop=512)
    frictions = read_scalars(full)["env/friction"]
    assert [step for step, _ in frictions] == [256, 512, 768]
    assert len({value for _, value in frictions}) == 3  # a new friction every 256 steps
    assert read_scalars(half)["env/friction"] == frictions
    a, b = training_state(full), training_state(half)
    same(a, b)
    schedule = a["env"]["schedule_states"][0]
    assert schedule["agent_steps"] == 768 and schedule["values"]["seed"] == 3
