"""What the two convolutional commands share: run flags, results file, the learner, and the
task/epoch loop with exact resume (their command lines are :mod:`cbp_rl.supervised.command`'s).

A run is a sequence of tasks; each task is a number of epochs over its training set in
minibatches, in an order drawn anew each epoch from the run's own generator. Stops (SIGINT,
SIGTERM) take effect between minibatches and save a checkpoint holding the epoch's order and
position, so a resumed run computes the same floats as an uninterrupted one.
"""

from __future__ import annotations

import math
import re
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from cbp_rl.run.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    numpy_generator_state,
    restore_numpy_generator,
    to_jsonable,
)
from cbp_rl.run.conventions import (
    COMMAND_KEY,
    check_finite_losses,
    check_finite_weights,
    check_run_flags,
    finite_floats,
    flag_name,
    refuse_finished,
)
from cbp_rl.run.lifecycle import open_run, stderr_log, train_to_limit
from cbp_rl.run.logging import RunLogger, RunStatusWriter
from cbp_rl.run.rundir import claims_released
from cbp_rl.run.runtime import GracefulStop, Progress, resolve_device, torch_threads
from cbp_rl.run.seeding import derive_seed
from cbp_rl.supervised.conv_learner import ConvLearner, StepResult
from cbp_rl.supervised.results import RESULTS_FILE, load_results, save_npz

DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


@finite_floats
@dataclass(frozen=True)
class ConvRunConfig:
    """Run directory, checkpoints and machine."""

    run_dir: Path | None = None
    """Directory for this run's files; default runs/<command>/<learner>-s<seed>-<time>."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint (other flags default to the
    saved ones)."""
    resume_fallback: bool = False
    """With --resume: if the latest checkpoint is unreadable, use the one before it."""
    checkpoint_every: int | None = None
    """Epochs between checkpoints (default: the command's); 0: only at the end and on a stop
    signal."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto (these are GPU workloads)."""
    threads: int | None = None
    """torch CPU threads; None: torch's choice."""
    progress: bool = True
    """Show a progress bar of minibatch steps (on a terminal)."""

    def __post_init__(self) -> None:
        check_run_flags(checkpoint_every=self.checkpoint_every, threads=self.threads)
        if not DEVICE_NAME.fullmatch(self.device):
            raise ValueError(
                f"unknown device {self.device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )


# --------------------------------------------------------------------------- results


class ConvResults:
    """Named per-task (and per-epoch) arrays, saved as ``results.npz`` with its ``kind``."""

    def __init__(
        self,
        kind: str,
        arrays: dict[str, np.ndarray],
        tasks_done: int = 0,
        class_names: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.arrays = arrays
        self.tasks_done = tasks_done
        self.class_names = [str(n) for n in class_names]

    @classmethod
    def empty(
        cls, kind: str, shapes: dict[str, tuple[int, ...]], class_names: Sequence[str] = ()
    ) -> ConvResults:
        arrays = {name: np.full(shape, np.nan) for name, shape in shapes.items()}
        return cls(kind, arrays, class_names=class_names)

    def set(self, name: str, index: Any, value: Any) -> None:
        self.arrays[name][index] = value

    def save(self, run_dir: Path) -> Path:
        payload = {
            **self.arrays,
            "kind": np.array(self.kind),
            "tasks_done": np.array(self.tasks_done),
            "class_names": np.array(self.class_names, dtype=str),
        }
        return save_npz(run_dir, payload)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tasks_done": self.tasks_done,
            "class_names": list(self.class_names),
            "arrays": {
                k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.arrays.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ConvResults:
        arrays = {k: v.numpy().copy() for k, v in state["arrays"].items()}
        names = [str(n) for n in state["class_names"]]
        return cls(str(state["kind"]), arrays, int(state["tasks_done"]), names)


load_conv_results = load_results
"""The arrays of a ``results.npz`` (a run directory or the file)."""


# --------------------------------------------------------------------------- the loop


class TaskEpochRun(ABC):
    """The state of one run and its task / epoch / minibatch loop."""

    command: str = ""

    def __init__(self, config: Any, run_dir: Path, *, every: int, seed: int) -> None:
        self.config = config
        self.run_dir = run_dir
        self.device = resolve_device(config.run.device)
        self.task = 0
        self.epoch = 0
        """Epochs of the current task done."""
        self.position = 0
        """Minibatches of the current epoch done."""
        self.task_started = False
        self.order: torch.Tensor | None = None
        self.totals = [0.0, 0, 0]
        self.shuffle = np.random.default_rng(seed)
        self.checkpoints = CheckpointManager(run_dir)
        self.every = every
        self.logger: RunLogger | None = None
        self.status = RunStatusWriter(
            run_dir,
            command=self.command,
            total=self.num_tasks() * self.epochs_per_task(),
            unit="epochs",
            metric="accuracy",
        )
        self.steps_done = 0

    # ------------------------------------------------------------- the experiment's part
    learner: ConvLearner
    results: ConvResults

    def num_tasks(self) -> int:
        """The config's ``tasks``."""
        return int(self.config.tasks)

    @abstractmethod
    def epochs_per_task(self) -> int: ...

    def batch_size(self) -> int:
        """The config's ``batch_size``."""
        return int(self.config.batch_size)

    @abstractmethod
    def train_size(self, task: int) -> int:
        """Training examples of ``task``."""

    @abstractmethod
    def load_task(self) -> None:
        """Make the current task's data ready (no other effect: it also runs on resume)."""

    @abstractmethod
    def start_task(self) -> None:
        """What happens once at the start of a task: measures, head or network resets."""

    @abstractmethod
    def begin_epoch(self) -> None: ...

    @abstractmethod
    def train_batch(self, indices: torch.Tensor) -> StepResult: ...

    @abstractmethod
    def end_epoch(self, train: StepResult) -> None: ...

    @abstractmethod
    def end_task(self) -> None: ...

    @abstractmethod
    def extra_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_extra_state(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def log_step(self) -> int:
        """The TensorBoard step of the next log entries (for resuming the logs)."""

    @abstractmethod
    def relog_after_resume(self) -> None:
        """Log again what the purge of the resumed step removed."""

    @abstractmethod
    def data_identity(self) -> dict[str, Any]: ...

    # ------------------------------------------------------------- bookkeeping
    def steps_in_epoch(self, task: int) -> int:
        return -(-self.train_size(task) // self.batch_size())

    def total_steps(self) -> int:
        return sum(self.steps_in_epoch(t) for t in range(self.num_tasks())) * (
            self.epochs_per_task()
        )

    def epochs_done(self) -> int:
        return self.task * self.epochs_per_task() + self.epoch

    def log(self, values: dict[str, float], step: int) -> None:
        assert self.logger is not None
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        if finite:
            self.logger.scalars(finite, step)

    def open_logs(self, position: dict[str, Any] | None = None) -> None:
        resume_step = None if position is None else self.log_step()
        self.logger = RunLogger(
            self.run_dir,
            {COMMAND_KEY: self.command, **to_jsonable(self.config)},
            resume_step=resume_step,
            resume_position=position,
        )
        if position is not None:
            self.relog_after_resume()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def report_status(self, *, force: bool = False, stopped_by: str | None = None) -> None:
        done = self.results.tasks_done
        self.status.update(
            self.epochs_done(),
            self.last_accuracy(),
            finished=self.task >= self.num_tasks(),
            stopped_by=stopped_by,
            force=force,
            task=self.task,
            tasks=self.num_tasks(),
            tasks_done=done,
        )

    def last_accuracy(self) -> float | None:
        """The test accuracy of the last task done (``None`` before the first's end)."""
        done = self.results.tasks_done
        return float(self.results.arrays["task_test_accuracy"][done - 1]) if done else None

    def accuracy_text(self) -> str:
        """The running training accuracy of the epoch, for the progress bar."""
        _, correct, examples = self.totals
        return f"{correct / examples:.3f}" if examples else "-"

    def record_measures(self, measures: dict[str, Any]) -> None:
        """Keep the task-start ``measures`` that the results have arrays for."""
        for name, values in measures.items():
            if name in self.results.arrays:
                self.results.set(name, self.task, values)

    def record_replacements(self, before: list[int]) -> list[int]:
        """Keep the units CBP replaced per layer since ``before`` (its counts at the task's
        start) as this task's; returns them (``[]`` without CBP, and the task's row is 0)."""
        now = self.learner.replacements()
        if not now:
            self.results.arrays["replacements"][self.task] = 0
            return []
        per_task = [a - b for a, b in zip(now, before, strict=True)]
        self.results.arrays["replacements"][self.task] = per_task
        return per_task

    # ------------------------------------------------------------- the loop
    def train_until(self, limit: int, stop: GracefulStop, progress: Progress) -> None:
        """Train until ``limit`` minibatch steps in all, the end, or a stop request."""
        while self.task < self.num_tasks() and not stop.requested:
            if not self.task_started:
                self.load_task()
                self.start_task()
                self.task_started = True
            if self.order is None:
                self.begin_epoch()
                size = self.train_size(self.task)
                self.order = torch.from_numpy(self.shuffle.permutation(size))
            steps, batch = self.steps_in_epoch(self.task), self.batch_size()
            while self.position < steps and not stop.requested and self.steps_done < limit:
                indices = self.order[self.position * batch : (self.position + 1) * batch]
                result = self.train_batch(indices)
                self.check_finite(result.loss_sum, step=self.steps_done + 1)
                self.totals[0] += result.loss_sum
                self.totals[1] += result.correct
                self.totals[2] += result.examples
                self.position += 1
                self.steps_done += 1
                progress.update(1, task=self.task + 1, acc=self.accuracy_text())
            if self.position < steps:
                return
            loss, correct, examples = self.totals
            self.end_epoch(StepResult(float(loss), int(correct), int(examples)))
            self.epoch += 1
            self.position, self.order, self.totals = 0, None, [0.0, 0, 0]
            if self.epoch == self.epochs_per_task():
                self.end_task()
                self.results.tasks_done = self.task + 1
                self.results.save(self.run_dir)
                self.task += 1
                self.epoch = 0
                self.task_started = False
                self.report_status()
            if self.every and self.epochs_done() % self.every == 0:
                self.save_checkpoint()

    def check_finite(self, loss: float | None = None, *, step: int | None = None) -> None:
        """Stop (``NonFiniteError``, nothing saved) on a non-finite loss or weight."""
        step = self.steps_done if step is None else step
        where, last = str(self.run_dir), self.checkpoints.last_step
        if loss is not None:
            check_finite_losses({"train/loss": loss}, step=step, last_checkpoint=last, where=where)
        else:
            nets = {"net": self.learner.net}
            check_finite_weights(nets, step=step, last_checkpoint=last, where=where)

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        assert self.logger is not None
        self.check_finite()
        state = {
            "config": to_jsonable(self.config),
            "data": self.data_identity(),
            "task": self.task,
            "epoch": self.epoch,
            "position": self.position,
            "task_started": self.task_started,
            "order": self.order,
            "totals": [float(self.totals[0]), int(self.totals[1]), int(self.totals[2])],
            "shuffle": numpy_generator_state(self.shuffle),
            "learner": self.learner.state_dict(),
            "results": self.results.state_dict(),
            "extra": self.extra_state(),
            "log_position": self.logger.position(),
            "rng": capture_rng_state(),
        }
        self.checkpoints.save(self.steps_done, state)
        self.results.save(self.run_dir)
        self.report_status(force=True)

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        saved, now = state["data"], self.data_identity()
        if saved != now:
            raise CheckpointError(
                f"the run was trained on {saved}, but the data found now is {now}",
                self.checkpoints.path,
                "point --data-dir at the same files the run started with",
            )
        self.task, self.epoch = int(state["task"]), int(state["epoch"])
        self.position = int(state["position"])
        self.task_started = bool(state["task_started"])
        self.order = state["order"]
        loss, correct, examples = state["totals"]
        self.totals = [float(loss), int(correct), int(examples)]
        restore_numpy_generator(self.shuffle, state["shuffle"])
        self.learner.load_state_dict(state["learner"])
        self.results = ConvResults.from_state_dict(state["results"])
        self.load_extra_state(state["extra"])
        self.steps_done = int(state["step"])
        if self.task_started:
            self.load_task()
        position: dict[str, Any] = state["log_position"]
        return position


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    tasks_done: int
    stopped: bool
    stopped_by: signal.Signals | None = None
    """The signal that stopped the run (``None``: it ended by itself or at ``stop_at_steps``)."""


RunT = TypeVar("RunT", bound=TaskEpochRun)


def check_conv_flags(config: Any, learners: Sequence[str], positive: Sequence[str]) -> None:
    """The checks the conv commands share: a known ``--learner``, the ``positive`` counts >= 1,
    ``--seed`` and ``--measure-every`` >= 0, ``--dormant-threshold`` in [0, 1]."""
    if config.learner not in learners:
        raise ValueError(f"unknown learner {config.learner!r}; valid: {', '.join(learners)}")
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{flag_name(name)} must be >= 1")
    if config.seed < 0 or config.measure_every < 0:
        raise ValueError("--seed and --measure-every must be >= 0")
    if not 0 <= config.dormant_threshold <= 1:
        raise ValueError("--dormant-threshold must be in [0, 1]")


def make_learner(
    net: nn.Module, config: Any, cbp_options: Mapping[str, Any] | None = None
) -> ConvLearner:
    """The learner ``config`` asks for on ``net``: its SGD and noise, and continual backprop for
    learner cbp (with ``cbp_options``), seeded from ``config.seed``."""
    return ConvLearner(
        net,
        config.sgd(),
        noise_seed=derive_seed(config.seed, "noise"),
        cbp=config.cbp.to_cbp_config() if config.learner == "cbp" else None,
        cbp_seed=derive_seed(config.seed, "cbp"),
        cbp_options=cbp_options or {},
    )


def prepare(
    config: Any,
    make: Callable[[Path], RunT],
    *,
    command: str,
    label: str,
    resumable: Sequence[str],
    budget_flag: str = "--tasks",
) -> RunT:
    """Claim the run directory (:func:`~cbp_rl.run.rundir.claim_run_dir`) and build a fresh
    run, or restore the one in ``config.run.resume`` (refused when it is finished)."""
    try:
        resolve_device(config.run.device)
    except RuntimeError as err:  # CUDA asked for but absent: bad input, not a crash
        raise ValueError(str(err)) from None
    experiment, position = open_run(
        config.run,
        make,
        command=command,
        label=label,
        saved_config=to_jsonable(config),
        resumable=resumable,
    )
    if config.run.resume is not None:
        refuse_finished(
            experiment.run_dir,
            done=experiment.task,
            total=experiment.num_tasks(),
            command=command,
            flag=budget_flag,
        )
    experiment.open_logs(position)
    if config.run.resume is not None:
        stderr_log(
            f"resuming {experiment.run_dir} at task {experiment.task + 1}, epoch "
            f"{experiment.epoch + 1}, step {experiment.position} of the epoch"
        )
    return experiment


def run_loop(
    experiment: TaskEpochRun, *, stop_at_steps: int | None = None, desc: str | None = None
) -> RunSummary:
    """Train a prepared run to its end (or ``stop_at_steps`` minibatches, or a signal); saves a
    checkpoint when it stops and always leaves ``results.npz`` current. ``desc`` names the
    progress bar (default: the command and the learner)."""
    config = experiment.config
    if desc is None:
        desc = f"{experiment.command} {config.learner}"
    total = experiment.total_steps()
    limit = total if stop_at_steps is None else min(total, stop_at_steps)
    with torch_threads(config.run.threads):
        stopped_by = train_to_limit(
            experiment,
            done=lambda: experiment.steps_done,
            total=total,
            limit=limit,
            progress=config.run.progress,
            desc=desc,
        )
    stopped = experiment.task < experiment.num_tasks()
    done = experiment.results.tasks_done
    if stopped:
        stderr_log(
            f"stopped at task {experiment.task + 1}, epoch {experiment.epoch + 1}: resume with "
            f"--resume {experiment.run_dir}"
        )
    else:
        stderr_log(f"done: {done} tasks in {experiment.run_dir}")
    return RunSummary(experiment.run_dir, done, stopped, stopped_by)


def run_prepared(
    prepare_run: Callable[[Any], TaskEpochRun], config: Any, stop_at_steps: int | None = None
) -> RunSummary:
    """``run_loop(prepare_run(config))`` holding the run directory's lock until it returns."""
    with claims_released():
        return run_loop(prepare_run(config), stop_at_steps=stop_at_steps)


__all__ = [
    "RESULTS_FILE",
    "ConvResults",
    "ConvRunConfig",
    "RunSummary",
    "TaskEpochRun",
    "check_conv_flags",
    "load_conv_results",
    "make_learner",
    "prepare",
    "run_loop",
    "run_prepared",
]
