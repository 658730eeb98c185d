"""PPO on SlipperyAnt-v5 through the CLI: friction logged, resumed on the same schedule."""

from __future__ import annotations

from pathlib import Path

from helpers import PPO_TINY, SLIPPERY_ANT, run_and_resume, same, train_ppo, training_state

from cbp_rl.run.logging import read_scalars

FLAGS = [*SLIPPERY_ANT, *PPO_TINY]


def frictions(run: Path) -> list[tuple[int, float]]:
    return read_scalars(run)["env/friction"]


def test_slippery_ant_logs_friction_and_resumes_on_the_same_schedule(tmp_path: Path) -> None:
    full, half = run_and_resume(train_ppo, [*FLAGS, "--seed", "3"], tmp_path, total=1536, stop=768)

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
