"""Slowly-changing regression: the problem by hand, a step against autograd, batched = single,
exact resume, the command (a real process, a real SIGTERM) and its bad-input errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbp_rl.lab.plot import load_run
from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars
from cbp_rl.supervised.engine import BatchedLearner
from cbp_rl.supervised.regression_command import main
from cbp_rl.supervised.regression_config import (
    CBPLearnerConfig,
    LearnerNetworkConfig,
    MeasureConfig,
    OptimConfig,
    ProblemConfig,
    RegressionConfig,
    RunConfig,
)
from cbp_rl.supervised.regression_problem import ProblemSpec, SlowlyChangingInputs, TargetNetwork
from cbp_rl.supervised.regression_run import run
from cbp_rl.supervised.results import load_results

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- the problem
def hand_target(target: TargetNetwork, s: int, x: list[float], beta: float) -> float:
    """The reference's LTU network for one input, in plain Python."""
    w = target.hidden_weight[s].t().tolist()  # [features][inputs]
    b = target.hidden_bias[s, 0].tolist()
    v = target.output_weight[s, :, 0].tolist()
    c = float(target.output_bias[s, 0, 0])
    m = len(x)
    y = c
    for i in range(len(w)):
        z = sum(wk * xk for wk, xk in zip(w[i], x, strict=True)) + b[i]
        negatives = (m - sum(w[i]) + b[i]) / 2
        if z > beta * (m + 1) - negatives:
            y += v[i]
    return y


def test_target_network_matches_a_hand_computation() -> None:
    problem = ProblemSpec(num_inputs=20, num_features=100, beta=0.7)
    target = TargetNetwork(problem, [3, 7])
    for tensor in (target.hidden_weight, target.hidden_bias, target.output_weight):
        assert set(tensor.unique().tolist()) == {-1.0, 1.0}
    inputs = torch.randint(0, 2, (2, 50, 20), generator=torch.Generator().manual_seed(1)).float()
    outputs = target(inputs)
    fired = target.features(inputs).mean()
    assert 0.0 < float(fired) < 0.5  # some units fire, most do not
    for s in range(2):
        for n in range(50):
            expected = hand_target(target, s, inputs[s, n].tolist(), 0.7)
            assert float(outputs[s, n]) == expected
    single = TargetNetwork(problem, [7])
    assert torch.equal(single.hidden_weight[0], target.hidden_weight[1])
    assert torch.equal(single.threshold[0], target.threshold[1])


@pytest.mark.parametrize("flip_one", [False, True])
def test_input_stream_holds_slow_bits_for_a_period(flip_one: bool) -> None:
    problem = ProblemSpec(num_inputs=8, num_flipping_bits=5, flip_after=100, flip_one=flip_one)
    stream = SlowlyChangingInputs(problem, [0, 1])
    inputs = torch.cat([stream.next(130), stream.next(370)], dim=1)  # [2, 500, 8]
    assert set(inputs.unique().tolist()) == {0.0, 1.0}
    periods = inputs[:, :, :5].reshape(2, 5, 100, 5)
    assert torch.equal(periods, periods[:, :, :1].expand_as(periods))  # constant within a period
    slow = periods[:, :, 0]  # [2, 5 periods, 5 bits]
    changes = (slow[:, 1:] != slow[:, :-1]).sum(-1)
    if flip_one:
        assert torch.equal(changes, torch.ones_like(changes))
    else:
        assert int(changes.sum()) > 0
    fast = inputs[:, :, 5:]
    assert 0.4 < float(fast.mean()) < 0.6
    assert (fast[:, 1:] != fast[:, :-1]).any(-1).float().mean() > 0.8  # drawn per example
    single = SlowlyChangingInputs(problem, [1])
    assert torch.equal(torch.cat([single.next(130), single.next(370)], dim=1)[0], inputs[1])


# ----------------------------------------------------------------------------- one step
@pytest.mark.parametrize(
    ("activation", "learner", "optimizer"),
    [
        ("relu", "bp", "sgd"),
        ("tanh", "l2", "sgd"),
        ("swish", "bp", "adam"),
        ("sigmoid", "l2", "adam"),
        ("linear", "bp", "sgd"),
    ],
)
def test_one_learner_step_matches_autograd(activation: str, learner: str, optimizer: str) -> None:
    config = RegressionConfig(
        learner=learner,  # type: ignore[arg-type]
        network=LearnerNetworkConfig(activation=activation),  # type: ignore[arg-type]
        optim=OptimConfig(optimizer=optimizer),  # type: ignore[arg-type]
    )
    engine = BatchedLearner(config.network_spec(), config.learner_spec(), [5], loss="squared_error")
    module = engine.to_module(0)
    x = torch.randint(0, 2, (1, 1, 20), generator=torch.Generator().manual_seed(2)).float()
    y = torch.tensor([[3.0]])
    decay = config.resolved("weight_decay")
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(module.parameters(), lr=0.01, weight_decay=decay)
        if optimizer == "sgd"
        else torch.optim.Adam(module.parameters(), lr=0.01, weight_decay=decay)
    )
    loss = F.mse_loss(module(x[0]), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    engine.train(x, y)
    _, loss_sum, examples = engine.take_totals()
    assert examples == 1
    assert float(loss_sum[0]) == pytest.approx(float(loss.detach()), rel=1e-6)
    for mine, theirs in zip(engine.to_module(0).parameters(), module.parameters(), strict=True):
        scale = float(theirs.detach().abs().max())
        torch.testing.assert_close(mine, theirs.detach(), rtol=0, atol=1e-6 * scale)


def test_initial_weights_follow_the_reference_init() -> None:
    config = RegressionConfig(seeds=1, network=LearnerNetworkConfig(activation="tanh"))
    engine = BatchedLearner(config.network_spec(), config.learner_spec(), [0])
    hidden, out = engine.weights
    assert float(hidden.abs().max()) <= 5 / 3 * (3 / 20) ** 0.5
    assert float(hidden.abs().max()) > 0.9 * 5 / 3 * (3 / 20) ** 0.5
    assert float(out.abs().max()) <= (3 / 5) ** 0.5
    assert all(float(b.abs().max()) == 0.0 for b in engine.biases)


# ----------------------------------------------------------------------------- runs
def small(run_dir: Path, **changes: object) -> RegressionConfig:
    config = RegressionConfig(
        learner="cbp",
        seeds=3,
        examples=4000,
        bin_size=2000,
        problem=ProblemConfig(flip_after=700),
        cbp=CBPLearnerConfig(replacement_rate=1e-2, maturity_threshold=20),
        measures=MeasureConfig(probe_examples=200),
        run=RunConfig(run_dir=run_dir, progress=False, checkpoint_every=0),
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def resumed(config: RegressionConfig, run_dir: Path) -> RegressionConfig:
    return dataclasses.replace(config, run=RunConfig(resume=run_dir, progress=False))


def final_engine(run_dir: Path) -> dict[str, object]:
    engine = load_checkpoint(run_dir / "checkpoint.pt")["engine"]
    assert isinstance(engine, dict)
    return engine


def test_batched_seeds_equal_single_runs(tmp_path: Path) -> None:
    batched = small(tmp_path / "batched")
    run(batched, log=lambda _: None)
    together = load_results(tmp_path / "batched")
    assert int(together["replacements"].sum()) > 0  # CBP did replace units
    weights = final_engine(tmp_path / "batched")["weights"]
    for index, seed in enumerate((0, 2)):
        alone = small(tmp_path / f"alone{seed}", seeds=1, seed=seed)
        run(alone, log=lambda _: None)
        single = load_results(tmp_path / f"alone{seed}")
        row = 2 * index
        for name in ("errors", "dead_units", "effective_rank", "weight_magnitude", "replacements"):
            np.testing.assert_array_equal(single[name][0], together[name][row], err_msg=name)
        single_weights = final_engine(tmp_path / f"alone{seed}")["weights"]
        for mine, theirs in zip(single_weights, weights, strict=True):  # type: ignore[call-overload]
            assert torch.equal(mine[0], theirs[row])


@pytest.mark.parametrize("learner", ["cbp", "snp"])
def test_resume_is_identical(tmp_path: Path, learner: str) -> None:
    whole = small(tmp_path / "whole", learner=learner)
    run(whole, log=lambda _: None)
    parts = small(tmp_path / "parts", learner=learner)
    first = run(parts, stop_at_examples=2500, log=lambda _: None)  # at a bin's end
    assert first.stopped and first.bins_done == 1
    status = json.loads((tmp_path / "parts" / "status.json").read_text())
    assert status["step"] == 2000 and not status["finished"]
    middle = run(resumed(parts, tmp_path / "parts"), stop_at_examples=3500, log=lambda _: None)
    assert middle.stopped and middle.bins_done == 1  # stopped mid-bin, at a chunk boundary
    second = run(resumed(parts, tmp_path / "parts"), log=lambda _: None)
    assert not second.stopped and second.bins_done == 2
    a, b = load_results(tmp_path / "whole"), load_results(tmp_path / "parts")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for mine, theirs in zip(
        final_engine(tmp_path / "whole")["weights"],  # type: ignore[call-overload]
        final_engine(tmp_path / "parts")["weights"],  # type: ignore[call-overload]
        strict=True,
    ):
        assert torch.equal(mine, theirs)
    logged = read_scalars(tmp_path / "parts")["bin/error"]
    assert [step for step, _ in logged] == [2000, 4000]
    np.testing.assert_allclose([v for _, v in logged], a["errors"].mean(0), rtol=1e-6)


def test_run_directory_and_plot(tmp_path: Path) -> None:
    config = small(tmp_path / "r", seeds=2, examples=3000, bin_size=500)
    run(config, log=lambda _: None)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["algorithm"] == "regression" and saved["learner"] == "cbp"
    assert (tmp_path / "r" / "seed_1" / "config.json").is_file()
    results = load_results(tmp_path / "r")
    assert results["errors"].shape == (2, 6) and np.isfinite(results["errors"]).all()
    assert ((results["dead_units"] >= 0) & (results["dead_units"] <= 1)).all()
    assert ((results["effective_rank"] >= 1) & (results["effective_rank"] <= 5)).all()
    scalars = read_scalars(tmp_path / "r")
    for tag in (
        "bin/error",
        "bin/replacements",
        "plasticity/dead_units",
        "plasticity/effective_rank",
    ):
        assert len(scalars[tag]) == 6, tag
    loaded = load_run(tmp_path / "r")
    assert loaded.series["error"].values.shape == (2, 6)
    assert list(loaded.series["error"].x) == [500.0 * k for k in range(1, 7)]
    assert {"error", "dead_units", "effective_rank", "weight_magnitude"} <= set(loaded.figures)


def test_backprop_learns_the_target(tmp_path: Path) -> None:
    """On one period of the stream (flip_after = the run), the error falls well below the
    target's variance."""
    config = small(
        tmp_path / "r",
        learner="bp",
        seeds=2,
        examples=6000,
        bin_size=2000,
        problem=ProblemConfig(flip_after=6000),
    )
    summary = run(config, log=lambda _: None)
    target = TargetNetwork(config.problem.spec(), [0, 1])
    stream = SlowlyChangingInputs(config.problem.spec(), [0, 1])
    variance = target(stream.next(6000)).var(1)
    assert (summary.errors[:, -1] < 0.5 * variance.numpy()).all(), (summary.errors, variance)
    assert (summary.errors[:, -1] < summary.errors[:, 0]).all()


# ----------------------------------------------------------------------------- the command
def plain(text: str) -> str:
    """An error message without tyro's box and line wrapping."""
    return " ".join(re.sub(r"[│|╭╮╰╯]", " ", text).split())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-flipping-bits", "30"], "--num-flipping-bits must be in [0, --num-inputs=20]"),
        (["--examples", "30000"], "must be a multiple of --bin-size"),
        (["--step-size", "-1"], "step size must be positive"),
        (["--bin-size", "0"], "--bin-size must be >= 1"),
        (["--learner", "cbp", "--activation", "linear"], "--activation linear has none"),
        (["--beta", "2"], "--beta must be in [0, 1]"),
        (["--flip-after", "0"], "--flip-after must be >= 1"),
        (["--replacement-rate", "2", "--learner", "cbp"], "replacement_rate must be in [0, 1]"),
        (["--resume", "no/such/dir"], "not a regression run directory"),
    ],
)
def test_command_rejects_bad_input(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(flags) == 2
    assert message in plain(capsys.readouterr().err)


def test_command_refuses_an_unknown_activation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--activation", "gelu"]) == 2
    assert "activation" in plain(capsys.readouterr().err)


def test_resume_refuses_changed_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = small(tmp_path / "r", seeds=1, examples=1000, bin_size=500, learner="bp")
    run(config, log=lambda _: None)
    assert main(["--resume", str(tmp_path / "r"), "--step-size", "0.1"]) == 2
    assert "optim.step_size" in plain(capsys.readouterr().err)
    assert main(["--resume", str(tmp_path / "r"), "--examples", "1500", "--no-progress"]) == 0
    assert int(load_results(tmp_path / "r")["bins_done"]) == 3


@pytest.mark.slow
def test_sigterm_stops_the_process_and_resume_finishes(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    argv = [sys.executable, "-m", "cbp_rl.train", "regression", "--seeds", "2"]
    argv += ["--examples", "400000", "--bin-size", "1000", "--run-dir", str(run_dir)]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    status = run_dir / "status.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (run_dir / "results.npz").is_file() and int(load_results(run_dir)["bins_done"]) >= 2:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err.decode()
    stopped = json.loads(status.read_text())
    assert stopped["stopped_by"] == "SIGTERM" and not stopped["finished"]
    assert 2000 <= stopped["step"] < 400_000
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == stopped["step"]
    done = subprocess.run(
        [*argv[:4], "--resume", str(run_dir), "--examples", str(stopped["step"] + 3000)],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"resuming" in done.stderr
    finished = json.loads(status.read_text())
    assert finished["finished"] and finished["step"] == stopped["step"] + 3000


def test_a_regression_sweep_batches_seeds_and_plots(tmp_path: Path) -> None:
    """A real sweep of the command (local backend): two settings, two seeds batched per run;
    each run equals the single run of its setting, and the plot command reads the sweep."""
    from cbp_rl.lab import plot
    from cbp_rl.lab.sweep import main as sweep_main
    from cbp_rl.lab.sweep import run_states

    spec = tmp_path / "spec.toml"
    spec.write_text(
        """
command = "regression"
seeds = 2

[resources]
seeds_per_run = 2

[base]
examples = 2000
bin-size = 1000
probe-examples = 100
progress = false

[settings.bp]
learner = "bp"

[settings.cbp]
learner = "cbp"
replacement-rate = 0.01
maturity-threshold = 20
""",
        encoding="utf-8",
    )
    assert sweep_main([str(spec), "--out", str(tmp_path / "sweep"), "--num-cpus", "2"]) == 0
    views = run_states(tmp_path / "sweep")
    assert [(v.name, v.state, v.step, v.metric) for v in views] == [
        ("bp-s0-1", "done", 2000, "error"),
        ("cbp-s0-1", "done", 2000, "error"),
    ]
    swept = load_results(tmp_path / "sweep" / "runs" / "bp-s0-1")
    alone = small(tmp_path / "alone", learner="bp", seeds=2, examples=2000, bin_size=1000)
    alone = dataclasses.replace(alone, problem=ProblemConfig(), measures=MeasureConfig(100))
    run(alone, log=lambda _: None)
    np.testing.assert_array_equal(swept["errors"], load_results(tmp_path / "alone")["errors"])
    assert plot.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "error.png").read_bytes()[:4] == b"\x89PNG"
