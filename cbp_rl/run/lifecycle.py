"""A run's life in its directory: claimed fresh or reopened from its checkpoint, then trained to
its end, a limit or a stop signal, leaving a checkpoint, ``status.json`` and its results behind.

The steps the supervised commands (``pmnist``, ``regression``, the conv suites) take alike::

    run, position = open_run(config.run, make, command="mine", label=..., saved_config=..., ...)
    run.open_logs(position)                   # position None: a fresh run
    signal = train_to_limit(run, done=lambda: run.steps_done, total=..., limit=..., ...)

:func:`open_run` is :func:`fresh_run_dir` for a new run, else :func:`open_resumed` and the
run's ``restore`` of the checkpoint.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cbp_rl.run.checkpoint import CheckpointManager, check_compatible
from cbp_rl.run.conventions import UsageError
from cbp_rl.run.logging import CONFIG_FILE
from cbp_rl.run.rundir import check_run_dir_path, claim_run_dir, unresumable_message
from cbp_rl.run.runtime import GracefulStop, Progress, new_run_dir

__all__ = [
    "Log",
    "Restorable",
    "Resumed",
    "RunFlags",
    "SteppedRun",
    "fresh_run_dir",
    "open_resumed",
    "open_run",
    "refuse_held_run_dir",
    "stderr_log",
    "train_to_limit",
]

Log = Callable[[str], None]
"""Where a command's notes go (resuming, stopped, done)."""


def stderr_log(message: str) -> None:
    """The default :data:`Log`: a line on stderr, flushed."""
    print(message, file=sys.stderr, flush=True)


def refuse_held_run_dir(run_dir: Path, *, command: str) -> None:
    """Refuse to start a fresh run in ``run_dir``, which holds one: say how to resume it, or
    that it cannot be resumed (no checkpoint)."""
    if not CheckpointManager(run_dir).exists():
        raise UsageError(unresumable_message(run_dir, command=command))
    raise UsageError(
        f"--run-dir {run_dir} already holds a run; resume it with --resume {run_dir} or "
        "choose another directory"
    )


def fresh_run_dir(run_dir: str | Path | None, *, command: str, label: str) -> Path:
    """A new run's directory, claimed: ``--run-dir`` (refused if it holds a run) or a new one
    below ``runs/COMMAND`` named after ``label``."""
    if run_dir is None:
        root = check_run_dir_path(Path("runs") / command, flag="--run-dir")
        path = new_run_dir(root, label)
    else:
        path = Path(run_dir)
    claim_run_dir(path, command=command)
    if (path / CONFIG_FILE).exists():
        refuse_held_run_dir(path, command=command)
    return path


@dataclass(frozen=True)
class Resumed:
    """A run directory reopened by :func:`open_resumed`."""

    run_dir: Path
    checkpoints: CheckpointManager
    """The run's checkpoints (it remembers a latest checkpoint found unreadable)."""
    state: dict[str, Any]
    """The checkpoint loaded: the latest, or the previous one with ``--resume-fallback``."""


def open_resumed(
    resume: str | Path,
    *,
    command: str,
    saved_config: Mapping[str, Any],
    resumable: Iterable[str],
    every: int = 0,
    fallback: bool = False,
) -> Resumed:
    """Claim the run directory ``--resume`` names and load its checkpoint, refusing a missing
    directory, one without a checkpoint and a checkpoint whose config differs from
    ``saved_config`` in more than the ``resumable`` fields."""
    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    claim_run_dir(run_dir, command=command, flag="--resume")
    manager = CheckpointManager(run_dir, every=every)
    if not manager.exists():
        raise UsageError(unresumable_message(run_dir, command=command))
    state = manager.load_latest(required=True, fallback=fallback)
    assert state is not None
    check_compatible(state["config"], saved_config, ignore=resumable, path=manager.path)
    return Resumed(run_dir, manager, state)


class RunFlags(Protocol):
    """The run-directory flags :func:`open_run` reads (a command's ``config.run``)."""

    @property
    def run_dir(self) -> Path | None: ...
    @property
    def resume(self) -> Path | None: ...
    @property
    def resume_fallback(self) -> bool: ...


class Restorable(Protocol):
    """A run :func:`open_run` can reopen: its checkpoints, and ``restore`` of a checkpoint's
    state, which returns where its logs stand."""

    checkpoints: CheckpointManager

    def restore(self, state: dict[str, Any]) -> Any: ...


R = TypeVar("R", bound=Restorable)


def open_run(
    flags: RunFlags,
    make: Callable[[Path], R],
    *,
    command: str,
    label: str,
    saved_config: Mapping[str, Any],
    resumable: Iterable[str],
    every: int = 0,
    check: Callable[[Resumed], None] | None = None,
) -> tuple[R, Any]:
    """``make`` the run in a fresh directory (:func:`fresh_run_dir`), or in the one
    ``flags.resume`` names (:func:`open_resumed`; ``check`` may refuse it first) restored from
    its checkpoint. Returns the run and where its logs stand (``None`` for a fresh run)."""
    if flags.resume is None:
        return make(fresh_run_dir(flags.run_dir, command=command, label=label)), None
    resumed = open_resumed(
        flags.resume,
        command=command,
        saved_config=saved_config,
        resumable=resumable,
        every=every,
        fallback=flags.resume_fallback,
    )
    if check is not None:
        check(resumed)
    run = make(resumed.run_dir)
    run.checkpoints = resumed.checkpoints  # it remembers a latest checkpoint found unreadable
    position = run.restore(resumed.state)
    run.checkpoints.last_step = int(resumed.state["step"])
    return run, position


class _Saves(Protocol):
    def save(self, run_dir: Path) -> Path: ...


class SteppedRun(Protocol):
    """A run :func:`train_to_limit` can drive."""

    @property
    def run_dir(self) -> Path: ...
    @property
    def checkpoints(self) -> CheckpointManager: ...
    @property
    def results(self) -> _Saves: ...
    def train_until(self, limit: int, stop: GracefulStop, progress: Progress) -> None: ...
    def save_checkpoint(self) -> None: ...
    def report_status(self, *, force: bool = False, stopped_by: str | None = None) -> None: ...
    def close(self) -> None: ...


def train_to_limit(
    run: SteppedRun,
    *,
    done: Callable[[], int],
    total: int,
    limit: int,
    progress: bool,
    desc: str,
) -> signal.Signals | None:
    """Train ``run`` to ``limit`` steps (of ``total``; ``done()`` counts those done), its end or
    a stop signal, then checkpoint it (unless that step has one), force its status and save its
    results; it is closed however this ends. Returns the signal that stopped it, if one did."""
    try:
        with (
            GracefulStop() as stop,
            Progress(total, initial=done(), enabled=progress, desc=desc) as bar,
        ):
            run.train_until(limit, stop, bar)
            if run.checkpoints.last_step != done():
                run.save_checkpoint()
            stopped_by = None if stop.signal is None else stop.signal.name
            run.report_status(force=True, stopped_by=stopped_by)
        run.results.save(run.run_dir)
    finally:
        run.close()
    return stop.signal
