"""Where a sweep's runs execute: a bounded pool of local processes, or Ray tasks.

Each attempt of a run is one process of the real command (``python -m cbp_rl.train ...``),
started in its own session (so a terminal's Ctrl+C reaches only the sweep, which forwards one
SIGTERM to each run) and holding the run directory's lock (:mod:`cbp_rl.run.rundir`, the lock
every command takes): the sweep takes it, then hands it to the process, which adopts it, so two
processes never write one run directory, even across sweep launches or with a user's own
``--resume`` of the same run. Its output goes to the run's log file.

:class:`LocalBackend` starts the processes itself. :class:`RayBackend` submits one Ray task per
attempt (``num_cpus``/``num_gpus`` from the spec's resources); the task starts the same process
on whichever node Ray picks and supervises it: a stop file in the sweep folder, or a
``ray.cancel`` (a ``KeyboardInterrupt`` in the task), makes it send SIGTERM (the run writes its
checkpoint and exits); an abort makes it send SIGINT. The sweep folder must be on a file system
every node sees (NFS, Lustre, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cbp_rl.lab.spec import Resources
from cbp_rl.run.rundir import INHERITED_LOCK_ENV, RunDirectoryBusyError, lock_is_held, take_lock
from cbp_rl.run.runtime import cpu_count

__all__ = [
    "Attempt",
    "Backend",
    "LocalBackend",
    "Outcome",
    "RayBackend",
    "RayUnavailableError",
    "lock_is_held",
    "run_attempt",
]

STOP = "stop"
ABORT = "abort"


@dataclass(frozen=True)
class Attempt:
    """One launch of a run's process (picklable: it travels to Ray workers)."""

    run: str
    number: int
    """1 for the first attempt of this sweep launch, 2 for its first retry, ..."""
    args: tuple[str, ...]
    """The interpreter's arguments: ``("-m", "cbp_rl.train", "ppo", ...)``."""
    run_dir: str
    log: str
    lock: str
    stop_file: str
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables added to the process's."""


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended."""

    exit_code: int | None
    """The process's exit status (negative: killed by that signal); ``None`` if unknown (a Ray
    worker or node died, or the task was cancelled)."""
    started: bool = True
    """False when it never started (a stop was requested first)."""
    busy: bool = False
    """Another process holds the run (an earlier sweep's run still going)."""
    note: str = ""


# --------------------------------------------------------------------------- one attempt


def stop_request(stop_file: str) -> str | None:
    """``"stop"``, ``"abort"`` or ``None``: what the sweep's stop file asks for."""
    try:
        with open(stop_file, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return ABORT if text == ABORT else STOP


def launch(attempt: Attempt, python: str = sys.executable) -> subprocess.Popen[bytes] | Outcome:
    """Take the run's lock and start its process (which keeps the lock); an :class:`Outcome`
    instead when the lock is taken or a stop was requested."""
    if stop_request(attempt.stop_file) is not None:
        return Outcome(None, started=False, note="stop requested before it started")
    Path(attempt.lock).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = take_lock(Path(attempt.lock), command=f"sweep, starting {attempt.run}")
    except RunDirectoryBusyError as err:
        who = err.holder.describe() if err.holder is not None else "another process"
        return Outcome(None, started=False, busy=True, note=f"{who} runs it")
    try:
        Path(attempt.log).parent.mkdir(parents=True, exist_ok=True)
        with open(attempt.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            command = " ".join(["python", *attempt.args])
            log.write(f"\n=== attempt {attempt.number} at {stamp}: {command}\n".encode())
            log.flush()
            return subprocess.Popen(
                [python, *attempt.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    INHERITED_LOCK_ENV: str(fd),
                    **attempt.env,
                },
                start_new_session=True,
                pass_fds=(fd,),
            )
    finally:
        os.close(fd)  # the child's copy holds the lock from here on


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def supervise(process: subprocess.Popen[bytes], stop_file: str, poll: float = 0.5) -> Outcome:
    """Wait for the process; forward a stop (SIGTERM) or abort (SIGINT) from the stop file or
    from a ``KeyboardInterrupt`` (``ray.cancel``: the first stops, the next aborts)."""
    sent: str | None = None
    while True:
        try:
            try:
                return Outcome(process.wait(timeout=poll))
            except subprocess.TimeoutExpired:
                request = stop_request(stop_file)
        except KeyboardInterrupt:
            request = STOP if sent is None else ABORT
        if request == STOP and sent is None:
            _signal(process, signal.SIGTERM)
            sent = STOP
        elif request == ABORT and sent != ABORT:
            _signal(process, signal.SIGINT if sent else signal.SIGTERM)
            sent = STOP if sent is None else ABORT


def run_attempt(attempt: Attempt) -> Outcome:
    """Start an attempt and wait for it (the body of a Ray task)."""
    try:
        started = launch(attempt)
    except KeyboardInterrupt:
        return Outcome(None, started=False, note="cancelled before it started")
    if isinstance(started, Outcome):
        return started
    return supervise(started, attempt.stop_file)


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Runs attempts; the sweep's driver loop asks it for room, starts, waits and stops."""

    description: str
    queues: bool
    """Whether started attempts may wait in a queue (Ray) rather than run at once."""

    def has_room(self, resources: Resources) -> bool:
        """Whether an attempt needing ``resources`` can start now."""
        ...

    def start(self, attempt: Attempt, resources: Resources) -> Outcome | None:
        """Start an attempt (``None``), or say at once why it did not (an :class:`Outcome`)."""
        ...

    def wait(self, timeout: float) -> list[tuple[Attempt, Outcome]]:
        """The attempts that ended within ``timeout`` seconds."""
        ...

    def running(self) -> list[Attempt]: ...

    def stop(self, *, abort: bool = False) -> None:
        """Ask every running attempt to stop (SIGTERM: checkpoint and exit) or abort (SIGINT)."""

    def close(self) -> None: ...


class LocalBackend:
    """A bounded pool of processes on this machine.

    At most ``jobs`` runs at once, and no more than fit in ``cpus`` cores (each run takes its
    ``resources.cpus``; one run always fits) and ``gpus`` GPUs (a run with ``gpus`` <= 1 takes
    that share of one GPU, more takes whole GPUs; ``CUDA_VISIBLE_DEVICES`` tells it which).
    """

    def __init__(self, *, jobs: int | None = None, cpus: float | None = None, gpus: int = 0):
        self.cpus = float(cpus or cpu_count())
        self.jobs = jobs
        self.gpu_free = [1.0] * gpus
        self.procs: dict[str, tuple[Attempt, subprocess.Popen[bytes], Resources, list[int]]] = {}
        self.description = f"local pool ({self._limit_text()})"
        self.queues = False

    def _limit_text(self) -> str:
        parts = [f"{self.cpus:g} cores"]
        if self.jobs:
            parts.append(f"at most {self.jobs} runs at once")
        if self.gpu_free:
            parts.append(f"{len(self.gpu_free)} GPUs")
        return ", ".join(parts)

    def has_room(self, resources: Resources) -> bool:
        if not self.procs:
            return self._gpus_for(resources) is not None
        if self.jobs and len(self.procs) >= self.jobs:
            return False
        used = sum(res.cpus for _, _, res, _ in self.procs.values())
        return used + resources.cpus <= self.cpus + 1e-9 and self._gpus_for(resources) is not None

    def _gpus_for(self, resources: Resources) -> list[int] | None:
        need = resources.gpus
        if need <= 0:
            return []
        if need <= 1:
            for index, free in enumerate(self.gpu_free):
                if free + 1e-9 >= need:
                    return [index]
            return None
        whole = [i for i, free in enumerate(self.gpu_free) if free >= 1.0 - 1e-9]
        return whole[: int(need)] if len(whole) >= need else None

    def start(self, attempt: Attempt, resources: Resources) -> Outcome | None:
        gpus = self._gpus_for(resources)
        if gpus is None:
            raise RuntimeError(f"{attempt.run} needs {resources.gpus} GPUs; none are free")
        env = dict(attempt.env)
        if resources.gpus > 0:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        started = launch(dataclasses.replace(attempt, env=env))
        if isinstance(started, Outcome):
            return started
        for index in gpus:
            self.gpu_free[index] -= min(1.0, resources.gpus)
        self.procs[attempt.run] = (attempt, started, resources, gpus)
        return None

    def wait(self, timeout: float) -> list[tuple[Attempt, Outcome]]:
        deadline = time.monotonic() + timeout
        while True:
            ended = []
            for name, (attempt, proc, resources, gpus) in list(self.procs.items()):
                code = proc.poll()
                if code is not None:
                    del self.procs[name]
                    for index in gpus:
                        self.gpu_free[index] += min(1.0, resources.gpus)
                    ended.append((attempt, Outcome(code)))
            if ended or time.monotonic() >= deadline:
                return ended
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def running(self) -> list[Attempt]:
        return [attempt for attempt, _, _, _ in self.procs.values()]

    def stop(self, *, abort: bool = False) -> None:
        for _, proc, _, _ in self.procs.values():
            _signal(proc, signal.SIGINT if abort else signal.SIGTERM)

    def close(self) -> None:
        for _, proc, _, _ in self.procs.values():
            _signal(proc, signal.SIGTERM)


class RayUnavailableError(RuntimeError):
    """The ray backend was asked for but Ray is not installed."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "the ray backend needs Ray: pip install 'cbp_rl[ray]' (or pip install ray), or use "
            "--backend local"
        ) from None
    return ray


class RayBackend:
    """One Ray task per attempt, on a local Ray started here or a cluster (``address``).

    A local Ray is started with ``num_cpus`` CPUs (default: this machine's cores) and shut down
    at the end; with ``address`` ("auto", "ray://host:10001", "host:6379") the sweep connects
    to a running cluster. Tasks are not retried by Ray (``max_retries=0``): the sweep retries a
    failed run itself, from its checkpoint.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: int | None = None,
    ) -> None:
        ray = _import_ray()
        self.ray = ray
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(include_dashboard=False, num_cpus=num_cpus or cpu_count())
            if num_gpus is not None:
                kwargs["num_gpus"] = num_gpus
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        ray.init(**kwargs)
        for sig, handler in previous.items():  # the sweep handles its own signals
            signal.signal(sig, handler)
        self.remote = ray.remote(run_attempt)
        self.queues = True
        self.refs: dict[Any, Attempt] = {}
        cluster = ray.cluster_resources()
        where = address or "a local Ray"
        self.description = (
            f"Ray ({where}: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs)"
        )

    def has_room(self, resources: Resources) -> bool:
        return True  # Ray queues tasks until their resources are free

    def start(self, attempt: Attempt, resources: Resources) -> Outcome | None:
        options: dict[str, Any] = {
            "num_cpus": resources.cpus,
            "max_retries": 0,
            "name": f"cbp_rl:{attempt.run}",
        }
        if resources.gpus:
            options["num_gpus"] = resources.gpus
        ref = self.remote.options(**options).remote(attempt)
        self.refs[ref] = attempt
        return None

    def wait(self, timeout: float) -> list[tuple[Attempt, Outcome]]:
        if not self.refs:
            time.sleep(timeout)
            return []
        refs = list(self.refs)
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        ended = []
        for ref in ready:
            attempt = self.refs.pop(ref)
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.TaskCancelledError:
                outcome = Outcome(None, note="task cancelled")
            except self.ray.exceptions.RayError as err:
                outcome = Outcome(None, note=f"Ray: {type(err).__name__}: {err}"[:300])
            ended.append((attempt, outcome))
        return ended

    def running(self) -> list[Attempt]:
        return list(self.refs.values())

    def stop(self, *, abort: bool = False) -> None:
        # The stop file (written by the sweep) reaches running tasks; cancelling drops the
        # queued ones (a running one sees a KeyboardInterrupt and stops its run the same way).
        if not abort:
            for ref in list(self.refs):
                self.ray.cancel(ref)

    def close(self) -> None:
        self.ray.shutdown()
