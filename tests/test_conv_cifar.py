"""``python -m cbp_rl.train incremental-cifar`` on a miniature ``cifar-100-python``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conv_data import CIFAR_FLAGS, write_cifar100

from cbp_rl.lab.plot import load_run
from cbp_rl.run.logging import read_scalars
from cbp_rl.supervised.cifar import (
    IncrementalCifarConfig,
    IncrementalCifarRun,
    main,
    parse,
    resnet_features,
    run,
)
from cbp_rl.supervised.conv_run import load_conv_results
from cbp_rl.supervised.images import load_cifar100

ROOT = Path(__file__).resolve().parents[1]
TINY = [*CIFAR_FLAGS, "--epochs-per-task", "1"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=3, test_per_class=2)


def experiment(cifar: Path, run_dir: Path, *flags: str) -> IncrementalCifarRun:
    config = parse([*TINY, "--data-dir", str(cifar), "--run-dir", str(run_dir), *flags])
    data = load_cifar100(cifar, download=False, verify=False)
    made = IncrementalCifarRun(config, data, run_dir)
    made.open_logs()
    return made


def test_reference_protocol_defaults() -> None:
    config = parse([])
    assert config.tasks == 20 and config.classes_at(19) == 100
    assert (config.batch_size, config.train_per_class, config.validation_per_class) == (90, 450, 50)
    assert [config.step_size_at(e) for e in (0, 59, 60, 119, 120, 160, 199)] == [
        0.1,
        0.1,
        0.02,
        0.02,
        0.004,
        0.0008,
        0.0008,
    ]
    assert (config.momentum, config.weight_decay, config.early_stopping) == (0.9, 5e-4, True)
    assert config.sgd().noise_std == 0 and parse(["--learner", "snp"]).sgd().noise_std == 1e-5
    cbp = parse(["--learner", "cbp"]).cbp
    assert (cbp.replacement_rate, cbp.maturity_threshold, cbp.utility) == (
        1e-5,
        1000,
        "contribution",
    )
    with pytest.raises(ValueError, match="multiple of --classes-per-task"):
        IncrementalCifarConfig(first_classes=5, classes_per_task=10, total_classes=100)


def test_features_are_the_references_seventeen(cifar: Path, tmp_path: Path) -> None:
    made = experiment(cifar, tmp_path / "f")
    features = resnet_features(made.net, torch.zeros(2, 3, 32, 32))
    made.close()
    assert len(features) == 17
    assert features[0].shape == (2, 64, 32 * 32) and features[-1].shape == (2, 512, 1)


@pytest.mark.slow
def test_task_start_resets_and_early_stopping(cifar: Path, tmp_path: Path) -> None:
    head = experiment(cifar, tmp_path / "h", "--learner", "head_reset")
    retrain = experiment(cifar, tmp_path / "r", "--learner", "retrain")
    for made in (head, retrain):
        made.load_task()
        made.start_task()  # task 0: measured, nothing reset
        assert np.isfinite(made.results.arrays["dormant_units"][0]).all()
        made.task = 1
        fc, conv = made.net.fc.weight.clone(), made.net.layer1[0].conv1.weight.clone()
        made.load_task()
        made.start_task()
        assert made.classes_now == 4
        assert not torch.equal(fc, made.net.fc.weight)  # the head is new in both
        changed = not torch.equal(conv, made.net.layer1[0].conv1.weight)
        assert changed == (made is retrain)
        drawn = made.net.fc.weight.clone()
        torch.rand(100)  # the global generator moves; the task's reset draws stay the same
        made.start_task()
        assert torch.equal(drawn, made.net.fc.weight)
        made.close()
    # early stopping: the task ends with its best-validation weights
    made = experiment(cifar, tmp_path / "e")
    made.load_task()
    made.start_task()
    made.begin_epoch()
    made.end_epoch(made.train_batch(torch.arange(4)))
    best = {k: v.clone() for k, v in made.net.state_dict().items()}
    with torch.no_grad():
        made.net.fc.weight.add_(1.0)
    made.epoch = 1  # the task's one epoch is done
    made.end_task()
    assert torch.equal(made.net.fc.weight, best["fc.weight"])
    assert made.results.arrays["best_epoch"][0] == 0
    made.close()


@pytest.mark.slow
def test_runs_through_the_command(cifar: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "base"
    done = subprocess.run(
        [sys.executable, "-m", "cbp_rl.train", "incremental-cifar", *TINY, "--data-dir",
         str(cifar), "--run-dir", str(run_dir), "--epochs-per-task", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = load_conv_results(run_dir)
    assert str(results["kind"]) == "incremental-cifar" and int(results["tasks_done"]) == 2
    assert np.isfinite(results["epoch_test_accuracy"]).all()
    assert results["epoch_step_size"].tolist() == [0.1, 0.004, 0.1, 0.004]
    assert results["dormant_units"].shape == (2, 17)
    assert np.isfinite(results["effective_rank"][:, -1]).all()
    assert sorted(results["class_order"].astype(int).tolist()) != list(range(4))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algorithm"] == "incremental-cifar"
    scalars = read_scalars(run_dir)
    assert [s for s, _ in scalars["epoch/test_accuracy"]] == [1, 2, 3, 4]
    assert "plasticity/dormant_units/all" in scalars
    plotted = load_run(run_dir)
    assert plotted.series["test_accuracy"].values.shape == (1, 2)


@pytest.mark.slow
def test_snp_resume_is_exact(cifar: Path, tmp_path: Path) -> None:
    flags = [*TINY, "--data-dir", str(cifar), "--learner", "snp", "--checkpoint-every", "0"]
    run(parse([*flags, "--run-dir", str(tmp_path / "whole")]))
    assert run(parse([*flags, "--run-dir", str(tmp_path / "cut")]), stop_at_steps=2).stopped
    assert main(["--resume", str(tmp_path / "cut")]) == 0
    a, b = load_conv_results(tmp_path / "whole"), load_conv_results(tmp_path / "cut")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "cifar-100-python.tar.gz" in err and "--data-dir" in err


@pytest.mark.slow
@pytest.mark.parametrize(("stream", "layers"), [("leave_out", 8), ("reference_chain", 17)])
def test_cbp_replaces_units_of_resnet18(
    cifar: Path, tmp_path: Path, stream: str, layers: int
) -> None:
    run_dir = tmp_path / stream
    flags = [
        *TINY, "--data-dir", str(cifar), "--run-dir", str(run_dir), "--learner", "cbp",
        "--residual-stream", stream, "--replacement-rate", "0.5", "--maturity-threshold", "1",
    ]  # fmt: skip
    assert main(flags) == 0
    replaced = load_conv_results(run_dir)["replacements"]
    assert replaced.shape == (2, layers)
    assert (replaced.sum(0) > 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run(cifar: Path, tmp_path: Path) -> None:
    flags = [*TINY, "--data-dir", str(cifar), "--learner", "cbp", "--device", "cuda"]
    assert main([*flags, "--run-dir", str(tmp_path / "gpu")]) == 0
    results = load_conv_results(tmp_path / "gpu")
    assert np.isfinite(results["epoch_test_accuracy"]).all()
