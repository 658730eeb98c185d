"""Run logs: TensorBoard scalars, a CSV of episodes and the run's config, resumable exactly.

A run directory holds::

    config.json                 the run's full config (write_json_atomic)
    events.out.tfevents.*       TensorBoard scalars, one file per process (resumes add one)
    episodes.csv                one row per finished episode: step, return, length, ...
    checkpoint.pt               (cbp_rl.run.checkpoint.CheckpointManager)
    status.json                 progress for sweeps and status views (RunStatusWriter)

Tags are namespaced, e.g. ``train/approx_kl``, ``charts/episodic_return``,
``plasticity/policy/dead_units/0``; each command documents its own.

Exact resume: put ``logger.position()`` into each checkpoint; on resume pass
``resume_step=state["step"]`` and ``resume_position=state["log_position"]``. TensorBoard then
hides the events at steps >= ``resume_step`` that a killed run wrote after its checkpoint (the
new event file starts with a purge marker) and ``episodes.csv`` is cut back to its size at the
checkpoint, so no row appears twice::

    with RunLogger(run_dir, cfg) as logger:
        logger.scalar("train/approx_kl", 0.01, step)
        logger.episode(step, return_=123.4, length=1000)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import keyword
import logging as _stdlib_logging
import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, SupportsFloat

import numpy as np

from cbp_rl.run.checkpoint import CheckpointError, StrPath, atomic_write, to_jsonable

__all__ = [
    "RunLogger",
    "RunStatus",
    "RunStatusWriter",
    "read_config",
    "read_run_status",
    "read_scalars",
    "read_tags",
    "write_json_atomic",
]

_log = _stdlib_logging.getLogger(__name__)

CONFIG_FILE = "config.json"
EPISODES_FILE = "episodes.csv"
EVENTS_GLOB = "events.out.tfevents.*"
STATUS_FILE = "status.json"


def write_json_atomic(path: StrPath, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (see ``cbp_rl.run.checkpoint.atomic_write``).

    ``obj`` goes through ``to_jsonable`` first: dataclasses become dicts, tuples lists, paths
    strings; anything else not JSON-able raises ``TypeError`` naming its key path.
    """
    text = json.dumps(to_jsonable(obj, where=Path(path).name), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_config(run_dir: StrPath) -> dict[str, Any]:
    """The ``config.json`` of a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}, not a config object")
    return config


class RunLogger:
    """Logs of one run: ``config.json``, TensorBoard event files and ``episodes.csv``.

    Args:
        run_dir: the run directory, created if needed. A fresh run (no ``resume_step``) refuses a
            directory that already holds logs, so two runs never mix.
        config: the run's config (a dict or dataclass); written to ``config.json``.
        resume_step: the step of the checkpoint being resumed; TensorBoard then discards the
            events at this step and later that the interrupted run wrote.
        resume_position: the ``position()`` stored in that checkpoint; ``episodes.csv`` is cut
            back to it. Give both ``resume_step`` and ``resume_position`` or neither.
    """

    def __init__(
        self,
        run_dir: StrPath,
        config: Any,
        *,
        resume_step: int | None = None,
        resume_position: Mapping[str, Any] | None = None,
    ) -> None:
        if (resume_step is None) != (resume_position is None):
            raise ValueError(
                "resume_step and resume_position go together: pass both (from the checkpoint) "
                "when resuming, neither for a fresh run"
            )
        if resume_step is not None and (not isinstance(resume_step, int) or resume_step < 0):
            raise ValueError(f"resume_step must be an int >= 0, got {resume_step!r}")
        self.run_dir = Path(run_dir)
        self.config: dict[str, Any] = to_jsonable(config, where="config")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        episodes = self.run_dir / EPISODES_FILE
        if resume_position is None:
            existing = [
                p.name
                for p in (self.run_dir / CONFIG_FILE, episodes, *self.run_dir.glob(EVENTS_GLOB))
                if p.exists()
            ]
            if existing:
                raise FileExistsError(
                    f"{self.run_dir} already holds a run ({', '.join(sorted(existing))}); resume "
                    "it (resume_step/resume_position from its checkpoint) or pick a new directory "
                    "(cbp_rl.run.runtime.new_run_dir)"
                )
        else:
            _truncate_episodes(episodes, resume_position)
        write_json_atomic(self.run_dir / CONFIG_FILE, self.config)

        self._columns: list[str] | None = _read_header(episodes)
        self._csv = open(episodes, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._csv_writer = csv.writer(self._csv)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir), purge_step=resume_step)
        except BaseException:
            self._csv.close()
            raise
        self._closed = False

    # ----------------------------------------------------------------- scalars

    def scalar(self, tag: str, value: SupportsFloat, step: int) -> None:
        """Log one scalar (a number, or a one-element tensor/array) under ``tag`` at ``step``."""
        self._check_open()
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"tag must be a non-empty string, got {tag!r}")
        self._tb.add_scalar(tag, float(value), global_step=int(step))

    def scalars(self, values: Mapping[str, SupportsFloat], step: int, *, prefix: str = "") -> None:
        """Log several scalars at ``step``; ``prefix="train"`` turns ``approx_kl`` into
        ``train/approx_kl``."""
        for tag, value in values.items():
            self.scalar(f"{prefix}/{tag}" if prefix else tag, value, step)

    # ----------------------------------------------------------------- episodes

    def episode(self, step: int, /, **columns: Any) -> None:
        """Append one row to ``episodes.csv``: ``step`` and ``columns``.

        The first row fixes the columns (``step`` first, then the keywords in the order given).
        A keyword named after a Python keyword with a trailing underscore loses it, so
        ``return_=...`` fills column ``return``. Later rows may leave columns out (empty cells)
        but not add new ones (``ValueError``).
        """
        self._check_open()
        row = {_column_name(name): value for name, value in columns.items()}
        if "step" in row:
            raise ValueError("pass the step as the first argument, not as a column")
        row = {"step": int(step), **row}
        if self._columns is None:
            self._columns = list(row)
            self._csv_writer.writerow(self._columns)
        unknown = [name for name in row if name not in self._columns]
        if unknown:
            raise ValueError(
                f"unknown episode column(s) {unknown}; {EPISODES_FILE} has columns "
                f"{self._columns} (fixed by its first row)"
            )
        self._csv_writer.writerow([row.get(name, "") for name in self._columns])

    # ----------------------------------------------------------------- resume

    def position(self) -> dict[str, int]:
        """Where the logs stand, for a checkpoint: ``{"episodes_csv_bytes": size}``.

        Flushes and fsyncs ``episodes.csv`` first, so the position is on disk before the
        checkpoint that records it.
        """
        self._check_open()
        self._csv.flush()
        os.fsync(self._csv.fileno())
        self._tb.flush()
        return {"episodes_csv_bytes": os.fstat(self._csv.fileno()).st_size}

    # ----------------------------------------------------------------- lifetime

    def flush(self) -> None:
        """Write buffered events and rows to disk."""
        self._check_open()
        self._tb.flush()
        self._csv.flush()

    def close(self) -> None:
        """Flush and close the files; closing twice is fine."""
        if self._closed:
            return
        self._closed = True
        try:
            self._tb.close()
        finally:
            self._csv.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the RunLogger of {self.run_dir} is closed")


def _column_name(name: str) -> str:
    stripped = name[:-1]
    return stripped if name.endswith("_") and keyword.iskeyword(stripped) else name


def _read_header(path: Path) -> list[str] | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), None)


def _truncate_episodes(path: Path, position: Mapping[str, Any]) -> None:
    """Cut ``episodes.csv`` back to its size at the checkpoint (rows after it are re-logged)."""
    size = position.get("episodes_csv_bytes")
    if not isinstance(size, int) or size < 0:
        raise ValueError(
            f"resume_position must be a RunLogger.position() result, got {dict(position)!r}"
        )
    current = path.stat().st_size if path.exists() else 0
    if current < size:
        raise CheckpointError(
            f"is {current} bytes, shorter than the {size} bytes it had at the checkpoint: rows "
            "were lost or the file was edited",
            path,
            "restore the file, or start a new run",
        )
    if current > size:
        os.truncate(path, size)
        _log.info("%s: dropped %d bytes written after the checkpoint", path, current - size)


# --------------------------------------------------------------------------- reading back


def read_scalars(run_dir: StrPath) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run directory as TensorBoard shows them: ``{tag: [(step, value), ...]}``
    (see :func:`read_tags`)."""
    return {
        tag: [(int(step), value) for step, value in values]
        for tag, values in _merged_scalars(Path(run_dir), ()).items()
    }


def read_tags(
    run_dir: StrPath, prefixes: Sequence[str] = ()
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The scalars of a run directory's event files as ``{tag: (steps, values)}`` (float64
    arrays); ``prefixes`` keeps only the tags starting with one of them.

    Reads every event file in ``run_dir`` (not subdirectories) straight from its records, oldest
    file first, as TensorBoard shows them: a file written with a purge step (a resumed run)
    drops the earlier files' values at that step and later, for all tags; for a step logged
    more than once the last value wins. Steps come sorted; values are float32 as TensorBoard
    stores them.
    """
    return {
        tag: (
            np.array([step for step, _ in values], dtype=np.float64),
            np.array([value for _, value in values], dtype=np.float64),
        )
        for tag, values in _merged_scalars(Path(run_dir), tuple(prefixes)).items()
    }


def _merged_scalars(run_dir: Path, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    wanted = tuple(p.encode() for p in prefixes)
    files = []
    for path in run_dir.glob(EVENTS_GLOB):
        records = list(_records(path))
        first = next((e for e in (Event.FromString(r) for r in records[:3]) if e.wall_time), None)
        if first is None:  # an empty file: its process died before writing anything
            continue
        files.append((first.wall_time, _file_counter(path), path.name, records))
    merged: dict[str, dict[int, float]] = {}
    for _, _, _, records in sorted(files, key=lambda item: item[:3]):
        purged = False
        for record in records:
            if wanted and not any(w in record for w in wanted) and purged:
                continue
            event = Event.FromString(record)
            if not purged:
                if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                    step = int(event.step)
                    for tag, values in merged.items():
                        merged[tag] = {s: v for s, v in values.items() if s < step}
                    purged = True
                    continue
                if event.HasField("summary"):
                    purged = True  # the marker comes before any summary
            for value in event.summary.value:
                if wanted and not value.tag.startswith(prefixes):
                    continue
                if value.HasField("simple_value"):
                    merged.setdefault(value.tag, {})[int(event.step)] = value.simple_value
    return {tag: sorted(values.items()) for tag, values in sorted(merged.items()) if values}


def _records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (a truncated last record is left out)."""
    data = path.read_bytes()
    position = 0
    while position + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, position)
        start = position + 12
        if start + length + 4 > len(data):
            return
        yield data[start : start + length]
        position = start + length + 4


def _file_counter(path: Path) -> int:
    """The per-process counter that ends an event file's name (orders files of one second)."""
    last = path.name.rsplit(".", 1)[-1]
    return int(last) if last.isdigit() else -1


# --------------------------------------------------------------------------- run status


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, as ``status.json`` holds it (read by sweeps and status views).

    ``finished`` is true once the run has done its whole budget (``step >= total``); a run
    stopped by a signal or killed is not finished and resumes from its checkpoint.
    """

    command: str
    """The training command (``ppo``, ``pmnist``, ...)."""
    step: int
    """Progress in ``unit``: environment steps (RL) or examples (permuted MNIST)."""
    total: int
    """The run's budget in ``unit``."""
    unit: str = "steps"
    finished: bool = False
    metric: str = ""
    """What ``value`` is: ``return`` (mean of the latest episodes) or ``accuracy``."""
    value: float | None = None
    """The latest value of ``metric`` (``None`` before there is one)."""
    stopped_by: str | None = None
    """The signal that stopped the run (``SIGINT``, ``SIGTERM``), if one did."""
    pid: int = 0
    host: str = ""
    updated: float = 0.0
    """Unix time of the write."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Command-specific progress, e.g. ``{"task": 12, "tasks": 800}``."""


def read_run_status(run_dir: StrPath) -> RunStatus | None:
    """The ``status.json`` of a run directory, or ``None`` if it has none (or an unreadable one,
    e.g. written by another version)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        names = {f.name for f in dataclasses.fields(RunStatus)}
        return RunStatus(**{k: v for k, v in data.items() if k in names})
    except (OSError, ValueError, TypeError):
        return None


class RunStatusWriter:
    """Writes a run's ``status.json`` atomically, at most every ``every`` seconds unless forced.

    ::

        status = RunStatusWriter(run_dir, command="ppo", total=total_steps, metric="return")
        status.update(step, value)                    # cheap: throttled
        status.update(step, value, force=True)        # at checkpoints
        status.update(step, value, finished=step >= total, stopped_by=..., force=True)  # at exit
    """

    def __init__(
        self,
        run_dir: StrPath,
        *,
        command: str,
        total: int,
        unit: str = "steps",
        metric: str = "",
        every: float = 10.0,
    ) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.command, self.total, self.unit, self.metric = command, int(total), unit, metric
        self.every = every
        self._last = -math.inf
        self._host = socket.gethostname()

    def update(
        self,
        step: int,
        value: float | None = None,
        *,
        finished: bool = False,
        stopped_by: str | None = None,
        force: bool = False,
        **extra: Any,
    ) -> None:
        """Record progress; written when forced, finished, or ``every`` seconds after the last."""
        now = time.monotonic()
        if not (force or finished) and now - self._last < self.every:
            return
        self._last = now
        if value is not None and not math.isfinite(value):
            value = None
        status = RunStatus(
            command=self.command,
            step=int(step),
            total=self.total,
            unit=self.unit,
            finished=finished,
            metric=self.metric,
            value=None if value is None else float(value),
            stopped_by=stopped_by,
            pid=os.getpid(),
            host=self._host,
            updated=time.time(),
            extra=extra,
        )
        write_json_atomic(self.path, dataclasses.asdict(status))
