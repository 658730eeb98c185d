"""``python -m cbp_rl.sweep``: a whole experiment (settings x seeds) as one command.

::

    python -m cbp_rl.sweep experiments/ppo_ant.toml                  # local pool, all cores
    python -m cbp_rl.sweep experiments/ppo_ant.toml --backend ray    # a local Ray
    python -m cbp_rl.sweep experiments/ppo_ant.toml --backend ray --address auto   # a cluster
    python -m cbp_rl.sweep sweeps/ppo_ant                            # relaunch from its folder
    python -m cbp_rl.sweep status sweeps/ppo_ant                     # done, running, failed
    python -m cbp_rl.sweep validate experiments/*.toml               # check specs, run nothing
    python -m cbp_rl.sweep estimate experiments/ppo_ant.toml         # measure CPU-hours
    python -m cbp_rl.plot sweeps/ppo_ant                             # figures and tables

A sweep folder holds::

    spec.toml          the spec it was launched with (older versions kept as spec.<time>.toml)
    sweep.json         the runs: name, setting, seeds, flags, budget, resources
    state.json         the sweep's bookkeeping: each run's state, attempts, exit codes
    runs/<run>/        each run's directory, as the command writes it (+ status.json, and
                       .lock: held by the run's process while it lives)
    logs/<run>.log     each run's output, every attempt appended
    attempts/<run>-<k>/  directories of attempts that died before their first checkpoint

Faults: a run whose process dies (non-zero exit, killed, its Ray worker lost) is started
again from its last checkpoint (``--resume``), up to ``max_retries`` times per launch. A run
the command refuses (exit code 2: bad flags, unusable checkpoint) or that diverged (exit code
3) is not retried. Relaunching skips finished runs (``status.json``: finished), resumes the
others from their checkpoints and never deletes anything; a second launch on a folder that a
live sweep holds is refused (exit code 2). SIGINT or SIGTERM stops the sweep: each running run
gets one SIGTERM, writes its checkpoint and exits, and the sweep waits for them (a second
Ctrl+C aborts them at once; their last checkpoints stay good).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import filecmp
import functools
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cbp_rl.lab.backends import (
    ABORT,
    STOP,
    Attempt,
    Backend,
    LocalBackend,
    Outcome,
    RayBackend,
    RayUnavailableError,
)
from cbp_rl.lab.spec import (
    RunSpec,
    SpecError,
    SweepSpec,
    expand,
    load_spec,
    parse_flags,
    parse_value,
)
from cbp_rl.run.conventions import EXIT_DIVERGED, EXIT_USAGE, report
from cbp_rl.run.logging import RunStatus, read_run_status, write_json_atomic
from cbp_rl.run.rundir import LOCK_FILE, RunDirectoryError, RunLock, lock_is_held

__all__ = [
    "SweepError",
    "SweepPaths",
    "estimate",
    "launch_sweep",
    "load_manifest",
    "main",
    "run_states",
]

MANIFEST = "sweep.json"
STATE = "state.json"
SPEC_COPY = "spec.toml"
CHECKPOINTS = ("checkpoint.pt", "checkpoint.prev.pt")
NOT_RETRIED = {EXIT_USAGE: "the command refused it", EXIT_DIVERGED: "training diverged"}
"""The commands' exit codes not worth retrying: refused input, a diverged run (it would diverge
again from its last checkpoint)."""


class SweepError(RuntimeError):
    """A sweep that cannot start or continue (its folder belongs to another spec, ...)."""


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class SweepPaths:
    """The files of a sweep folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def spec(self) -> Path:
        return self.root / SPEC_COPY

    @property
    def stop_file(self) -> Path:
        return self.root / ".stop"

    def run_dir(self, run: str) -> Path:
        return self.root / "runs" / run

    def log(self, run: str) -> Path:
        return self.root / "logs" / f"{run}.log"

    def lock(self, run: str) -> Path:
        return self.run_dir(run) / LOCK_FILE


@dataclass(frozen=True)
class Manifest:
    """What ``sweep.json`` holds."""

    name: str
    command: str
    metric: str
    unit: str
    runs: tuple[RunSpec, ...]
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The ``--set`` flags of the launches, reapplied when the sweep is relaunched from its
    folder."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "metric": self.metric,
            "unit": self.unit,
            "overrides": self.overrides,
            "runs": [run.to_json() for run in self.runs],
        }


def load_manifest(root: str | os.PathLike[str]) -> Manifest:
    """The runs of a sweep folder (its ``sweep.json``)."""
    path = Path(root) / MANIFEST
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return Manifest(
            name=data["name"],
            command=data["command"],
            metric=data["metric"],
            unit=data["unit"],
            runs=tuple(RunSpec.from_json(run) for run in data["runs"]),
            overrides=dict(data.get("overrides", {})),
        )
    except FileNotFoundError:
        raise SweepError(f"{root} is not a sweep folder (no {MANIFEST})") from None
    except (KeyError, TypeError, ValueError) as err:
        raise SweepError(f"{path} cannot be read ({err}); was it written by cbp_rl?") from None


def _without_budget(run: RunSpec, budget_flags: Sequence[str]) -> tuple[Any, ...]:
    words, skip = [], False
    for word in run.argv:
        if skip:
            skip = False
        elif word in budget_flags:
            skip = True
        else:
            words.append(word)
    return run.setting, run.seeds, tuple(words)


def write_manifest(
    paths: SweepPaths,
    spec: SweepSpec,
    runs: Sequence[RunSpec],
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Write ``sweep.json`` for this launch; refuses a folder whose runs had other settings
    (only the budget may change between launches)."""
    if paths.manifest.exists():
        old = load_manifest(paths.root)
        if old.command != spec.command.name:
            raise SweepError(
                f"{paths.root} holds a {old.command} sweep, not {spec.command.name}; choose "
                "another folder with --out"
            )
        flags = spec.command.budget_flags
        new = {run.name: _without_budget(run, flags) for run in runs}
        changed = [
            run.name
            for run in old.runs
            if run.name in new and new[run.name] != _without_budget(run, flags)
        ]
        if changed:
            raise SweepError(
                f"the spec changes the settings of existing runs of {paths.root} "
                f"({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}); only the "
                "budget may change between launches: restore the spec or use another --out"
            )
        gone = [run.name for run in old.runs if run.name not in new]
        if gone:
            print(f"note: runs no longer in the spec are left in place: {', '.join(gone)}")
    manifest = Manifest(
        spec.name,
        spec.command.name,
        spec.command.metric,
        spec.command.unit,
        tuple(runs),
        dict(overrides or {}),
    )
    write_json_atomic(paths.manifest, manifest.to_json())


def keep_spec_copy(paths: SweepPaths, spec_file: Path) -> None:
    """Copy the spec into the folder; a different earlier copy is kept under a new name."""
    if paths.spec.exists():
        if spec_file.resolve() == paths.spec.resolve() or filecmp.cmp(spec_file, paths.spec):
            return
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(paths.spec.stat().st_mtime))
        paths.spec.rename(paths.root / f"spec.{stamp}.toml")
    shutil.copyfile(spec_file, paths.spec)


# --------------------------------------------------------------------------- run states


def run_finished(run: RunSpec, status: RunStatus | None) -> bool:
    """Whether the run has done its whole budget (its ``status.json`` says so)."""
    return status is not None and status.finished and status.step >= run.total


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / name).is_file() for name in CHECKPOINTS)


def next_attempt_args(paths: SweepPaths, run: RunSpec, command: str) -> tuple[list[str], str]:
    """The command line of the run's next process and what it does (``fresh``/``resume``).

    A directory with files but no checkpoint (a process that died before its first one) is
    moved to ``attempts/`` first: kept, not overwritten.
    """
    run_dir = paths.run_dir(run.name)
    prefix = ["-m", "cbp_rl.train", command]
    if has_checkpoint(run_dir):
        return [*prefix, "--resume", str(run_dir), *run.resume_flags], "resume"
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        aside = _free_name(paths.root / "attempts" / run.name)
        aside.parent.mkdir(parents=True, exist_ok=True)
        run_dir.rename(aside)
        print(f"{_now()} {run.name}: no checkpoint yet; its files moved to {aside}", flush=True)
    return [*prefix, *run.argv, "--run-dir", str(run_dir)], "fresh"


def _free_name(base: Path) -> Path:
    for k in range(1, 10_000):
        path = base.with_name(f"{base.name}-{k}")
        if not path.exists():
            return path
    raise SweepError(f"too many earlier attempts of {base.name}")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def thread_env(cpus: float) -> dict[str, str]:
    """``OMP_NUM_THREADS`` (and MKL's) for a run given ``cpus`` cores, unless the user set them:
    torch would otherwise start a thread per core in every run and the runs would fight."""
    threads = str(max(1, math.floor(cpus)))
    return {name: threads for name in THREAD_VARIABLES if name not in os.environ}


def _now() -> str:
    return time.strftime("%H:%M:%S")


# --------------------------------------------------------------------------- signals


class StopSignals:
    """SIGINT/SIGTERM to the sweep: the first asks for a stop, a second SIGINT for an abort."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self.abort = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.requested is None:
            self.requested = sig
            note = (
                f"\n{sig.name}: stopping; every running run writes its checkpoint and exits "
                "(Ctrl+C again aborts them at once)\n"
            )
        elif sig == signal.SIGINT:
            self.abort = True
            note = "\nSIGINT again: aborting the runs (their last checkpoints stay good)\n"
        else:
            return
        os.write(sys.stderr.fileno(), note.encode())


# --------------------------------------------------------------------------- the driver


@dataclass
class RunRecord:
    """The sweep's bookkeeping of one run (``state.json``)."""

    state: str = "pending"
    """pending, running, done, failed, stopped, busy."""
    attempts: int = 0
    """Attempts in the current launch."""
    exit_codes: list[int | None] = dataclasses.field(default_factory=list)
    """Of every attempt, all launches."""
    note: str = ""
    updated: float = 0.0


class Driver:
    """Runs a sweep's runs on a backend: starts, retries, settles, stops."""

    def __init__(
        self,
        paths: SweepPaths,
        manifest: Manifest,
        backend: Backend,
        *,
        max_retries: int,
        grace: float = 600.0,
    ) -> None:
        self.paths = paths
        self.manifest = manifest
        self.backend = backend
        self.max_retries = max_retries
        self.grace = grace
        self.runs = {run.name: run for run in manifest.runs}
        self.records = self._load_records()
        self.started: set[str] = set()
        self.last_summary = time.monotonic()

    def _load_records(self) -> dict[str, RunRecord]:
        old: dict[str, Any] = {}
        if self.paths.state.exists():
            try:
                old = json.loads(self.paths.state.read_text(encoding="utf-8")).get("runs", {})
            except (OSError, ValueError):
                old = {}
        records = {}
        for name in self.runs:
            codes = old.get(name, {}).get("exit_codes", [])
            records[name] = RunRecord(exit_codes=list(codes) if isinstance(codes, list) else [])
        return records

    def save_state(self, *, finished: bool = False) -> None:
        write_json_atomic(
            self.paths.state,
            {
                "driver": {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "backend": self.backend.description,
                    "updated": time.time(),
                    "finished": finished,
                },
                "runs": {name: dataclasses.asdict(r) for name, r in self.records.items()},
            },
        )

    def _set(self, name: str, state: str, note: str = "") -> None:
        record = self.records[name]
        record.state, record.note, record.updated = state, note, time.time()

    def _say(self, name: str, message: str) -> None:
        print(f"{_now()} {name}: {message}", flush=True)

    # ----------------------------------------------------------------- main loop
    def run(self, stop: StopSignals) -> int:
        queue: collections.deque[str] = collections.deque()
        for name, run in self.runs.items():
            if run_finished(run, read_run_status(self.paths.run_dir(name))):
                self._set(name, "done", "finished earlier")
            else:
                queue.append(name)
        done = sum(r.state == "done" for r in self.records.values())
        print(
            f"{self.manifest.name}: {len(self.runs)} runs ({done} finished earlier, "
            f"{len(queue)} to run) on {self.backend.description}",
            flush=True,
        )
        self.save_state()
        stop_sent = abort_sent = False
        while queue or self.backend.running():
            if stop.requested is not None and not stop_sent:
                stop_sent = True
                self.paths.stop_file.write_text(STOP)
                self.backend.stop()
                queue.clear()
            if stop.abort and not abort_sent:
                abort_sent = True
                self.paths.stop_file.write_text(ABORT)
                self.backend.stop(abort=True)
            while queue and stop.requested is None:
                run = self.runs[queue[0]]
                if not self.backend.has_room(run.resources):
                    break
                queue.popleft()
                self._start(run)
            for attempt, outcome in self.backend.wait(0.2):
                if self._settle(attempt, outcome, stopping=stop.requested is not None):
                    queue.appendleft(attempt.run)
            self._maybe_summary()
        if stop.requested is not None:
            self._wait_for_exits()
        self.paths.stop_file.unlink(missing_ok=True)
        self.save_state(finished=stop.requested is None)
        return self._report(stop)

    def _start(self, run: RunSpec) -> None:
        record = self.records[run.name]
        record.attempts += 1
        args, mode = next_attempt_args(self.paths, run, self.manifest.command)
        attempt = Attempt(
            run=run.name,
            number=record.attempts,
            args=tuple(args),
            run_dir=str(self.paths.run_dir(run.name)),
            log=str(self.paths.log(run.name)),
            lock=str(self.paths.lock(run.name)),
            stop_file=str(self.paths.stop_file),
            env=thread_env(run.resources.cpus),
        )
        outcome = self.backend.start(attempt, run.resources)
        if outcome is not None:
            self._settle(attempt, outcome, stopping=False)
            return
        self.started.add(run.name)
        self._set(run.name, "running", mode)
        retry = f", attempt {record.attempts}/{self.max_retries + 1}" if record.attempts > 1 else ""
        verb = "submitted" if self.backend.queues else "started"
        self._say(run.name, f"{verb} ({mode}{retry})")
        self.save_state()

    def _settle(self, attempt: Attempt, outcome: Outcome, *, stopping: bool) -> bool:
        """Record how an attempt ended; returns whether to start the run again."""
        name = attempt.run
        run, record = self.runs[name], self.records[name]
        if outcome.started:
            record.exit_codes.append(outcome.exit_code)
        status = read_run_status(self.paths.run_dir(name))
        retry = False
        if run_finished(run, status):
            self._set(name, "done")
            self._say(name, f"done{_metric_text(status)}")
        elif outcome.busy:
            self._set(name, "busy", outcome.note)
            self._say(name, f"skipped: {outcome.note} (see `python -m cbp_rl.sweep status`)")
        elif not outcome.started:
            self._set(name, "pending", outcome.note)
        elif stopping:
            self._set(name, "stopped", _exit_text(outcome))
            self._say(name, f"stopped at {_progress_text(status)}; resumable")
        elif outcome.exit_code in NOT_RETRIED:
            note = f"{NOT_RETRIED[outcome.exit_code]}: {_last_error(self.paths.log(name))}"
            self._set(name, "failed", note)
            self._say(name, f"failed ({note}); not retried, see {self.paths.log(name)}")
        elif record.attempts <= self.max_retries:
            retry = True
            self._set(name, "pending", f"{_exit_text(outcome)}; retrying")
            where = "its last checkpoint" if has_checkpoint(self.paths.run_dir(name)) else "scratch"
            self._say(name, f"died ({_exit_text(outcome)}); retrying from {where}")
        else:
            note = f"{_exit_text(outcome)} after {record.attempts} attempts: "
            note += _last_error(self.paths.log(name))
            self._set(name, "failed", note)
            self._say(name, f"failed ({note}); see {self.paths.log(name)}")
        self.save_state()
        return retry

    def _maybe_summary(self) -> None:
        if time.monotonic() - self.last_summary < 60.0:
            return
        self.last_summary = time.monotonic()
        counts = collections.Counter(r.state for r in self.records.values())
        print(f"{_now()} " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)

    def _wait_for_exits(self) -> None:
        """After a stop: wait until every run process started here has exited (its lock is
        free), so the sweep returns only when all runs are resumable."""
        deadline = time.monotonic() + self.grace
        waiting = [n for n in self.started if lock_is_held(self.paths.lock(n))]
        if waiting:
            print(f"waiting for {len(waiting)} run(s) to write their checkpoints", flush=True)
        while waiting and time.monotonic() < deadline:
            time.sleep(0.2)
            waiting = [n for n in waiting if lock_is_held(self.paths.lock(n))]
        if waiting:
            print(f"still running after {self.grace:g} s: {', '.join(waiting)}", file=sys.stderr)

    def _report(self, stop: StopSignals) -> int:
        counts = collections.Counter(r.state for r in self.records.values())
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"{self.manifest.name}: {summary} ({self.paths.root})", flush=True)
        if stop.requested is not None:
            print(f"relaunch to continue: python -m cbp_rl.sweep {self.paths.root}", flush=True)
            return 128 + int(stop.requested)
        return 0 if counts["done"] == len(self.records) else 1


def _exit_text(outcome: Outcome) -> str:
    code = outcome.exit_code
    if code is None:
        return outcome.note or "no exit status"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _metric_text(status: RunStatus | None) -> str:
    if status is None or status.value is None:
        return ""
    return f" ({status.metric} {status.value:.4g})"


def _progress_text(status: RunStatus | None) -> str:
    if status is None:
        return "the start"
    return f"{status.step:,}/{status.total:,} {status.unit}"


def _last_error(log: Path, limit: int = 300) -> str:
    """The last line of a log that reads like an error (else its last line)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 20_000))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line and not line.startswith("===")]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:limit]


def launch_sweep(
    spec_file: Path,
    root: Path,
    *,
    backend: str = "local",
    jobs: int | None = None,
    num_cpus: float | None = None,
    num_gpus: int | None = None,
    address: str | None = None,
    max_retries: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    grace: float = 600.0,
) -> int:
    """Validate a spec, prepare its folder and run it (see the module docstring)."""
    paths = SweepPaths(root)
    spec = load_spec(spec_file, overrides, default_name=_folder_name(paths))
    runs = expand(spec)
    if dry_run:
        _print_plan(paths, spec, runs)
        return 0
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(paths, spec, runs, overrides)
    keep_spec_copy(paths, spec_file)
    if spec.expected_cpu_hours:
        print(f"{spec.name}: expected cost about {spec.expected_cpu_hours:,.0f} CPU-hours")
    paths.stop_file.unlink(missing_ok=True)
    manifest = load_manifest(root)
    gpus_needed = any(run.resources.gpus for run in runs)
    executor: Backend
    if backend == "ray":
        executor = RayBackend(address=address, num_cpus=num_cpus, num_gpus=num_gpus)
    else:
        gpus = num_gpus if num_gpus is not None else (_gpu_count() if gpus_needed else 0)
        if gpus_needed and gpus == 0:
            raise SweepError("the spec asks for GPUs (resources.gpus) but none are visible")
        executor = LocalBackend(jobs=jobs, cpus=num_cpus, gpus=gpus)
    retries = spec.max_retries if max_retries is None else max_retries
    driver = Driver(paths, manifest, executor, max_retries=retries, grace=grace)
    try:
        with RunLock(root, command="sweep"), StopSignals() as stop:
            return driver.run(stop)
    finally:
        executor.close()


def _gpu_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _print_plan(paths: SweepPaths, spec: SweepSpec, runs: Sequence[RunSpec]) -> None:
    print(f"{spec.name}: {spec.command.name}, {len(runs)} runs into {paths.root}")
    for run in runs:
        status = read_run_status(paths.run_dir(run.name))
        if run_finished(run, status):
            what = "finished"
        elif has_checkpoint(paths.run_dir(run.name)):
            what = f"resume at {_progress_text(status)}"
        else:
            what = "fresh"
        words = " ".join(run.argv)
        print(f"  {run.name}: {what}: python -m cbp_rl.train {spec.command.name} {words}")


# --------------------------------------------------------------------------- status view


@dataclass(frozen=True)
class RunView:
    """One line of the status view."""

    name: str
    setting: str
    state: str
    step: int
    total: int
    metric: str
    value: float | None
    attempts: int
    note: str


def run_states(root: str | os.PathLike[str]) -> list[RunView]:
    """Where each run of a sweep folder stands: done (its budget done), running (its process
    holds its lock), failed, stopped (resumable), interrupted (its sweep died), pending."""
    paths = SweepPaths(Path(root))
    manifest = load_manifest(paths.root)
    records: dict[str, Any] = {}
    driver: dict[str, Any] = {}
    if paths.state.exists():
        with open(paths.state, encoding="utf-8") as f:
            data = json.load(f)
        records, driver = data.get("runs", {}), data.get("driver", {})
    driver_alive = _driver_alive(driver)
    views = []
    for run in manifest.runs:
        status = read_run_status(paths.run_dir(run.name))
        record = records.get(run.name, {})
        saved = record.get("state", "pending")
        if run_finished(run, status):
            state = "done"
        elif lock_is_held(paths.lock(run.name)):
            state = "running"
        elif saved == "failed":
            state = "failed"
        elif driver_alive:
            state = "pending"  # queued, or about to be retried
        elif saved == "running":
            state = "interrupted"  # its sweep died while it ran
        elif status is not None or has_checkpoint(paths.run_dir(run.name)):
            state = "stopped"
        else:
            state = "pending"
        views.append(
            RunView(
                name=run.name,
                setting=run.setting,
                state=state,
                step=0 if status is None else status.step,
                total=run.total,
                metric=manifest.metric,
                value=None if status is None else status.value,
                attempts=len(record.get("exit_codes", [])) + (state == "running"),
                note=record.get("note", "") if state in ("failed", "busy") else "",
            )
        )
    return views


def _driver_alive(driver: Mapping[str, Any]) -> bool:
    if not driver or driver.get("finished"):
        return False
    if driver.get("host") != socket.gethostname():
        return time.time() - float(driver.get("updated", 0)) < 3600  # cannot probe: guess
    try:
        os.kill(int(driver["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def print_status(root: Path, *, as_json: bool = False) -> int:
    views = run_states(root)
    if as_json:
        print(json.dumps([dataclasses.asdict(v) for v in views], indent=2))
        return 0
    manifest = load_manifest(root)
    counts = collections.Counter(v.state for v in views)
    order = ("done", "running", "stopped", "interrupted", "failed", "pending")
    summary = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
    print(f"{manifest.name} ({manifest.command}, {len(views)} runs) in {root}: {summary}")
    header = ("run", "state", f"{manifest.unit}", "%", manifest.metric, "tries", "note")
    rows = [header]
    for v in views:
        percent = f"{100 * v.step / v.total:.0f}" if v.total else "-"
        value = "-" if v.value is None else f"{v.value:.4g}"
        rows.append((v.name, v.state, f"{v.step:,}", percent, value, str(v.attempts), v.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class Estimate:
    """The measured cost of one setting's runs."""

    setting: str
    runs: int
    per_unit: float
    """CPU seconds per step (or example)."""
    per_task: float
    """CPU seconds per task start (pmnist: measures, checkpoint); 0 for RL."""
    fixed: float
    """CPU seconds per run not proportional to its length (start-up, the last checkpoint)."""
    per_run: float
    """CPU seconds of one whole run."""

    @property
    def cpu_hours(self) -> float:
        return self.runs * self.per_run / 3600.0


def estimate(
    spec: SweepSpec, runs: Sequence[RunSpec], *, units: int | None = None, work: Path
) -> list[Estimate]:
    """Measure each setting's CPU cost by running its first run's command briefly (child CPU
    time, ``getrusage``), with the short runs its command's ``cost`` asks for (RL: ``units`` and
    3 x ``units`` steps; pmnist: 1 task of ``units`` and of 2 x ``units`` examples and 2 tasks
    of ``units``), extrapolated to the whole budget."""
    results = []
    for setting in spec.settings:
        members = [run for run in runs if run.setting == setting.name]
        first = members[0]
        config = parse_flags(spec.command, first.argv)
        measure = functools.partial(_measure, spec, first, work=work)
        per_unit, per_task, fixed, per_run = spec.command.cost(config, first.total, units, measure)
        results.append(Estimate(setting.name, len(members), per_unit, per_task, fixed, per_run))
        print(
            f"  {setting.name}: {per_unit * 1e3:.3f} CPU-ms per {spec.command.unit[:-1]}"
            + (f", {per_task:.2f} CPU-s per task" if per_task else "")
            + f", {fixed:.1f} CPU-s fixed -> {per_run / 3600:.2f} CPU-hours per run",
            flush=True,
        )
    return results


def _measure(spec: SweepSpec, run: RunSpec, budget: Sequence[str], work: Path) -> tuple[float, int]:
    """CPU seconds (process and children) and units done of one short run."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{run.name}-", dir=work))
    shutil.rmtree(run_dir)
    argv = [sys.executable, "-m", "cbp_rl.train", spec.command.name, *run.argv, *budget]
    argv += ["--run-dir", str(run_dir)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, **thread_env(run.resources.cpus)}  # as the sweep would run it
    done = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SweepError(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-2000:]}")
    status = read_run_status(run_dir)
    units = 0 if status is None else status.step
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, units


# --------------------------------------------------------------------------- command line


def _overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"--set takes FLAG=VALUE, got {pair!r}")
        result[key] = parse_value(value)
    return result


def _folder_name(paths: SweepPaths) -> str | None:
    """The name of the sweep a folder holds, if it holds one."""
    return load_manifest(paths.root).name if paths.manifest.is_file() else None


def _saved_overrides(folder: Path | None) -> dict[str, Any]:
    """The ``--set`` flags a sweep folder was launched with."""
    if folder is None or not (folder / MANIFEST).is_file():
        return {}
    return dict(load_manifest(folder).overrides)


def _resolve_target(target: Path) -> tuple[Path, Path | None]:
    """``(spec file, folder)`` for a spec file or a sweep folder holding ``spec.toml``."""
    if target.is_dir():
        spec = target / SPEC_COPY
        if not spec.is_file():
            raise SweepError(f"{target} is a folder without {SPEC_COPY}: pass a spec file")
        return spec, target
    return target, None


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cbp_rl.sweep",
        description="Run a sweep spec (settings x seeds, one run each) locally or on Ray; "
        "subcommands: status SWEEP_DIR, validate SPEC..., estimate SPEC.",
    )
    parser.add_argument("target", type=Path, metavar="SPEC|SWEEP_DIR")
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local (default): a process pool on this machine; ray: one Ray task per run",
    )
    parser.add_argument("--out", type=Path, help="the sweep folder (default: sweeps/<name>)")
    parser.add_argument("--jobs", type=int, help="local: at most this many runs at once")
    parser.add_argument(
        "--num-cpus", type=float, help="cores to fill (local pool; a local Ray's num_cpus)"
    )
    parser.add_argument("--num-gpus", type=int, help="GPUs to use (default: all visible)")
    parser.add_argument("--address", help="ray: a running cluster's address (or 'auto')")
    parser.add_argument("--max-retries", type=int, help="default: the spec's (2)")
    parser.add_argument("--set", action="append", metavar="FLAG=VALUE", help="override a flag")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the runs")
    parser.add_argument(
        "--grace", type=float, default=600.0, help="seconds to wait for runs after a stop"
    )
    return parser


def _main_run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise SweepError("--jobs must be >= 1")
    if args.max_retries is not None and args.max_retries < 0:
        raise SweepError("--max-retries must be >= 0")
    if args.address and args.backend != "ray":
        raise SweepError("--address goes with --backend ray")
    spec_file, folder = _resolve_target(args.target)
    given = _overrides(args.set)
    root = args.out or folder or Path("sweeps") / load_spec(spec_file, given).name
    overrides = {**_saved_overrides(root), **given}
    return launch_sweep(
        spec_file,
        root,
        backend=args.backend,
        jobs=args.jobs,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        address=args.address,
        max_retries=args.max_retries,
        overrides=overrides,
        dry_run=args.dry_run,
        grace=args.grace,
    )


def _main_status(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cbp_rl.sweep status")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON")
    args = parser.parse_args(argv)
    return print_status(args.sweep_dir, as_json=args.json)


def _main_validate(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cbp_rl.sweep validate")
    parser.add_argument("specs", type=Path, nargs="+", metavar="SPEC")
    parser.add_argument("--set", action="append", metavar="FLAG=VALUE")
    args = parser.parse_args(argv)
    for path in args.specs:
        spec = load_spec(path, _overrides(args.set))
        runs = expand(spec)
        cost = (
            f", about {spec.expected_cpu_hours:,.0f} CPU-hours" if spec.expected_cpu_hours else ""
        )
        print(
            f"{path}: {spec.name}: {spec.command.name}, {len(spec.settings)} settings x "
            f"{len(spec.seeds)} seeds = {len(runs)} runs{cost}"
        )
    return 0


def _main_estimate(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cbp_rl.sweep estimate")
    parser.add_argument("spec", type=Path, metavar="SPEC")
    parser.add_argument(
        "--units", type=int, help="steps (RL, default 10240) or examples (pmnist, default 1000)"
    )
    parser.add_argument("--set", action="append", metavar="FLAG=VALUE")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec, _overrides(args.set))
    runs = expand(spec)
    print(f"{spec.name}: measuring {len(spec.settings)} settings (CPU time of short runs)")
    with tempfile.TemporaryDirectory(prefix="cbp_rl-estimate-") as work:
        results = estimate(spec, runs, units=args.units, work=Path(work))
    total = sum(r.cpu_hours for r in results)
    print(f"{spec.name}: {len(runs)} runs, about {total:,.0f} CPU-hours")
    print(f"expected_cpu_hours = {_round(total)}")
    return 0


def _round(value: float) -> int:
    if value <= 0:
        return 0
    digits = max(0, math.floor(math.log10(value)) - 1)
    return int(round(value, -digits))


SUBCOMMANDS = {"status": _main_status, "validate": _main_validate, "estimate": _main_estimate}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (2 for a bad spec or folder)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = _main_run
    if args and args[0] in SUBCOMMANDS:
        command = SUBCOMMANDS[args.pop(0)]
    elif args and args[0] == "run":
        args.pop(0)
    try:
        return command(args)
    except (SpecError, SweepError, RayUnavailableError, RunDirectoryError) as err:
        return report("sweep", err, EXIT_USAGE)
