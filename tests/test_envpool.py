"""--vector-mode envpool: EnvPool's MuJoCo envs as the Gymnasium ids they stand for, checked
against Gymnasium's envs; runs, logs, determinism, resume and refusals through the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip(
    "envpool", reason="envpool is not installed (pip install 'cbp_rl[envpool]' or '.[test]')"
)

from helpers import PPO_SMALL as SMALL
from helpers import same

from cbp_rl.agents import ppo_command, sac_command
from cbp_rl.envs.envpool_backend import envpool_task_ids
from cbp_rl.envs.vector import final_observations, make_vector_env
from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars

PPO_SMALL = [*SMALL, "--vector-mode", "envpool"]


def _envpool(env_id: str, num_envs: int, seed: int, **kwargs: Any) -> Any:
    envs = make_vector_env(env_id, num_envs, mode="envpool", num_workers=1, **kwargs)
    envs.reset(seed=seed)
    return envs


def _actions(steps: int, num_envs: int, dim: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (scale * rng.uniform(-1, 1, (steps, num_envs, dim))).astype(np.float32)


def _rollout(envs: Any, actions: np.ndarray) -> list[tuple[Any, ...]]:
    steps = []
    for batch in actions:
        obs, rewards, terminated, truncated, infos = envs.step(batch)
        finals = final_observations(infos)
        final = np.stack([finals.get(i, np.zeros_like(obs[0])) for i in range(len(obs))])
        steps.append((obs, rewards, terminated, truncated, final, infos))
    return steps


# --------------------------------------------------------------------------- the envs


GYMNASIUM_IDS = [i for i in envpool_task_ids() if i.endswith(("-v4", "-v5"))]


@pytest.mark.parametrize("env_id", GYMNASIUM_IDS)
def test_spaces_and_time_limit_are_gymnasiums(
    env_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to ./MUJOCO_LOG.TXT
    try:
        reference = gym.make(env_id)
    except ImportError as err:  # Gymnasium builds Pusher-v4 only with mujoco < 3
        pytest.skip(f"Gymnasium cannot build {env_id} here: {err}")
    envs = make_vector_env(env_id, 2, mode="envpool")
    try:
        assert envs.single_observation_space == reference.observation_space
        assert envs.single_action_space == reference.action_space
        assert reference.spec is not None
        assert envs.unwrapped.max_episode_steps == reference.spec.max_episode_steps
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, *reference.observation_space.shape)
        assert obs.dtype == reference.observation_space.dtype
        obs, rewards, *_ = envs.step(envs.action_space.sample())
        assert obs.dtype == reference.observation_space.dtype and rewards.dtype == np.float64
    finally:
        envs.close()
        reference.close()


def test_hopper_transitions_are_gymnasiums_from_the_same_state() -> None:
    """Each EnvPool step, redone by Gymnasium's Hopper-v4 from the state EnvPool was in (read
    from the observation and x position), gives the same observation, reward and termination."""
    envs = _envpool("Hopper-v4", 1, seed=3)
    reference = gym.make("Hopper-v4").unwrapped
    reference.reset(seed=0)
    obs, _, _, _, infos = envs.step(np.zeros((1, 3), np.float32))
    compared = terminations = 0
    worst = 0.0
    for action in _actions(400, 1, 3, scale=2.0):
        state_known = bool(np.all(np.abs(obs[0, 5:]) < 10))  # the observation clips velocities
        if state_known:
            reference.set_state(np.concatenate([infos["x_position"], obs[0, :5]]), obs[0, 5:])
        obs, rewards, terminated, truncated, infos = envs.step(action)
        if not state_known:
            continue
        expected_obs, expected_reward, expected_terminated, _, _ = reference.step(action[0])
        seen = infos["final_obs"][0] if terminated[0] or truncated[0] else obs[0]
        worst = max(worst, float(np.abs(seen - expected_obs).max()))
        # contacts: the solver's warm start is EnvPool's own, differences of ~1e-7 remain
        np.testing.assert_allclose(seen, expected_obs, rtol=1e-5, atol=1e-6)
        # EnvPool rounds rewards to float32 (relative error <= 2**-24)
        assert rewards[0] == pytest.approx(expected_reward, rel=1e-6, abs=1e-7)
        assert terminated[0] == expected_terminated
        compared += 1
        terminations += int(terminated[0])
    assert compared > 300 and terminations >= 5, (compared, terminations)
    print(f"largest observation difference: {worst:.2e}")


def test_ant_reward_terms_and_termination_follow_gymnasiums_definitions() -> None:
    """Ant-v4: reward = forward + healthy - ctrl cost; forward = x velocity over dt = 0.05;
    ctrl cost = 0.5 |a|^2; terminated exactly when the torso height leaves its healthy range
    (narrowed here so that random actions end episodes); the first step from a state is
    Gymnasium's."""
    kwargs = {"healthy_z_range": [0.4, 0.9]}
    envs = _envpool("Ant-v4", 2, seed=1, env_kwargs=kwargs)
    reference = gym.make("Ant-v4", **kwargs).unwrapped
    reference.reset(seed=0)
    x = envs.step(np.zeros((2, 8), np.float32))[4]["x_position"]
    fresh = np.zeros(2, dtype=bool)  # the x position before a reset's first step is not known
    ended = 0
    for action in _actions(400, 2, 8, scale=1.0):
        obs, rewards, terminated, truncated, infos = envs.step(action)
        forward, ctrl = infos["reward_forward"], infos["reward_ctrl"]
        np.testing.assert_allclose(ctrl, -0.5 * (action.astype(np.float64) ** 2).sum(1), rtol=1e-12)
        velocity = (infos["x_position"] - x) / reference.dt
        np.testing.assert_allclose(forward[~fresh], velocity[~fresh], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(rewards, forward + ctrl + 1.0, rtol=1e-6, atol=1e-6)
        finals = final_observations(infos)
        for i in range(2):
            height = finals.get(i, obs[i])[0]
            assert terminated[i] == (not 0.4 <= height <= 0.9), (i, height)
        ended += int(terminated.sum())
        x, fresh = infos["x_position"], terminated | truncated
    assert ended >= 3
    # one step of Gymnasium's Ant from EnvPool's state (contacts make later steps drift apart)
    obs, *_, infos = envs.step(np.zeros((2, 8), np.float32))
    qpos = np.concatenate([[infos["x_position"][0], infos["y_position"][0]], obs[0, :13]])
    reference.set_state(qpos, obs[0, 13:])
    action = _actions(1, 2, 8, seed=9)[0]
    expected_obs, expected_reward, *_ = reference.step(action[0])
    obs, rewards, *_ = envs.step(action)
    np.testing.assert_allclose(obs[0], expected_obs, rtol=0, atol=1e-5)
    assert rewards[0] == pytest.approx(expected_reward, rel=1e-5, abs=1e-5)


def test_episodes_end_at_the_time_limit_with_gymnasiums_flags_and_statistics() -> None:
    envs = _envpool("Ant-v4", 2, seed=0)  # standing still, the ant stays healthy
    zeros = np.zeros((2, 8), np.float32)
    total = np.zeros(2)
    for step in range(1, 1001):
        obs, rewards, terminated, truncated, infos = envs.step(zeros)
        total += rewards
        assert not terminated.any()
        assert truncated.all() == (step == 1000) and truncated.any() == (step == 1000)
    assert set(final_observations(infos)) == {0, 1}
    assert (infos["episode"]["l"] == 1000).all() and infos["_episode"].all()
    np.testing.assert_allclose(infos["episode"]["r"], total, rtol=1e-12)
    assert not np.array_equal(infos["final_obs"][0], obs[0])  # obs is the next episode's first
    # --env-kwargs max_episode_steps sets the limit, as in gym.make
    short = _envpool("Ant-v4", 2, seed=0, env_kwargs={"max_episode_steps": 30})
    flags = [short.step(zeros)[3] for _ in range(60)]
    assert [i + 1 for i, f in enumerate(flags) if f.all()] == [30, 60]


def test_an_unhealthy_last_step_is_terminated_and_truncated_as_in_gymnasium() -> None:
    actions = _actions(200, 1, 3, scale=3.0)
    steps = _rollout(_envpool("Hopper-v4", 1, seed=2), actions)
    first_end = next(t for t, s in enumerate(steps) if s[2][0]) + 1
    limited = _envpool("Hopper-v4", 1, seed=2, env_kwargs={"max_episode_steps": first_end})
    again = _rollout(limited, actions[:first_end])
    _, _, terminated, truncated, final, _ = again[-1]
    assert terminated[0] and truncated[0]
    np.testing.assert_array_equal(final, steps[first_end - 1][4])


def test_seeded_envs_are_deterministic_whatever_the_number_of_threads() -> None:
    actions = _actions(150, 4, 3, scale=2.0)
    runs = []
    for threads in (1, 2, 4):
        envs = make_vector_env("Hopper-v4", 4, mode="envpool", num_workers=threads)
        first, _ = envs.reset(seed=11)
        runs.append([(first,), *(s[:5] for s in _rollout(envs, actions))])
        envs.close()
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
    assert sum(int(s[2].sum()) for s in runs[0][1:]) > 0  # episodes ended and restarted
    other = make_vector_env("Hopper-v4", 4, mode="envpool").reset(seed=12)[0]
    assert not np.array_equal(other, runs[0][0][0])


# --------------------------------------------------------------------------- runs


def _state(run_dir: Path) -> dict[str, Any]:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {"step": state["step"], "agent": state["agent"], "env": state["env"]}


@pytest.mark.slow
def test_ppo_runs_log_like_the_other_modes_are_deterministic_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*PPO_SMALL, "--cbp", "--maturity-threshold", "10", "--plasticity-every", "256"]
    full, again, half = tmp_path / "full", tmp_path / "again", tmp_path / "half"
    assert ppo_command.main([*flags, "--total-steps", "1024", "--run-dir", str(full)]) == 0
    assert ppo_command.main([*flags, "--total-steps", "1024", "--run-dir", str(again)]) == 0
    same(_state(full), _state(again), "second seeded envpool run")
    scalars = read_scalars(full)
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/sps",
                "train/value_loss", "plasticity/policy/effective_rank/0"):  # fmt: skip
        assert tag in scalars, tag
    rows = (full / "episodes.csv").read_text().splitlines()
    assert rows[0] == "step,return,length,env" and len(rows) > 5
    lengths = [int(row.split(",")[2]) for row in rows[1:]]
    assert sum(lengths) <= 1024 and min(lengths) >= 1

    assert ppo_command.main([*flags, "--total-steps", "512", "--run-dir", str(half)]) == 0
    saved = _state(half)
    capsys.readouterr()
    assert ppo_command.main(["--resume", str(half), "--total-steps", "1024"]) == 0
    err = capsys.readouterr().err
    assert "EnvPool cannot save its simulations" in err and "learner continues exactly" in err
    # the checkpoint holds no simulation state, only what restarts the episodes
    assert saved["env"] == {"backend": "envpool", "num_envs": 2, "env_id": "Hopper-v4",
                            "episode_count": saved["env"]["episode_count"]}  # fmt: skip
    assert load_checkpoint(half / "checkpoint.pt")["step"] == 1024
    # a resumed run is deterministic too: resuming the same checkpoint again gives the same run
    copy = tmp_path / "half-again"
    assert ppo_command.main([*flags, "--total-steps", "512", "--run-dir", str(copy)]) == 0
    same(saved, _state(copy), "interrupted runs")
    assert ppo_command.main(["--resume", str(copy), "--total-steps", "1024"]) == 0
    same(_state(half), _state(copy), "resumed runs")
    # the resumed run logs one value per update, as an uninterrupted one
    assert [s for s, _ in read_scalars(half)["train/value_loss"]] == [256, 512, 768, 1024]


def test_a_resumed_learner_is_exactly_the_checkpointed_one(tmp_path: Path) -> None:
    """What a resume continues from: the interrupted run's learner at 512 is the uninterrupted
    run's at 512, bit for bit."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert ppo_command.main([*PPO_SMALL, "--total-steps", "768", "--checkpoint-every", "512",
                             "--run-dir", str(a)]) == 0  # fmt: skip
    assert ppo_command.main([*PPO_SMALL, "--total-steps", "512", "--run-dir", str(b)]) == 0
    checkpoints_a = sorted(a.glob("checkpoint*.pt"))
    states = [load_checkpoint(p) for p in checkpoints_a]
    at_512 = next(s for s in states if s["step"] == 512)
    same(at_512["agent"], load_checkpoint(b / "checkpoint.pt")["agent"], "learner at 512")


def test_sac_runs_and_resumes_on_envpool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "sac"
    flags = [
        "--env", "Hopper-v4", "--num-envs", "2", "--vector-mode", "envpool",
        "--warmup-steps", "100", "--batch-size", "32", "--hidden-sizes", "32", "32",
        "--log-every", "100", "--plasticity-every", "0", "--no-progress",
    ]  # fmt: skip
    assert sac_command.main([*flags, "--total-steps", "300", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert sac_command.main(["--resume", str(run), "--total-steps", "500"]) == 0
    assert "EnvPool cannot save its simulations" in capsys.readouterr().err
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 500 and state["env"]["backend"] == "envpool"
    assert "charts/episodic_return" in read_scalars(run)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ("SlipperyAnt-v4", [], "changes its MuJoCo model while it runs"),
        ("Pendulum-v1", [], "not one of Gymnasium's own MuJoCo environments"),
        ("Antt-v4", [], "unknown environment id 'Antt-v4'"),
        ("Ant-v5", ["--env-kwargs", '{"main_body": 1}'], "no equivalent in EnvPool"),
    ],
)
def test_envs_envpool_cannot_run_as_gymnasium_does_are_refused(
    env: str, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (ppo_command, sac_command):
        argv = ["--env", env, *extra, "--vector-mode", "envpool", "--total-steps", "100"]
        assert command.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err, err


def test_schedule_envs_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from schedule_env import ENV_ID, register

    register()
    assert ppo_command.main(["--env", ENV_ID, "--vector-mode", "envpool"]) == 2
    assert "changes its MuJoCo model while it runs" in capsys.readouterr().err


def test_gymnasium_kwargs_are_translated_or_refused() -> None:
    envs = make_vector_env(
        "Ant-v4",
        1,
        mode="envpool",
        env_kwargs={"use_contact_forces": True, "healthy_z_range": [0.3, 1.0]},
    )
    reference = gym.make("Ant-v4", use_contact_forces=True)
    assert envs.single_observation_space == reference.observation_space
    assert envs.unwrapped.make_kwargs == {
        "use_contact_force": True,
        "healthy_z_min": 0.3,
        "healthy_z_max": 1.0,
    }


def test_resuming_on_the_other_simulator_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert ppo_command.main([*PPO_SMALL, "--total-steps", "256", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    code = ppo_command.main(["--resume", str(run), "--total-steps", "512", "--vector-mode", "sync"])
    assert code == 2
    assert "resume it with --vector-mode envpool" in capsys.readouterr().err


def test_a_missing_envpool_package_is_named_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cbp_rl.envs import envpool_backend

    monkeypatch.setattr(envpool_backend, "envpool_available", lambda: False)
    assert ppo_command.main(["--env", "Ant-v4", "--vector-mode", "envpool"]) == 2
    assert "pip install 'cbp_rl[envpool]'" in capsys.readouterr().err
