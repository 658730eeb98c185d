"""``python -m cbp_rl.train continual-imagenet`` end to end on small per-class files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conv_data import IMAGENET_FLAGS, write_imagenet_classes

from cbp_rl.lab.plot import main as plot_main
from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars
from cbp_rl.supervised.conv_run import load_conv_results
from cbp_rl.supervised.imagenet import (
    ContinualImageNetConfig,
    ContinualImageNetRun,
    main,
    parse,
    run,
)
from cbp_rl.supervised.images import find_class_files

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--tasks", "3", *IMAGENET_FLAGS, "--probe-examples", "40"]


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagenet_classes(tmp_path_factory.mktemp("imagenet") / "classes", 4)


def command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cbp_rl.train", "continual-imagenet", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_reference_defaults() -> None:
    config = parse([])
    assert (config.tasks, config.epochs, config.batch_size, config.classes_per_task) == (
        5000,
        250,
        100,
        2,
    )
    assert config.sgd().step_size == 0.01 and config.sgd().momentum == 0.9
    l2, snp = parse(["--learner", "l2"]).sgd(), parse(["--learner", "snp"]).sgd()
    assert (l2.step_size, l2.weight_decay, l2.noise_std) == (0.03, 3e-6, 0.0)
    assert (snp.step_size, snp.weight_decay, snp.noise_std) == (0.01, 1e-5, 1e-5)
    cbp = parse(["--learner", "cbp"]).cbp.to_cbp_config()
    assert (cbp.replacement_rate, cbp.maturity_threshold, cbp.utility, cbp.init) == (
        3e-4,
        100,
        "adaptable_contribution",
        "default",
    )
    assert cbp.accumulate


def test_cbp_run_through_the_command(classes: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "cbp"
    done = command(
        *TINY, "--data-dir", str(classes), "--run-dir", str(run_dir), "--learner", "cbp",
        "--maturity-threshold", "3", "--replacement-rate", "0.02",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = load_conv_results(run_dir)
    assert str(results["kind"]) == "continual-imagenet" and int(results["tasks_done"]) == 3
    assert results["test_accuracy"].shape == (3, 2) and np.isfinite(results["test_accuracy"]).all()
    assert results["dormant_units"].shape == (3, 5) and results["weight_magnitude"].shape == (3, 6)
    # CBP replaced units in every layer, the conv layers included
    assert (results["replacements"].sum(0) > 0).all()
    # the head starts each task at zero: measured before the reset, its magnitude is not zero,
    # and after training on task 1 the network is measured again at task 2's start
    assert np.isfinite(results["effective_rank"]).all()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algorithm"] == "continual-imagenet" and config["learner"] == "cbp"
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["task/test_accuracy"]] == [1, 2, 3]
    assert "plasticity/dormant_units/4" in scalars and "task/replacements/0" in scalars
    figures = tmp_path / "figures"
    assert plot_main([str(run_dir), "--out", str(figures)]) == 0
    assert (figures / "test_accuracy.png").stat().st_size > 1000
    assert (figures / "replacements.png").exists()


@pytest.mark.parametrize("learner", ["bp", "l2", "snp"])
def test_other_learners_run(classes: Path, tmp_path: Path, learner: str) -> None:
    run_dir = tmp_path / learner
    code = main(
        [*TINY, "--data-dir", str(classes), "--run-dir", str(run_dir), "--learner", learner]
    )
    assert code == 0
    results = load_conv_results(run_dir)
    assert np.isfinite(results["train_loss"]).all() and np.isfinite(results["dead_units"]).all()
    assert (results["replacements"] == 0).all()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["learner"] == learner


def test_shrink_and_perturb_noise_and_weight_decay() -> None:
    """snp adds N(0, std^2) to every parameter after each step, on top of coupled L2."""
    from cbp_rl.nets import conv_net
    from cbp_rl.supervised.conv_learner import ConvLearner, SGDConfig

    inputs, targets = torch.rand(8, 3, 32, 32), torch.randint(0, 2, (8,))
    nets = []
    for noise in (0.0, 0.05):
        torch.manual_seed(0)
        net = conv_net()
        learner = ConvLearner(net, SGDConfig(0.01, weight_decay=1e-3, noise_std=noise), 7)
        learner.train_step(inputs, targets, lambda x: x)
        nets.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    difference = nets[1] - nets[0]
    assert abs(float(difference.std()) / 0.05 - 1) < 0.02
    assert abs(float(difference.mean())) < 0.002


def test_head_zeroed_at_each_task_start(classes: Path, tmp_path: Path) -> None:
    config = parse([*TINY, "--data-dir", str(classes), "--run-dir", str(tmp_path / "h")])
    experiment = ContinualImageNetRun(config, find_class_files(classes), tmp_path / "h")
    head = experiment.net[-1]
    assert head.weight.abs().sum() > 0
    experiment.open_logs()
    experiment.load_task()
    experiment.start_task()
    experiment.close()
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0
    assert experiment.results.arrays["weight_magnitude"][0, -1] > 0  # measured before the reset
    assert experiment.data is not None and experiment.data[0].shape == (40, 3, 32, 32)


def test_resume_after_a_stop_mid_epoch_is_exact(classes: Path, tmp_path: Path) -> None:
    flags = [*TINY, "--data-dir", str(classes), "--learner", "snp", "--checkpoint-every", "0"]
    run(parse([*flags, "--run-dir", str(tmp_path / "whole")]))
    stopped = run(parse([*flags, "--run-dir", str(tmp_path / "cut")]), stop_at_steps=7)
    assert stopped.stopped
    assert main(["--resume", str(tmp_path / "cut")]) == 0
    same_arrays(load_conv_results(tmp_path / "whole"), load_conv_results(tmp_path / "cut"))
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["learner"]["net"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["learner"]["net"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_sigterm_stops_saves_and_resumes_exactly(classes: Path, tmp_path: Path) -> None:
    flags = [
        *TINY, "--tasks", "4", "--data-dir", str(classes), "--learner", "cbp",
        "--maturity-threshold", "3", "--replacement-rate", "0.02", "--checkpoint-every", "1",
    ]  # fmt: skip
    run(parse([*flags, "--run-dir", str(tmp_path / "whole")]))
    run_dir = tmp_path / "cut"
    process = subprocess.Popen(
        [sys.executable, "-m", "cbp_rl.train", "continual-imagenet", *flags, "--run-dir",
         str(run_dir)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 143, stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["stopped_by"] == "SIGTERM" and not status["finished"], status
    assert "resume with --resume" in stderr
    resumed = command("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    same_arrays(load_conv_results(tmp_path / "whole"), load_conv_results(run_dir))


def test_resume_with_more_tasks_continues(classes: Path, tmp_path: Path) -> None:
    flags = [*TINY, "--data-dir", str(classes), "--learner", "bp"]
    run(parse([*flags, "--tasks", "3", "--run-dir", str(tmp_path / "whole")]))
    run(parse([*flags, "--tasks", "2", "--run-dir", str(tmp_path / "grown")]))
    assert main(["--resume", str(tmp_path / "grown"), "--tasks", "3"]) == 0
    same_arrays(load_conv_results(tmp_path / "whole"), load_conv_results(tmp_path / "grown"))
    assert main(["--resume", str(tmp_path / "grown"), "--tasks", "2"]) == 2


def test_resume_refuses_changed_settings(
    classes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "r"
    flags = [*TINY, "--data-dir", str(classes), "--run-dir", str(run_dir)]
    run(parse(flags), stop_at_steps=2)
    assert main(["--resume", str(run_dir), "--momentum", "0.5"]) == 2
    assert "momentum: saved 0.9, current 0.5" in capsys.readouterr().err


def test_data_errors_exit_2_with_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_imagenet_classes(tmp_path / "bad", 2)
    np.save(tmp_path / "bad" / "1.npy", np.zeros((600, 3, 32, 32), np.uint8))
    done = command("--data-dir", str(tmp_path / "bad"), "--run-dir", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "1.npy holds 600 images" in done.stderr and "Traceback" not in done.stderr
    assert main(["--data-dir", str(tmp_path / "none"), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "lop/imagenet/README.md" in capsys.readouterr().err
    assert main(["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="--train-per-class"):
        ContinualImageNetConfig(train_per_class=601)
    with pytest.raises(ValueError, match="--classes-per-task must be >= 2"):
        ContinualImageNetConfig(classes_per_task=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_matches_cpu(classes: Path, tmp_path: Path) -> None:
    flags = [*TINY, "--data-dir", str(classes), "--learner", "cbp", "--tasks", "2"]
    run(parse([*flags, "--run-dir", str(tmp_path / "cpu")]))
    run(parse([*flags, "--run-dir", str(tmp_path / "gpu"), "--device", "cuda"]))
    cpu, gpu = load_conv_results(tmp_path / "cpu"), load_conv_results(tmp_path / "gpu")
    np.testing.assert_allclose(gpu["train_loss"][0], cpu["train_loss"][0], rtol=1e-3)
    assert np.isfinite(gpu["test_accuracy"]).all()


def test_sweep_specs_of_both_conv_commands_expand(classes: Path) -> None:
    from cbp_rl.lab.spec import expand, load_spec

    spec = load_spec(ROOT / "experiments" / "continual_imagenet.toml", {"data-dir": str(classes)})
    runs = expand(spec)
    assert len(runs) == 120 and spec.expected_gpu_hours == 1440
    assert runs[0].total == 5000 * 250 and "--device" in runs[0].argv
    cifar = expand(load_spec(ROOT / "experiments" / "incremental_cifar.toml"))
    assert {r.setting for r in cifar} >= {"cbp", "cbp_reference_chain", "retrain"}
    assert cifar[0].total == 20 * 200
