"""Run directories: checked before use, locked for as long as a command writes them.

One process writes a run directory at a time. A command claims its directory with
:func:`claim_run_dir`, which

1. checks the path: a directory (or creatable as one), not a file and not below a file, and
   writable (a file is created and removed: ``os.access`` is wrong for root and for
   immutable or read-only mounts);
2. takes the directory's lock, ``RUN_DIR/.lock`` (``flock``, exclusive, non-blocking), and
   writes the holder (pid, command, host) into it; a directory another live process holds is
   refused with :class:`RunDirectoryBusyError` naming that process. The kernel drops the lock
   when the process ends, however it ends (SIGKILL included), so a lock is never stale;
3. removes the temporary files (``.NAME.XXXXXXXX.tmp``) that a killed writer's atomic writes
   left behind (``cbp_rl.run.checkpoint.atomic_write``).

Inside :func:`cbp_rl.run.conventions.run_command` the lock is released when the command returns;
elsewhere it is held until :meth:`RunLock.release` (or the process's end)::

    run_dir = claim_run_dir(path, command="ppo", flag="--run-dir").path

A process that starts a command for a run (the sweep) takes the same lock first with
:func:`take_lock` and hands it over: the child inherits the locked descriptor (``pass_fds``) and
finds its number in ``$CBP_RL_RUN_LOCK_FD`` (:data:`INHERITED_LOCK_ENV`); its
:func:`claim_run_dir` adopts that lock instead of refusing, so no other process can slip in
between. :func:`lock_is_held` and :func:`lock_holder` look at a lock without taking it for long.

Helpers for the messages commands print about a directory: :func:`unresumable_message` (a
directory with files but no checkpoint).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbp_rl.run.runtime import ClosedOnExit

__all__ = [
    "INHERITED_LOCK_ENV",
    "LOCK_FILE",
    "LockHolder",
    "RunDirectoryBusyError",
    "RunDirectoryError",
    "RunLock",
    "check_run_dir_path",
    "claim_run_dir",
    "claims_released",
    "lock_holder",
    "lock_is_held",
    "remove_stale_temp_files",
    "take_lock",
    "unresumable_message",
]

LOCK_FILE = ".lock"
"""The lock file of a run directory."""
INHERITED_LOCK_ENV = "CBP_RL_RUN_LOCK_FD"
"""The environment variable naming a locked descriptor the parent handed over."""

_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")
_claims: list[list[RunLock]] = []
"""Locks taken inside each running :func:`cbp_rl.run.conventions.run_command` (innermost last)."""


class RunDirectoryError(ValueError):
    """A run directory that cannot be used (a file, below a file, not writable): bad input."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run directory's lock, as written in its lock file."""

    pid: int | None
    command: str
    host: str

    def describe(self) -> str:
        who = f"process {self.pid}" if self.pid else "another process"
        what = f" (`{self.command}`" + (f" on {self.host})" if self.host else ")")
        return who + (what if self.command else "")


class RunDirectoryBusyError(RunDirectoryError):
    """Another live process holds the run directory's lock."""

    def __init__(self, path: Path, holder: LockHolder | None) -> None:
        self.path = path
        self.holder = holder
        who = holder.describe() if holder is not None else "another process"
        pid = f" (kill {holder.pid} to stop it)" if holder is not None and holder.pid else ""
        super().__init__(
            f"{path} is in use by {who}: one process writes a run directory at a time. Wait "
            f"for it to finish{pid}, or choose another directory"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.holder))


# --------------------------------------------------------------------------- the lock


def take_lock(path: Path, *, command: str) -> int:
    """Lock ``path`` (created if needed) and record this process as its holder; returns the
    descriptor (close it to release). Raises :class:`RunDirectoryBusyError` if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirectoryBusyError(path.parent, lock_holder(path)) from None
    except BaseException:
        os.close(fd)
        raise
    _write_holder(fd, command)
    return fd


def _write_holder(fd: int, command: str) -> None:
    record = {"pid": os.getpid(), "command": command, "host": socket.gethostname()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


def lock_holder(path: str | os.PathLike[str]) -> LockHolder | None:
    """Who last took the lock at ``path`` (``None`` when it has no readable record)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return LockHolder(int(record["pid"]), str(record["command"]), str(record["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_is_held(path: str | os.PathLike[str]) -> bool:
    """Whether some process holds the lock at ``path`` (a probe: takes and drops it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we took it
    return False


def _inherited_lock(path: Path) -> int | None:
    """The descriptor of ``path``'s lock handed over by the parent, if it is that file."""
    value = os.environ.get(INHERITED_LOCK_ENV)
    if not value or not value.isdigit():
        return None
    fd = int(value)
    try:
        mine, theirs = os.fstat(fd), os.stat(path)
    except OSError:
        return None
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        return None
    del os.environ[INHERITED_LOCK_ENV]  # not for this process's own children
    os.set_inheritable(fd, False)
    return fd


class RunLock(ClosedOnExit):
    """The lock of one run directory (see the module docstring).

    Args:
        run_dir: the run directory (it must exist).
        command: the command holding it, for the message another process gets.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, command: str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (or adopt the one the parent handed over); raises
        :class:`RunDirectoryBusyError` when another process holds it."""
        if self._fd is not None:
            return self
        inherited = _inherited_lock(self.path)
        if inherited is not None:
            fcntl.flock(inherited, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: returns at once
            _write_holder(inherited, self.command)
            self._fd = inherited
        else:
            try:
                self._fd = take_lock(self.path, command=self.command)
            except PermissionError as err:
                raise _not_writable(self.run_dir, err) from None
        return self

    def release(self) -> None:
        """Drop the lock (the lock file stays; its record names the last holder)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """:meth:`release`, as leaving a ``with`` block does."""
        self.release()

    def __enter__(self) -> RunLock:
        return self.acquire()


# --------------------------------------------------------------------------- claiming


def check_run_dir_path(path: str | os.PathLike[str], *, flag: str = "--run-dir") -> Path:
    """Create ``path`` as a directory if needed and check it is one this process can write.

    Raises :class:`RunDirectoryError` naming ``flag`` when it is a file, lies below a file, or
    cannot be created or written (permissions, a read-only or immutable file system).
    """
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"lies below the file {part}"
            raise RunDirectoryError(
                f"{flag} {path} {where}, not a directory; choose a directory path"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{secrets.token_hex(4)}.tmp"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        raise _not_writable(path, err, flag) from None
    return path


def _not_writable(path: Path, err: OSError, flag: str = "") -> RunDirectoryError:
    reason = err.strerror or str(err)
    where = f"{flag} {path}" if flag else str(path)
    return RunDirectoryError(
        f"{where} cannot be written ({reason}); choose a directory you can write to"
        + (" (--runs-root for new runs)" if flag == "--run-dir" else "")
    )


def claim_run_dir(
    path: str | os.PathLike[str], *, command: str, flag: str = "--run-dir"
) -> RunLock:
    """Check the directory (:func:`check_run_dir_path`), take its lock and clear what killed
    writers left; returns the held :class:`RunLock` (released when ``run_command`` returns)."""
    run_dir = check_run_dir_path(path, flag=flag)
    lock = RunLock(run_dir, command=command).acquire()
    if _claims:
        _claims[-1].append(lock)
    remove_stale_temp_files(run_dir)
    return lock


@contextlib.contextmanager
def claims_released() -> Iterator[None]:
    """Release, on exit, every lock :func:`claim_run_dir` takes inside the block."""
    held: list[RunLock] = []
    _claims.append(held)
    try:
        yield
    finally:
        _claims.remove(held)
        for lock in held:
            lock.release()


def remove_stale_temp_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.NAME.XXXXXXXX.tmp`` files interrupted atomic writes left in ``run_dir`` and
    returns them. Only call it while holding the directory's lock."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        if path.is_file() and _TEMP_FILE.fullmatch(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def unresumable_message(run_dir: Path, *, command: str, resume_flag: str = "--resume") -> str:
    """What to do with a directory that holds a run's files but no checkpoint (its process was
    killed before the first one): nothing in it can be continued."""
    files = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
    return (
        f"{run_dir} holds a {command} run that stopped before its first checkpoint ({shown}; no "
        f"checkpoint.pt), so there is nothing to {resume_flag.lstrip('-')}: start it again "
        f"with `--run-dir {run_dir}` after removing it (rm -r {run_dir}), or choose another "
        "--run-dir"
    )
