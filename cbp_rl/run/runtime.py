"""Process-level helpers for the training commands: stop signals, seeding, devices, progress,
run directories."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np
import torch

__all__ = [
    "GracefulStop",
    "Progress",
    "cpu_count",
    "new_run_dir",
    "parent_is_gone",
    "resolve_device",
    "seed_everything",
    "signals_blocked",
    "worker_process_setup",
]

_Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL/SIG_IGN, or None


class GracefulStop:
    """Turn SIGINT and SIGTERM into a request to stop at the next safe point.

    Inside the ``with`` block the first SIGINT or SIGTERM sets ``requested`` (and ``signal``)
    and prints a note to stderr; the training loop checks ``requested``, saves a checkpoint and
    returns. A second SIGINT (Ctrl+C again) raises ``KeyboardInterrupt`` at once; further SIGTERMs
    are ignored (a scheduler that insists follows with SIGKILL, and the last checkpoint stays
    good). The previous handlers are restored on exit. Outside the main thread signals cannot be
    caught: there it is a no-op whose ``requested`` stays ``False``.

    ::

        with GracefulStop() as stop:
            while step < total and not stop.requested:
                step = train_step(step)
            manager.save(step, state())
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.requested = False
        """Whether a stop was requested."""
        self.signal: signal.Signals | None = None
        """The first signal received, ``None`` before any."""
        self.active = False
        """Whether the handlers are installed (inside the block, in the main thread)."""
        self._previous: dict[signal.Signals, _Handler] = {}

    def __enter__(self) -> GracefulStop:
        if self.active:
            raise RuntimeError("this GracefulStop is already in use")
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main interpreter's main thread
            self._restore()
            return self
        self.active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            # None: the handler was not installed from Python; the default is the best guess.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        self.active = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.requested:
            if sig == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal = sig
        note = (
            f"\nReceived {sig.name}: stopping at the next safe point after saving a checkpoint."
            + (" Press Ctrl+C again to abort at once.\n" if sig == signal.SIGINT else "\n")
        )
        # os.write: no buffered-stream locks taken inside a signal handler.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write(sys.stderr.fileno(), note.encode())


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals a command turns into a graceful stop; its worker processes ignore them."""
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def signals_blocked(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Hold ``signals`` back while starting worker processes: a child starts with them
    blocked (it inherits the mask), so a stop signal sent to the process group between its
    start and :func:`worker_process_setup` cannot kill it. Delivered to this process on exit."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_process_setup(parent_pid: int | None = None) -> None:
    """The start of every worker process a command starts (env workers, loaders).

    Ignores SIGINT and SIGTERM (a stop sent to the whole process group, as ``timeout``, Slurm
    and Ctrl+C do, is the main process's to handle: it saves a checkpoint, then closes its
    workers), then unblocks them (see :func:`signals_blocked`). On Linux it asks the kernel to
    SIGKILL the worker when its parent dies (``PR_SET_PDEATHSIG``), so a SIGKILLed trainer
    leaves no workers behind; where that is unavailable, workers poll :func:`parent_is_gone`.
    Exits at once if the parent is already gone (``parent_pid`` given and no longer the parent).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent_is_gone(parent_pid):
        os._exit(0)


def parent_is_gone(parent_pid: int | None) -> bool:
    """Whether this process's parent ``parent_pid`` has exited (it was reparented)."""
    return parent_pid is not None and os.getppid() != parent_pid


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA (lazily, if it is never initialized)
    torch.cuda.manual_seed_all(seed)


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """The device for ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``.

    Raises ``ValueError`` for other names and ``RuntimeError`` when CUDA (or device N) is asked
    for but absent.
    """
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                f"built with CUDA {torch.version.cuda}"
                if torch.version.cuda
                else "a CPU-only build"
            )
            raise RuntimeError(
                f"device {name!r} asked for, but CUDA is not available (torch {torch.__version__}"
                f" is {build}, or no GPU is visible); use --device cpu or --device auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RuntimeError(
                f"device {name!r} asked for, but only {count} CUDA device(s) are visible "
                f"(cuda:0..cuda:{count - 1})"
            )
    return device


class Progress:
    """A progress bar of steps: done/total, steps/s, ETA and a postfix (e.g. the latest return).

    A thin wrapper around ``tqdm`` on stderr. It draws nothing (and costs next to nothing) when
    ``enabled=False`` or when stderr is not a terminal (CI, log files, pytest).

    Args:
        total: steps of the whole run.
        initial: steps already done (a resumed run).
        enabled: ``False`` turns the bar off.
        desc: a label in front of the bar.
    """

    def __init__(
        self, total: int, *, initial: int = 0, enabled: bool = True, desc: str = ""
    ) -> None:
        from tqdm import tqdm

        stream = sys.stderr
        is_tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        self.enabled = bool(enabled and is_tty)
        """Whether the bar is drawn."""
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc or None,
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            smoothing=0.05,
            disable=not self.enabled,
            file=stream,
        )
        self._n = initial

    @property
    def n(self) -> int:
        """Steps done so far (including ``initial``)."""
        return self._n

    def update(self, n: int, **postfix: Any) -> None:
        """Add ``n`` steps and, if given, replace the postfix (``return=..., kl=...``)."""
        self._n += n
        if not self.enabled:
            return
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        """Close the bar (leaves the last state on screen); closing twice is fine."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def new_run_dir(base: str | os.PathLike[str], name: str) -> Path:
    """Create and return a fresh run directory ``base/name-YYYYmmdd-HHMMSS``.

    If that exists (two runs in one second), ``-1``, ``-2``, ... are appended; an existing
    directory is never reused (creation is atomic, so concurrent processes get distinct ones).
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"run name must be a non-empty name without path separators: {name!r}")
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(10_000):
        path = base / (stem if k == 0 else f"{stem}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not find a free run directory for {base / stem}")


def quiet_superseded_env_notices() -> None:
    """Hide Gymnasium's notice that a v4 MuJoCo env is superseded by v5: the paper's runs use v4
    on purpose. Called by the command-line entry points, not by library code."""
    warnings.filterwarnings(
        "ignore",
        message=".*is out of date. You should consider upgrading",
        category=DeprecationWarning,
    )
