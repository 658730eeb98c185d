"""Runs on the real digits: every learner learns; the command; exact resume; logs; errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars
from cbp_rl.supervised.autograd import AUTOGRAD_METHODS, FieldMethodsConfig
from cbp_rl.supervised.command import main
from cbp_rl.supervised.config import (
    LEARNER_NAMES,
    CBPLearnerConfig,
    DataConfig,
    MeasureConfig,
    NetworkConfig,
    OptimConfig,
    PermutedMNISTConfig,
    RunConfig,
)
from cbp_rl.supervised.experiment import make_engine, run
from cbp_rl.supervised.results import load_results
from cbp_rl.supervised.stream import PermutedTasks

FAST_STEP = {"adam": 1e-3}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("learner", LEARNER_NAMES)
def test_each_learner_learns_permuted_digits(
    learner: str, mnist_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """600 online steps on one permuted task of real digits: well above chance (10%)."""
    seeds = [0] if learner in AUTOGRAD_METHODS else [0, 1]  # the autograd path is slower
    config = PermutedMNISTConfig(
        learner=learner,
        seeds=len(seeds),
        network=NetworkConfig(width=64),
        optim=OptimConfig(step_size=FAST_STEP.get(learner, 0.01)),
        cbp=CBPLearnerConfig(replacement_rate=1e-3, maturity_threshold=50),
        methods=FieldMethodsConfig(regrama_period=100, reset_every=250, injection_every=250),
    )
    images, labels = (torch.from_numpy(a) for a in mnist_digits)
    engine = make_engine(config, torch.device("cpu"))
    tasks = PermutedTasks(images, labels, seeds, 600)
    inputs, targets = tasks.batch(tasks.next_task(), 0, 600)
    engine.train(inputs[:, :300], targets[:, :300])
    engine.take_totals()
    engine.train(inputs[:, 300:], targets[:, 300:])
    correct, loss, examples = engine.take_totals()
    accuracy = correct.double() / examples
    assert float(accuracy.min()) > 0.4, accuracy
    assert float((loss / examples).max()) < 2.0
    if learner in ("cbp", "regrama"):
        assert int(engine.replacements().sum()) > 0


def small_config(run_dir: Path, mnist_dir: Path, **changes: object) -> PermutedMNISTConfig:
    config = PermutedMNISTConfig(
        learner="cbp",
        seeds=2,
        tasks=3,
        examples_per_task=320,
        data=DataConfig(data_dir=mnist_dir, download=False),
        network=NetworkConfig(width=24),
        cbp=CBPLearnerConfig(replacement_rate=1e-2, maturity_threshold=20, magnitude_every=3),
        measures=MeasureConfig(probe_examples=200),
        run=RunConfig(run_dir=run_dir, progress=False),
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def resumed(config: PermutedMNISTConfig, run_dir: Path) -> PermutedMNISTConfig:
    return dataclasses.replace(config, run=RunConfig(resume=run_dir, progress=False))


def test_resume_is_identical_mid_task_and_at_task_ends(tmp_path: Path, mnist_dir: Path) -> None:
    straight = small_config(tmp_path / "straight", mnist_dir)
    run(straight, log=lambda _: None)
    interrupted = small_config(tmp_path / "interrupted", mnist_dir)
    first = run(interrupted, stop_at_examples=320 + 160, log=lambda _: None)  # mid task 2
    assert first.stopped and first.tasks_done == 1
    second = run(resumed(interrupted, tmp_path / "interrupted"), stop_at_examples=640)
    assert second.stopped and second.tasks_done == 2  # stopped at a task's end
    third = run(resumed(interrupted, tmp_path / "interrupted"), log=lambda _: None)
    assert not third.stopped and third.tasks_done == 3
    a, b = load_results(tmp_path / "straight"), load_results(tmp_path / "interrupted")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    state_a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    state_b = load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")
    for x, y in zip(state_a["engine"]["weights"], state_b["engine"]["weights"], strict=True):
        assert torch.equal(x, y)
    for name in ("utility", "age", "accumulated"):
        assert torch.equal(state_a["engine"]["cbp"][name], state_b["engine"]["cbp"][name])
    # TensorBoard: each task logged once, the resumed task's start measures too
    for directory in ("straight", "interrupted"):
        scalars = read_scalars(tmp_path / directory / "seed_1")
        assert [step for step, _ in scalars["task/accuracy"]] == [1, 2, 3]
        assert [step for step, _ in scalars["plasticity/effective_rank/0"]] == [1, 2, 3]
    tags_a = read_scalars(tmp_path / "straight")
    tags_b = read_scalars(tmp_path / "interrupted")
    assert tags_a.keys() == tags_b.keys()
    for tag, values in tags_a.items():
        np.testing.assert_allclose([v for _, v in values], [v for _, v in tags_b[tag]], err_msg=tag)


def test_resume_can_extend_a_finished_run(tmp_path: Path, mnist_dir: Path) -> None:
    config = small_config(tmp_path / "r", mnist_dir, tasks=2, learner="bp", seeds=1)
    run(config, log=lambda _: None)
    longer = dataclasses.replace(resumed(config, tmp_path / "r"), tasks=3)
    summary = run(longer, log=lambda _: None)
    assert summary.tasks_done == 3 and summary.accuracy.shape == (1, 3)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["tasks"] == 3


def test_command_line_run_and_resume(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "cli"
    common = ["--data-dir", str(mnist_dir), "--no-download", "--no-progress"]
    flags = ["--learner", "l2", "--width", "16", "--tasks", "2", "--examples-per-task", "256"]
    flags += ["--step-size", "0.03"]
    assert main([*flags, "--seeds", "2", "--run-dir", str(run_dir), *common]) == 0
    results = load_results(run_dir)
    assert results["accuracy"].shape == (2, 2) and int(results["tasks_done"]) == 2
    assert np.all(results["accuracy"] > 0.15)
    assert np.all(np.isfinite(results["effective_rank"])) and results["dead_units"].shape == (
        2,
        2,
        3,
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["learner"] == "l2" and config["optim"]["weight_decay"] is None
    assert (run_dir / "seed_0" / "config.json").is_file()
    # resume takes the saved flags as defaults; --tasks may grow, others must not change
    assert main(["--resume", str(run_dir), "--tasks", "3", *common]) == 0
    assert int(load_results(run_dir)["tasks_done"]) == 3
    assert main(["--resume", str(run_dir), "--width", "32", *common]) == 2
    assert "width" in capsys.readouterr().err
    # a fresh run never reuses a run directory
    assert main([*flags, "--run-dir", str(run_dir), *common]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learner", "sgd"], "learner"),
        (["--examples-per-task", "100", "--batch-size", "3"], "multiple of"),
        (["--dropout", "1.5", "--learner", "dropout"], "dropout"),
        (["--replacement-rate", "2", "--learner", "cbp"], "replacement_rate"),
        (["--width", "0"], "width"),
        (["--activation", "softsign"], "activation"),
        (["--resume", "/nonexistent/run"], "config.json"),
    ],
)
def test_command_rejects_bad_input(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(flags) == 2
    captured = capsys.readouterr()
    assert message in captured.err + captured.out


def test_learner_defaults_follow_the_thesis() -> None:
    specs = {name: PermutedMNISTConfig(learner=name).learner_spec() for name in LEARNER_NAMES}
    assert {s.step_size for n, s in specs.items() if n != "adam"} == {0.003}
    assert specs["adam"].optimizer == "adam" and specs["adam"].step_size == 1e-4
    assert specs["l2"].weight_decay == 1e-4
    assert specs["snp"].weight_decay == 1e-4 and specs["snp"].noise_std == 1e-5
    assert specs["dropout"].dropout == 0.1
    assert specs["onlinenorm"].online_norm is not None
    assert specs["redo"].redo is not None
    cbp = specs["cbp"].cbp
    assert cbp is not None and cbp.replacement_rate == 1e-4 and cbp.maturity_threshold == 100
    assert cbp.utility == "adaptable_contribution" and cbp.accumulate and cbp.decay_rate == 0.99
    net = PermutedMNISTConfig().network_spec()
    assert (net.width, net.depth, net.activation, net.init) == (2000, 3, "relu", "kaiming")
    mixed = PermutedMNISTConfig(learner="cbp", optim=OptimConfig(weight_decay=1e-3)).learner_spec()
    assert mixed.weight_decay == 1e-3 and mixed.cbp is not None
