"""The conventions every command follows: exit codes, refusals, checked flags, stops.

Exit codes (the same for ``train ppo|sac|pmnist|...``, ``evaluate``, ``sweep`` and ``plot``):

=====  ==========================================================================================
0      done (a resumed run reached its budget; ``plot`` wrote its figures)
1      a failure that is not the input's fault (a bug: the traceback is printed)
2      bad input, refused before anything is written: bad flags or values (non-finite floats
       included), unknown env or dataset, a run directory that is a file, below a file, not
       writable, held by another live process, a finished run to resume, an unusable checkpoint
3      training diverged: a non-finite loss or weight; the message names the step, and the
       last good checkpoint is kept (never overwritten with the non-finite state)
130    stopped by SIGINT (Ctrl+C) after writing a checkpoint: ``--resume`` continues it
143    stopped by SIGTERM (``timeout``, Slurm, systemd) after writing a checkpoint
=====  ==========================================================================================

A command adopts them with :func:`run_command` and a few helpers::

    @finite_floats                      # every float field finite (and in its metadata range)
    @dataclass(frozen=True)
    class MyConfig:
        lr: float = 1e-3
        momentum: float = field(default=0.0, metadata={"range": (0.0, 1.0)})

    def prepare(config: MyConfig) -> Prepared:
        lock = claim_run_dir(config.run_dir, command="mine")   # cbp_rl.run.rundir: the lock
        state = manager.load_latest(required=True, fallback=config.resume_fallback)
        refuse_finished(lock.run_dir, done=state["step"], total=config.total, command="mine",
                        flag="--total-steps")
        ...

    def execute(prepared: Prepared) -> int:
        with GracefulStop() as stop:
            ...
            check_finite_losses({"train/loss": loss}, step=step, last_checkpoint=...)
            check_finite_weights({"net": net}, step=step, last_checkpoint=...)
        return stop_exit_code(stop.signal)      # 0, 130 or 143

    def main(argv: Sequence[str]) -> int:
        return run_command("train mine", lambda: parse(argv), prepare, execute)

:func:`run_command` prints refusals as ``error: train mine: ...`` (exit 2) and divergence as
``error: train mine: ... (exit 3)``, and releases the run directory's lock on return. Runs write
their command's name into ``config.json`` under :data:`COMMAND_KEY` (:func:`command_of` reads it
back), so resuming or evaluating a run with the wrong command names the right one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from cbp_rl.run.checkpoint import CheckpointError
from cbp_rl.run.rundir import RunDirectoryError, claims_released

__all__ = [
    "COMMAND_KEY",
    "COMMAND_KEYS",
    "EXIT_DIVERGED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "NonFiniteError",
    "UsageError",
    "available_memory",
    "check_at_least",
    "check_choice",
    "check_finite_losses",
    "check_finite_weights",
    "check_float_fields",
    "check_memory",
    "check_run_command",
    "check_run_flags",
    "command_of",
    "finite_floats",
    "flag_name",
    "refuse_finished",
    "report",
    "run_command",
    "stop_exit_code",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
COMMAND_KEY = "algorithm"
"""The ``config.json`` key naming the command that wrote a run (``ppo``, ``pmnist``, ``regression``,
...): every command writes it."""
COMMAND_KEYS = (COMMAND_KEY, "command")
"""The keys :func:`command_of` reads (``regression``, ``continual-imagenet`` and
``incremental-cifar`` runs written before they wrote :data:`COMMAND_KEY` say ``command``)."""

C = TypeVar("C")
T = TypeVar("T")


class UsageError(ValueError):
    """Bad command-line input: the command prints the message and exits 2."""


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or weight; the run stops (exit 3) without saving.

    Attributes:
        step: the step at which it was found.
        what: the losses or weights that were not finite.
        last_checkpoint: the step of the checkpoint kept, ``None`` if none was written.
    """

    def __init__(self, what: str, *, step: int, last_checkpoint: int | None, where: str = ""):
        self.what, self.step, self.last_checkpoint, self.where = what, step, last_checkpoint, where
        folder = f" (run directory {where})" if where else ""
        kept = (
            f"the last good checkpoint, at step {last_checkpoint}, is kept{folder}"
            if last_checkpoint is not None
            else f"no checkpoint had been written yet{folder}"
        )
        super().__init__(
            f"training diverged at step {step}: {what}. The run stopped without saving; {kept}. "
            "Lower the learning rate (or whatever made it diverge) and start a new run"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields, so that it crosses process boundaries (process pools, Ray).
        rebuild = functools.partial(
            type(self), step=self.step, last_checkpoint=self.last_checkpoint, where=self.where
        )
        return (rebuild, (self.what,))


# --------------------------------------------------------------------------- running a command


def run_command(
    command: str,
    parse: Callable[[], C],
    prepare: Callable[[C], T],
    execute: Callable[[T], int],
) -> int:
    """``execute(prepare(parse()))`` with the exit codes of the module docstring.

    ``command`` is the name messages give, e.g. ``"train ppo"`` or ``"evaluate"``.
    ``parse`` raising ``SystemExit`` (tyro: ``--help``, a malformed flag) returns its code;
    bad input from ``parse`` or ``prepare`` (``ValueError``, ``CheckpointError``,
    ``FileNotFoundError``, ``FileExistsError``, a busy or unwritable run directory) prints
    ``error: train COMMAND: message`` and returns 2; a :class:`NonFiniteError` from ``execute``
    returns 3. Locks taken with :func:`cbp_rl.run.rundir.claim_run_dir` are released on return.
    """
    with claims_released():
        try:
            config = parse()
            check_float_fields(config)
            prepared = prepare(config)
        except SystemExit as exit_:
            code = exit_.code
            return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
        except (ValueError, CheckpointError, FileNotFoundError, FileExistsError) as err:
            return report(command, err, EXIT_USAGE)
        try:
            return execute(prepared)
        except NonFiniteError as err:
            return report(command, err, EXIT_DIVERGED)
        except (CheckpointError, RunDirectoryError) as err:
            return report(command, err, EXIT_USAGE)


def report(command: str, err: BaseException | str, code: int) -> int:
    """Print ``error: <command>: <message>`` on stderr; returns ``code``."""
    print(f"error: {command}: {err}", file=sys.stderr, flush=True)
    return code


def stop_exit_code(stopped_by: signal.Signals | None) -> int:
    """0 for a run that ended by itself, 128 + the signal's number for one a signal stopped."""
    return EXIT_OK if stopped_by is None else 128 + int(stopped_by)


# --------------------------------------------------------------------------- run identity


def command_of(config: Mapping[str, Any]) -> str | None:
    """The command that wrote a run's ``config.json`` (``None`` if it does not say): its
    :data:`COMMAND_KEYS` entry. pmnist runs written before the key existed are recognised by
    their ``learner`` field."""
    for key in COMMAND_KEYS:
        name = config.get(key)
        if isinstance(name, str):
            return name
    return "pmnist" if "learner" in config and "examples_per_task" in config else None


def check_run_command(config: Mapping[str, Any], run_dir: Path, *, command: str) -> None:
    """Refuse (:class:`UsageError`) to resume a run that another command wrote, naming it."""
    written_by = command_of(config)
    if written_by == command:
        return
    if written_by is None:
        raise UsageError(
            f"--resume {run_dir}: its config.json names no command; resume it with the command "
            "that wrote it, or start a new run"
        )
    raise UsageError(
        f"--resume {run_dir}: that is a {written_by} run, not a {command} run; resume it with "
        f"`python -m cbp_rl.train {written_by} --resume {run_dir}`"
    )


def refuse_finished(run_dir: Path, *, done: int, total: int, command: str, flag: str) -> None:
    """Refuse (:class:`UsageError`) to resume a run that has done its whole budget."""
    if done >= total:
        raise UsageError(
            f"--resume {run_dir}: the {command} run is finished ({done:,} of {total:,} done); "
            f"raise {flag} to train it further"
        )


# --------------------------------------------------------------------------- float flags


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field: ``init_log_std`` -> ``--init-log-std``."""
    return "--" + field_name.replace("_", "-")


def check_choice(value: str, choices: Sequence[str], *, what: str) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s are {', '.join(choices)}")


def check_at_least(config: Any, names: Iterable[str], minimum: int) -> None:
    """Refuse a field of ``config`` (one of ``names``) below ``minimum``, naming its flag."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{flag_name(name)} must be >= {minimum}, got {value}")


def check_run_flags(*, checkpoint_every: int | None, threads: int | None) -> None:
    """Refuse a negative ``--checkpoint-every`` or a ``--threads`` below 1 (``None``: defaults)."""
    if checkpoint_every is not None and checkpoint_every < 0:
        raise ValueError(
            f"--checkpoint-every must be >= 0 (0: only at the end), got {checkpoint_every}"
        )
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")


def finite_floats(cls: type[C]) -> type[C]:
    """Class decorator for a config dataclass: its ``__post_init__`` first runs
    :func:`check_float_fields` on the class's own fields (nested dataclasses check theirs)."""
    own_post_init = getattr(cls, "__post_init__", None)

    def __post_init__(self: Any) -> None:
        check_float_fields(self, recursive=False)
        if own_post_init is not None:
            own_post_init(self)

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return cls


def check_float_fields(config: Any, *, recursive: bool = True) -> None:
    """Raise :class:`UsageError` naming the flag of any float field of a (nested) config
    dataclass that is not finite, or outside the field's ``metadata["range"]`` ``(low, high)``
    (inclusive; ``None`` for no bound). Floats in tuples (``--betas``) are checked too; a field
    with ``metadata={"finite": False}`` may be infinite."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if recursive:
                check_float_fields(value)
            continue
        for number in _floats(value):
            _check_float(field, number)


def _floats(value: Any) -> Iterable[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            if isinstance(item, float):
                yield item


def _check_float(field: dataclasses.Field[Any], value: float) -> None:
    flag = flag_name(field.name)
    if math.isnan(value) or (math.isinf(value) and field.metadata.get("finite", True)):
        raise UsageError(f"{flag} {value}: not a finite number; give a finite value")
    low, high = field.metadata.get("range", (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise UsageError(f"{flag} {value}: must be in {bounds}")


# --------------------------------------------------------------------------- divergence


def check_finite_losses(
    values: Mapping[str, float], *, step: int, last_checkpoint: int | None, where: str = ""
) -> None:
    """Raise :class:`NonFiniteError` if any value (a loss) is NaN or infinite."""
    bad = {key: value for key, value in values.items() if not math.isfinite(value)}
    if bad:
        shown = ", ".join(f"{key} = {value}" for key, value in sorted(bad.items()))
        raise NonFiniteError(shown, step=step, last_checkpoint=last_checkpoint, where=where)


def check_finite_weights(
    modules: Mapping[str, nn.Module | torch.Tensor],
    *,
    step: int,
    last_checkpoint: int | None,
    where: str = "",
) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter (or tensor) holding a NaN or
    infinity."""
    for name, module in modules.items():
        tensors = (
            [(name, module)]
            if isinstance(module, torch.Tensor)
            else [(f"{name}.{key}", p) for key, p in module.named_parameters()]
        )
        for key, tensor in tensors:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteError(
                    f"the weights {key} hold non-finite values",
                    step=step,
                    last_checkpoint=last_checkpoint,
                    where=where,
                )


# --------------------------------------------------------------------------- memory


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(estimate: int, *, what: str, fix: str, available: int | None = None) -> None:
    """Refuse (:class:`UsageError`) a run whose estimated memory exceeds what is available,
    and warn on stderr when it needs more than half of it."""
    available = available_memory() if available is None else available
    if available is None:
        return
    needed = f"{what} need about {_gib(estimate)} of memory"
    if estimate > available:
        raise UsageError(f"{needed}, but only {_gib(available)} is available: {fix}")
    if estimate > available // 2:
        print(f"warning: {needed} ({_gib(available)} available)", file=sys.stderr, flush=True)


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
