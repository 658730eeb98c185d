"""PPO on SlipperyAnt-v5 through the CLI: friction logged, resumed on the same schedule."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import same, train_ppo, training_state

from cbp_rl.run.logging import read_scalars

FLAGS = [
    "--env", "SlipperyAnt-v5",
    "--env-kwargs", json.dumps({"change_every": 256, "at_episode_end": False}),
    "--num-envs", "2",
    "--batch-size", "256",
    "--num-minibatches", "4",
    "--update-epochs", "1",
    "--hidden-sizes", "16",
    "--vector-mode", "batched",
    "--plasticity-every", "0",
    "--no-progress",
]  # fmt: skip


def frictions(run: Path) -> list[tuple[int, float]]:
    return read_scalars(run)["env/friction"]


def test_slippery_ant_logs_friction_and_resumes_on_the_same_schedule(tmp_path: Path) -> None:
    full, half = tmp_path / "full", tmp_path / "half"
    assert train_ppo(*FLAGS, "--seed", "3", "--total-steps", "1536", "--run-dir", str(full)) == 0
    assert train_ppo(*FLAGS, "--seed", "3", "--total-steps", "768", "--run-dir", str(half)) == 0
    assert train_ppo("--resume", str(half), "--total-steps", "1536") == 0

    logged = frictions(full)
    assert [step for step, _ in logged] == [256, 512, 768, 1024, 1280, 1536]
    values = [value for _, value in logged]
    assert all(0.02 <= v <= 2.0 for v in values)
    assert len(set(values)) >= 4  # a new friction every 256 agent steps, at once
    assert frictions(half) == logged  # the resumed run continued the same sequence

    a, b = training_state(full), training_state(half)
    same(a, b)
    schedules = a["env"]["schedule_states"]
    assert [s["agent_steps"] for s in schedules] == [1536, 1536]  # resets are not steps
    assert schedules[0] == schedules[1]  # both sub-environments live in one world
    assert schedules[0]["values"]["seed"] == 3  # the friction sequence follows the run seed


def test_another_seed_sees_another_friction_sequence(tmp_path: Path) -> None:
    run = tmp_path / "seed4"
    assert train_ppo(*FLAGS, "--seed", "4", "--total-steps", "512", "--run-dir", str(run)) == 0
    other = tmp_path / "seed5"
    assert train_ppo(*FLAGS, "--seed", "5", "--total-steps", "512", "--run-dir", str(other)) == 0
    assert [v for _, v in frictions(run)] != [v for _, v in frictions(other)]
