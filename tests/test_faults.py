"""Faults and bad input, done for real: what schedulers, clusters and tired users do to a run.

Real subprocesses of ``python -m cbp_rl.train ...``, stop signals sent to the whole process group
(as ``timeout``, Slurm and Ctrl+C do), SIGKILL of the trainer, a second live process on one run
directory, unwritable directories, NaN injected through a flag, corrupt checkpoints. Tiny runs:
few steps, small networks. docs/faults.md lists what each fault gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.conventions import NonFiniteError
from cbp_rl.run.rundir import LockHolder, RunDirectoryBusyError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

TINY_PPO = [
    "--env", "Hopper-v4",
    "--num-envs", "2",
    "--batch-size", "128",
    "--num-minibatches", "2",
    "--update-epochs", "1",
    "--hidden-sizes", "8",
    "--plasticity-every", "0",
    "--no-progress",
]  # fmt: skip
TINY_SAC = [
    "--env", "Hopper-v4",
    "--num-envs", "2",
    "--warmup-steps", "64",
    "--batch-size", "16",
    "--buffer-size", "5000",
    "--log-every", "64",
    "--hidden-sizes", "8",
    "--plasticity-every", "0",
    "--no-progress",
]  # fmt: skip


def tiny_pmnist(mnist_dir: Path) -> list[str]:
    return [
        "--data-dir", str(mnist_dir),
        "--no-download",
        "--width", "16",
        "--examples-per-task", "200",
        "--probe-examples", "50",
        "--no-progress",
    ]  # fmt: skip


# --------------------------------------------------------------------------- processes


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cbp_rl.train", *args]


def start(argv: Sequence[str], cwd: Path) -> subprocess.Popen[str]:
    """A command in its own process group (a job, as a shell or scheduler starts it)."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(argv: Sequence[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def running(argv: Sequence[str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """A started command, killed (its whole group) if the test leaves it running."""
    process = start(argv, cwd)
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[str], what: str, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the process ended (code {process.returncode}) before {what}:\n{err}")
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux: /proc/PID/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found += [int(child) for child in text.split()]
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


class Result(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """A command run in this process, as ``python -m cbp_rl.<entry> ARGV`` would run it (the
    same ``main``): cheaper than a subprocess where no signal or second process is involved."""
    from cbp_rl import evaluate, plot, sweep, train

    entries = {"train": train.main, "evaluate": evaluate.main, "sweep": sweep.main}
    entries["plot"] = plot.main

    def call(*argv: str, entry: str = "train") -> Result:
        capsys.readouterr()
        code = entries[entry](list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def checkpoint_step(run_dir: Path) -> int:
    return int(load_checkpoint(run_dir / "checkpoint.pt")["step"])


def has_checkpoint(run_dir: Path) -> Callable[[], bool]:
    return lambda: (run_dir / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- read-only dirs


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make ``directory`` refuse new files: ``chmod 555``, and as root (which chmod does not
    stop) the immutable attribute ``chattr +i``. Skips where neither works."""
    directory.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = shutil.which("chattr") is not None and (
            subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        )
    try:
        probe = directory / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a directory read-only here (root without chattr +i)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


# --------------------------------------------------------------------------- 1: group SIGTERM


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("ppo", [*TINY_PPO, "--vector-mode", "batched", "--num-workers", "2"]),
        pytest.param(
            "ppo", [*TINY_PPO, "--vector-mode", "async"], marks=pytest.mark.slow, id="ppo-async"
        ),
        pytest.param(
            "sac", [*TINY_SAC, "--vector-mode", "batched", "--num-workers", "2"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["ppo-batched", "ppo-async", "sac-batched"],
)  # fmt: skip
def test_sigterm_to_the_process_group_checkpoints_and_resumes(
    tmp_path: Path, name: str, flags: list[str]
) -> None:
    run_dir = tmp_path / "run"
    argv = command(name, *flags, "--run-dir", str(run_dir), "--total-steps", "1e8")
    with running([*argv, "--checkpoint-every", "256"], tmp_path) as process:
        wait_until(has_checkpoint(run_dir), process, "a first checkpoint")
        workers = children(process.pid)
        assert len(workers) >= 2, "the vectorizer's workers are child processes"
        os.killpg(process.pid, signal.SIGTERM)  # what timeout, scancel and systemd send
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and "died" not in stderr
    assert "stopped by SIGTERM" in stderr
    assert not any(alive(pid) for pid in workers)
    step = checkpoint_step(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["stopped_by"] == "SIGTERM" and status["step"] == step
    resumed = run(
        command(name, "--resume", str(run_dir), "--total-steps", str(step + 128)), tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint_step(run_dir) >= step + 128


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGTERM", "SIGINT"],
)
def test_pmnist_stopped_by_a_group_signal_exits_128_plus_it_and_resumes(
    tmp_path: Path, mnist_dir: Path, sig: signal.Signals
) -> None:
    run_dir = tmp_path / "run"
    argv = command(
        "pmnist", *tiny_pmnist(mnist_dir), "--tasks", "100000", "--run-dir", str(run_dir)
    )
    with running(argv, tmp_path) as process:
        wait_until(has_checkpoint(run_dir), process, "a first checkpoint")
        os.killpg(process.pid, sig)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, stderr
    assert f"stopped by {sig.name}" in stderr and "Traceback" not in stderr
    step = checkpoint_step(run_dir)
    tasks = step // 200 + 1
    resumed = run(command("pmnist", "--resume", str(run_dir), "--tasks", str(tasks)), tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint_step(run_dir) == tasks * 200


# --------------------------------------------------------------------------- 2: SIGKILL


@pytest.mark.parametrize("mode", ["batched", pytest.param("async", marks=pytest.mark.slow)])
def test_sigkill_of_the_trainer_leaves_no_env_workers(tmp_path: Path, mode: str) -> None:
    run_dir = tmp_path / "run"
    argv = command("ppo", *TINY_PPO, "--vector-mode", mode, "--run-dir", str(run_dir))
    with running([*argv, "--total-steps", "1e8", "--checkpoint-every", "256"], tmp_path) as process:
        wait_until(has_checkpoint(run_dir), process, "a first checkpoint")
        workers = children(process.pid)
        assert len(workers) >= 2
        os.kill(process.pid, signal.SIGKILL)  # the trainer only, as the OOM killer does
        process.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived the SIGKILLed trainer"


# --------------------------------------------------------------------------- 3: one writer


@pytest.mark.slow
def test_a_second_process_on_a_live_run_directory_is_refused(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    run_dir = tmp_path / "run"
    argv = command("ppo", *TINY_PPO, "--vector-mode", "sync", "--run-dir", str(run_dir))
    with running([*argv, "--total-steps", "1e8", "--checkpoint-every", "256"], tmp_path) as first:
        wait_until(has_checkpoint(run_dir), first, "a first checkpoint")
        second = run(command("ppo", "--resume", str(run_dir), "--total-steps", "1e9"), tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"in use by process {first.pid} (`ppo` on" in second.stderr
        assert "Traceback" not in second.stderr
        for attempt in (  # flock: a second open of the lock file conflicts, in any process
            ["ppo", *TINY_PPO, "--run-dir", str(run_dir)],
            ["pmnist", "--run-dir", str(run_dir), "--width", "8"],
        ):
            result = cli(*attempt)
            assert result.code == 2 and f"in use by process {first.pid}" in result.err, attempt
        assert first.poll() is None, "the first run goes on"
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143
    rows = (run_dir / "episodes.csv").read_text().split()[1:]
    steps = [int(row.split(",")[0]) for row in rows]
    assert steps == sorted(steps), "one writer: episodes in order"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


# --------------------------------------------------------------------------- 4: non-finite


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["ppo", "--lr", "inf"], "--lr"),
        (["ppo", "--init-log-std", "nan"], "--init-log-std"),
        (["ppo", "--betas", "0.9", "nan"], "--betas"),
        (["sac", "--lr", "inf"], "--lr"),
        (["sac", "--target-entropy", "nan"], "--target-entropy"),
        (["pmnist", "--step-size", "inf"], "--step-size"),
        (["pmnist", "--decay-rate", "nan"], "--decay-rate"),
    ],
)
def test_non_finite_float_flags_are_refused_naming_the_flag(
    tmp_path: Path, argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cbp_rl.train import main

    assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert flag in message and "not a finite number" in message
    assert not (tmp_path / "run").exists()


def test_a_nan_during_training_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    from nan_env import ENV_ID, RUN_WITH_NAN_ENV

    run_dir = tmp_path / "run"
    argv = [
        sys.executable, "-c", RUN_WITH_NAN_ENV.format(tests=str(TESTS)), "ppo",
        "--env", ENV_ID,
        "--env-kwargs", '{"nan_at": 300}',  # the NaN, injected by a flag
        "--num-envs", "1",
        "--vector-mode", "sync",
        "--batch-size", "128",
        "--num-minibatches", "2",
        "--update-epochs", "1",
        "--hidden-sizes", "8",
        "--checkpoint-every", "128",
        "--total-steps", "1024",
        "--no-progress",
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    result = run(argv, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "training diverged at step 384" in result.stderr
    assert "the last good checkpoint, at step 256, is kept" in result.stderr
    assert "Traceback" not in result.stderr
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 256
    assert all(torch.isfinite(t).all() for t in state["agent"]["policy"].values())
    assert load_checkpoint(run_dir / "checkpoint.prev.pt")["step"] == 128


def test_a_diverging_pmnist_run_stops_with_exit_3_and_writes_no_checkpoint(
    tmp_path: Path, mnist_dir: Path
) -> None:
    run_dir = tmp_path / "run"
    argv = command("pmnist", *tiny_pmnist(mnist_dir), "--tasks", "3", "--step-size", "1e30")
    result = run([*argv, "--run-dir", str(run_dir)], tmp_path)
    assert result.returncode == 3, result.stderr
    assert "training diverged at step 200" in result.stderr and "seed 0 = nan" in result.stderr
    assert "no checkpoint had been written yet" in result.stderr
    assert not (run_dir / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- 5-7: pmnist


@pytest.fixture(scope="module")
def finished_pmnist(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    from cbp_rl.supervised import command as pmnist_command

    run_dir = tmp_path_factory.mktemp("pmnist") / "run"
    flags = [*tiny_pmnist(mnist_dir), "--tasks", "1", "--checkpoint-every", "50"]
    assert pmnist_command.main([*flags, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cbp_rl.agents import ppo_command

    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    flags = [*TINY_PPO, "--vector-mode", "sync", "--total-steps", "512"]
    flags += ["--checkpoint-every", "256", "--run-dir", str(run_dir)]
    assert ppo_command.main(flags) == 0
    return run_dir


def test_every_command_writes_its_name_and_refusals_name_the_right_one(
    finished_pmnist: Path, ppo_run: Path, cli: Callable[..., Result]
) -> None:
    assert json.loads((finished_pmnist / "config.json").read_text())["algorithm"] == "pmnist"
    assert json.loads((ppo_run / "config.json").read_text())["algorithm"] == "ppo"
    result = cli("ppo", "--resume", str(finished_pmnist))
    assert result.code == 2
    assert "that is a pmnist run, not a ppo run" in result.err
    assert f"`python -m cbp_rl.train pmnist --resume {finished_pmnist}`" in result.err
    result = cli("pmnist", "--resume", str(ppo_run))
    assert result.code == 2 and "that is a ppo run, not a pmnist run" in result.err
    assert result.err.count("\n") == 1, "one refusal, not a list of differing fields"
    result = cli(str(finished_pmnist), entry="evaluate")
    assert result.code == 2 and "is a pmnist run" in result.err


def test_resuming_a_finished_run_is_refused_by_every_command(
    finished_pmnist: Path, ppo_run: Path, cli: Callable[..., Result]
) -> None:
    pmnist = cli("pmnist", "--resume", str(finished_pmnist))
    assert pmnist.code == 2, pmnist.err
    assert "error: train pmnist:" in pmnist.err and "is finished" in pmnist.err
    assert "raise --tasks" in pmnist.err and "resuming" not in pmnist.err + pmnist.out
    ppo = cli("ppo", "--resume", str(ppo_run), "--total-steps", "512")
    assert ppo.code == 2 and "error: train ppo:" in ppo.err and "raise --total-steps" in ppo.err


def test_pmnist_corrupt_checkpoint_names_resume_fallback_which_works(
    finished_pmnist: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_pmnist, run_dir)
    latest = run_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as a full disk leaves it
    refused = cli("pmnist", "--resume", str(run_dir), "--tasks", "2")
    assert refused.code == 2
    assert "--resume-fallback" in refused.err and "fallback option" not in refused.err
    assert refused.err.count("Fix:") == 1
    resumed = cli("pmnist", "--resume", str(run_dir), "--tasks", "2", "--resume-fallback")
    assert resumed.code == 0, resumed.err
    assert checkpoint_step(run_dir) == 400


# --------------------------------------------------------------------------- rough edges


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_says_exactly_what_to_do(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    run_dir = tmp_path / "run"
    flags = ["ppo", *TINY_PPO, "--vector-mode", "sync", "--run-dir", str(run_dir)]
    argv = command(*flags, "--total-steps", "1e8", "--checkpoint-every", "1e8")
    with running(argv, tmp_path) as process:
        wait_until(lambda: (run_dir / "config.json").exists(), process, "its config")
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    for again in (flags, ["ppo", "--resume", str(run_dir)]):
        result = cli(*again)
        assert result.code == 2, result.err
        assert "stopped before its first checkpoint" in result.err
        assert f"rm -r {run_dir}" in result.err
    shutil.rmtree(run_dir)
    assert cli(*flags, "--total-steps", "256").code == 0  # as the message says


def test_run_directories_that_cannot_be_written_are_refused_up_front(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    cases = {
        "is a file, not a directory": ["--run-dir", str(a_file)],
        f"lies below the file {a_file}": ["--run-dir", str(a_file / "run")],
    }
    for message, flags in cases.items():
        for name in ("ppo", "pmnist"):
            result = cli(name, *flags)
            assert result.code == 2 and message in result.err, result.err
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        for flags in (
            ["--run-dir", str(locked)],
            ["--run-dir", str(locked / "run")],
            ["--runs-root", str(locked)],
        ):
            result = cli("ppo", *TINY_PPO, *flags)
            assert result.code == 2 and "cannot be written" in result.err, flags
        result = cli("pmnist", "--run-dir", str(locked / "run"))
        assert result.code == 2 and "cannot be written" in result.err
    assert not any(locked.iterdir())


def test_a_read_only_run_directory_is_refused_on_resume(
    ppo_run: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(ppo_run, run_dir)
    with read_only(run_dir):
        result = cli("ppo", "--resume", str(run_dir), "--total-steps", "1024")
    assert result.code == 2 and "cannot be written" in result.err, result.err


def test_networks_too_large_for_memory_are_refused_before_allocating(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    ppo = cli("ppo", *TINY_PPO, "--hidden-sizes", "100000000", "--run-dir", str(tmp_path / "r"))
    assert ppo.code == 2 and "choose smaller --hidden-sizes" in ppo.err
    assert "GiB of memory" in ppo.err
    pmnist = cli("pmnist", "--width", "1000000", "--run-dir", str(tmp_path / "p"))
    assert pmnist.code == 2 and "choose a smaller --width" in pmnist.err
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()


def test_evaluate_suggests_the_previous_checkpoint_and_refuses_another_runs(
    ppo_run: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(ppo_run, run_dir)
    (run_dir / "checkpoint.pt").write_bytes(b"garbage")
    result = cli(str(run_dir), "--episodes", "1", entry="evaluate")
    assert result.code == 2
    assert f"--checkpoint {run_dir / 'checkpoint.prev.pt'}" in result.err
    previous = ["--checkpoint", str(run_dir / "checkpoint.prev.pt")]
    ok = cli(str(run_dir), "--episodes", "1", *previous, entry="evaluate")
    assert ok.code == 0 and "ppo on Hopper-v4, checkpoint at step 256" in ok.out
    sac = tmp_path / "sac"
    flags = [*TINY_SAC, "--vector-mode", "sync", "--total-steps", "128", "--run-dir", str(sac)]
    assert cli("sac", *flags).code == 0
    other = ["--checkpoint", str(sac / "checkpoint.pt")]
    result = cli(str(run_dir), "--episodes", "1", *other, entry="evaluate")
    assert result.code == 2
    assert "is a sac checkpoint on Hopper-v4, but" in result.err and "a ppo run" in result.err


def test_sweep_specs_refuse_discrete_actions_and_a_missing_command(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    discrete = tmp_path / "discrete.toml"
    discrete.write_text('command = "ppo"\n[base]\nenv = "CartPole-v1"\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    result = cli("validate", str(discrete), entry="sweep")
    assert result.code == 2 and "continuous (Box) actions" in result.err
    result = cli("validate", str(empty), entry="sweep")
    assert result.code == 2 and "names no command" in result.err and "None" not in result.err


def test_missing_data_says_pass_data_dir_and_creates_no_folder(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    flags = ["pmnist", "--width", "8", "--tasks", "1", "--run-dir", str(tmp_path / "run")]
    result = cli(*flags, "--data-dir", str(empty), "--no-download")
    assert result.code == 2
    assert "files are not here: pass --data-dir DIR" in result.err.splitlines()[0], result.err
    result = cli(*flags, "--data-dir", str(missing))
    assert result.code == 2 and f"--data-dir {missing} does not exist" in result.err
    assert not missing.exists()


def test_killed_writers_temporary_files_are_cleared_on_resume(
    ppo_run: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(ppo_run, run_dir)
    stale = [run_dir / ".status.json.0badc0de.tmp", run_dir / ".checkpoint.pt.12345678.tmp"]
    for path in stale:
        path.write_text("half")
    result = cli("ppo", "--resume", str(run_dir), "--total-steps", "768")
    assert result.code == 0, result.err
    assert not any(path.exists() for path in stale)


def test_plot_of_a_folder_without_data_exits_2(tmp_path: Path, cli: Callable[..., Result]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    empty = tmp_path / "empty"
    empty.mkdir()
    SummaryWriter(str(empty)).close()  # a run killed before it logged anything
    (empty / "config.json").write_text(json.dumps({"algorithm": "ppo"}))
    result = cli(str(empty), entry="plot")
    assert result.code == 2 and "nothing to plot" in result.err, result.err
    assert not list(empty.rglob("*.png"))


def test_rl_runs_measure_plasticity_at_the_first_iteration(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    from cbp_rl.run.logging import read_scalars

    flags = [*TINY_PPO, "--vector-mode", "sync", "--total-steps", "384"]
    flags += ["--plasticity-every", "100000", "--run-dir", str(tmp_path / "run")]
    assert cli("ppo", *flags).code == 0
    scalars = read_scalars(tmp_path / "run")
    assert [step for step, _ in scalars["plasticity/policy/dead_units/0"]] == [128]


def test_a_lock_handed_over_by_a_sweep_is_adopted_and_still_excludes_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cbp_rl.run.rundir import (
        INHERITED_LOCK_ENV,
        LOCK_FILE,
        RunDirectoryBusyError,
        RunLock,
        lock_holder,
        lock_is_held,
        take_lock,
    )

    fd = take_lock(tmp_path / LOCK_FILE, command="sweep, starting run")  # the sweep's part
    try:
        with pytest.raises(RunDirectoryBusyError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path, command="ppo").acquire()  # no hand-over: refused
        monkeypatch.setenv(INHERITED_LOCK_ENV, str(fd))
        lock = RunLock(tmp_path, command="ppo").acquire()  # the run's part: adopted
        assert INHERITED_LOCK_ENV not in os.environ, "not passed on to the run's own children"
        holder = lock_holder(tmp_path / LOCK_FILE)
        assert holder is not None and holder.command == "ppo" and holder.pid == os.getpid()
        with pytest.raises(RunDirectoryBusyError):
            RunLock(tmp_path, command="ppo").acquire()
        lock.release()
        fd = -1
        assert not lock_is_held(tmp_path / LOCK_FILE)
    finally:
        if fd >= 0:
            os.close(fd)


def _raise_in_worker(error: Exception) -> None:
    raise error


@pytest.mark.parametrize(
    "error",
    [
        NonFiniteError("loss = nan", step=384, last_checkpoint=200, where="/runs/a"),
        NonFiniteError("seed 0 = inf", step=7, last_checkpoint=None),
        RunDirectoryBusyError(Path("/runs/a"), LockHolder(pid=123, command="pmnist", host="h")),
    ],
    ids=["diverged", "diverged-before-a-checkpoint", "busy"],
)
def test_run_errors_cross_a_process_pool_whole(error: Exception) -> None:
    """A run raising in a process-pool worker (the evidence scripts, a user's own pool) reaches
    the parent as the same error; an error that cannot be rebuilt breaks the pool instead, and
    the pool then terminates the sibling runs."""
    with ProcessPoolExecutor(1) as pool:
        raised = pool.submit(_raise_in_worker, error).exception(timeout=60)
    assert type(raised) is type(error) and str(raised) == str(error)
    assert vars(raised) == vars(error)
