"""Faults and bad input for ``regression``, ``continual-imagenet`` and ``incremental-cifar``.

The same conventions as ``pmnist`` (tests/test_faults.py, docs/faults.md): a second live process
on a run directory is refused (exit 2), a group SIGTERM stops with 143 and a checkpoint that
resumes, non-finite or out-of-range float flags are refused (2), resuming a finished run is
refused (2), a corrupt checkpoint names ``--resume-fallback`` (which works), divergence stops
with 3 naming the step. Real subprocesses where signals or a second process are involved; tiny
runs on synthetic data files in the real formats (tests/conv_data.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import test_faults
from conv_data import CIFAR_FLAGS, IMAGENET_FLAGS, write_cifar100, write_imagenet_classes
from test_faults import (
    Result,
    checkpoint_step,
    command,
    has_checkpoint,
    run,
    running,
    wait_until,
)

from cbp_rl.run.checkpoint import load_checkpoint

cli = test_faults.cli  # the fixture: a command run in this process

REGRESSION = ["--seeds", "1", "--bin-size", "500", "--probe-examples", "50", "--no-progress"]
IMAGENET = [*IMAGENET_FLAGS, "--measure-every", "0"]
CIFAR = [*CIFAR_FLAGS, "--measure-every", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each command's tiny flags, with its synthetic data."""
    root = tmp_path_factory.mktemp("data")
    classes = write_imagenet_classes(root / "imagenet", 4)
    cifar = write_cifar100(root / "cifar", train_per_class=3, test_per_class=2)
    return {
        "regression": REGRESSION,
        "continual-imagenet": [*IMAGENET, "--data-dir", str(classes)],
        "incremental-cifar": [*CIFAR, "--data-dir", str(cifar)],
    }


COMMANDS = ["regression", "continual-imagenet", "incremental-cifar"]
LONG = {  # a run far longer than the test, checkpointing often
    "regression": ["--examples", "2000000", "--checkpoint-every", "500"],
    "continual-imagenet": ["--tasks", "1000", "--checkpoint-every", "1"],
    "incremental-cifar": ["--epochs-per-task", "100", "--checkpoint-every", "1"],
}
FINISHED = {  # a short run, two checkpoints
    "regression": ["--examples", "1000", "--checkpoint-every", "500"],
    "continual-imagenet": ["--tasks", "1", "--checkpoint-every", "1"],
    "incremental-cifar": ["--epochs-per-task", "1", "--checkpoint-every", "1"],
}
BUDGET_FLAG = {
    "regression": "--examples",
    "continual-imagenet": "--tasks",
    "incremental-cifar": "--total-classes",
}


def resume_to_the_end(name: str, run_dir: Path) -> list[str]:
    """Flags resuming a stopped LONG run to a budget just past its checkpoint."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    if name == "regression":
        return ["--examples", str(int(state["step"]) + 500)]
    return ["--tasks", str(int(state["task"]) + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_a_second_process_is_refused_and_a_group_sigterm_gives_143_and_resumes(
    tmp_path: Path, data: dict[str, list[str]], name: str
) -> None:
    run_dir = tmp_path / "run"
    argv = command(name, *data[name], *LONG[name], "--run-dir", str(run_dir))
    with running(argv, tmp_path) as first:
        wait_until(has_checkpoint(run_dir), first, "a first checkpoint")
        for second_argv in (
            command(name, "--resume", str(run_dir)),
            command(name, *data[name], "--run-dir", str(run_dir)),
        ):
            second = run(second_argv, tmp_path)
            assert second.returncode == 2, second.stderr
            assert f"in use by process {first.pid} (`{name}` on" in second.stderr
            assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run goes on"
        os.killpg(first.pid, signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr
    assert "Traceback" not in stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["stopped_by"] == "SIGTERM" and not status["finished"]
    assert checkpoint_step(run_dir) > 0  # minibatch steps (examples for regression)
    if name == "incremental-cifar":  # its budget cannot shrink: resume two steps, in-process
        from cbp_rl.supervised import cifar

        step = checkpoint_step(run_dir)
        resumed = cifar.run(cifar.parse(["--resume", str(run_dir)]), stop_at_steps=step + 2)
        assert resumed.stopped and checkpoint_step(run_dir) == step + 2
        return
    flags = resume_to_the_end(name, run_dir)
    resumed_process = run(command(name, "--resume", str(run_dir), *flags), tmp_path)
    assert resumed_process.returncode == 0, resumed_process.stderr
    assert "resuming" in resumed_process.stderr
    assert json.loads((run_dir / "status.json").read_text())["finished"]


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("regression", ["--step-size", "inf"], "--step-size inf: not a finite number"),
        ("regression", ["--adam-eps", "nan"], "--adam-eps nan: not a finite number"),
        ("regression", ["--decay-rate", "1.5"], "--decay-rate 1.5: must be in [0.0, 1.0]"),
        ("continual-imagenet", ["--momentum", "inf"], "--momentum inf: not a finite number"),
        ("continual-imagenet", ["--replacement-rate", "nan"], "--replacement-rate nan: not a"),
        ("continual-imagenet", ["--step-size", "-0.1"], "--step-size -0.1: must be in [0.0,"),
        ("incremental-cifar", ["--step-size", "inf"], "--step-size inf: not a finite number"),
        ("incremental-cifar", ["--dormant-threshold", "2"], "--dormant-threshold 2.0: must be"),
    ],
)
def test_bad_float_flags_are_refused_naming_the_flag(
    tmp_path: Path, cli: Callable[..., Result], name: str, flags: list[str], message: str
) -> None:
    result = cli(name, *flags, "--run-dir", str(tmp_path / "run"))
    assert result.code == 2, result.err
    text = " ".join(result.err.replace("│", " ").split())
    assert message in text and "Traceback" not in text
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, list[str]]
) -> dict[str, Path]:
    """A finished tiny run of each command, made in this process (as the command makes it)."""
    from cbp_rl import train

    root = tmp_path_factory.mktemp("finished")
    for name in COMMANDS:
        flags = [*data[name], *FINISHED[name], "--run-dir", str(root / name)]
        assert train.main([name, *flags]) == 0, name
    return {name: root / name for name in COMMANDS}


@pytest.mark.parametrize("name", COMMANDS)
def test_resuming_a_finished_run_is_refused_and_config_json_names_the_command(
    finished: dict[str, Path], cli: Callable[..., Result], name: str
) -> None:
    config = json.loads((finished[name] / "config.json").read_text())
    assert config["algorithm"] == name and "command" not in config
    result = cli(name, "--resume", str(finished[name]))
    assert result.code == 2, result.err
    assert f"error: train {name}:" in result.err and "is finished" in result.err
    assert f"raise {BUDGET_FLAG[name]}" in result.err and "resuming" not in result.err
    other = "regression" if name != "regression" else "continual-imagenet"
    result = cli(other, "--resume", str(finished[name]))
    assert result.code == 2 and f"that is a {name} run, not a {other} run" in result.err


@pytest.mark.parametrize("name", COMMANDS)
def test_a_corrupt_checkpoint_names_resume_fallback_which_works(
    finished: dict[str, Path], tmp_path: Path, cli: Callable[..., Result], name: str
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished[name], run_dir)
    previous = load_checkpoint(run_dir / "checkpoint.prev.pt")["step"]
    final = checkpoint_step(run_dir)
    assert previous < final
    latest = run_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as a full disk leaves it
    refused = cli(name, "--resume", str(run_dir))
    assert refused.code == 2 and "--resume-fallback" in refused.err, refused.err
    resumed = cli(name, "--resume", str(run_dir), "--resume-fallback")
    assert resumed.code == 0, resumed.err
    assert checkpoint_step(run_dir) == final


def test_old_regression_run_dirs_naming_command_still_resume(
    finished: dict[str, Path], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished["regression"], run_dir)
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["command"] = config.pop("algorithm")  # as regression wrote it before
    path.write_text(json.dumps(config))
    resumed = cli("regression", "--resume", str(run_dir), "--examples", "1500")
    assert resumed.code == 0, resumed.err
    assert checkpoint_step(run_dir) == 1500


@pytest.mark.parametrize(
    ("name", "flags", "step"),
    [
        ("regression", ["--examples", "1000", "--step-size", "1e30"], 500),
        ("continual-imagenet", ["--tasks", "1", "--step-size", "1e30"], None),
        ("incremental-cifar", ["--epochs-per-task", "2", "--step-size", "1e30"], None),
    ],
)
def test_a_diverging_run_stops_with_exit_3_naming_the_step(
    tmp_path: Path,
    data: dict[str, list[str]],
    cli: Callable[..., Result],
    name: str,
    flags: list[str],
    step: int | None,
) -> None:
    run_dir = tmp_path / "run"
    result = cli(name, *data[name], *flags, "--checkpoint-every", "0", "--run-dir", str(run_dir))
    assert result.code == 3, result.err
    assert "training diverged at step " + ("" if step is None else str(step)) in result.err
    assert "no checkpoint had been written yet" in result.err and "Traceback" not in result.err
    assert not (run_dir / "checkpoint.pt").exists()
