"""One online permuted-MNIST run: the task loop, logs, results file, checkpoints, exact resume.

A run directory holds::

    config.json                   the full configuration
    events.out.tfevents.*         TensorBoard: the mean over seeds of every per-seed scalar
    seed_<s>/events.out.tfevents.* TensorBoard: seed s (and seed_<s>/config.json)
    results.npz                   per seed, per task (cbp_rl.supervised.results)
    status.json                   progress: examples done, last task's accuracy, finished
    checkpoint.pt                 the latest checkpoint (and checkpoint.prev.pt)

TensorBoard steps are task numbers (1 = the first task). Tags: ``task/accuracy``,
``task/loss``, ``task/replacements/{i}`` (per finished task) and, at a task's start,
``plasticity/dead_units/{i}`` and ``/all``, ``plasticity/effective_rank/{i}`` and ``/mean``,
``plasticity/rank99/{i}``, ``plasticity/weight_magnitude/{i}``, ``/out`` and ``/all``.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cbp_rl.run.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    to_jsonable,
)
from cbp_rl.run.conventions import (
    COMMAND_KEY,
    check_finite_losses,
    check_finite_weights,
    check_memory,
    refuse_finished,
)
from cbp_rl.run.lifecycle import Log, Resumed, open_run, stderr_log, train_to_limit
from cbp_rl.run.logging import RunStatusWriter
from cbp_rl.run.rundir import claims_released
from cbp_rl.run.runtime import GracefulStop, Progress, resolve_device, torch_threads
from cbp_rl.supervised.autograd import PerSeedLearner, make_learner
from cbp_rl.supervised.config import RESUMABLE_CHANGES, PermutedMNISTConfig
from cbp_rl.supervised.data import ImageSet, load_images
from cbp_rl.supervised.engine import BatchedLearner
from cbp_rl.supervised.measures import unit_measures, weight_measures
from cbp_rl.supervised.results import RunResults
from cbp_rl.supervised.seedlogs import SeedLogs
from cbp_rl.supervised.stream import PermutedTasks, TaskPlan

COMMAND_NAME = "pmnist"
"""The command of these runs, ``python -m cbp_rl.train pmnist``."""
METRIC = "accuracy"
"""The performance measure: online accuracy, per task."""
UNIT = "examples"
"""What a run's budget counts."""


def budget(config: PermutedMNISTConfig) -> int:
    """A run's budget in :data:`UNIT`: every task's examples."""
    return config.tasks * config.examples_per_task


CHUNK_STEPS = 256
"""Updates whose inputs are gathered at once (chunks start at fixed offsets in a task, so a
resumed run feeds the engine tensors of the same layout)."""
PROBE_BYTES = 256 * 2**20
"""Memory budget of one group of seeds in the task-start probe."""


@dataclass(frozen=True)
class RunSummary:
    """What a call to :func:`run` did."""

    run_dir: Path
    tasks_done: int
    stopped: bool
    """Stopped early (signal or ``stop_at_examples``); resume with ``--resume run_dir``."""
    accuracy: np.ndarray
    """``[S, tasks_done]`` online accuracy per seed and task."""
    stopped_by: signal.Signals | None = None
    """The signal that stopped the run, if one did."""


def make_engine(
    config: PermutedMNISTConfig, device: torch.device
) -> BatchedLearner | PerSeedLearner:
    """The batched engine, or the per-seed autograd path for the field's methods."""
    return make_learner(
        config.network_spec(),
        config.learner_spec(),
        config.method_spec(),
        config.seed_list,
        window=config.optim.update_window,
        device=device,
    )


class SeedRunParts(Protocol):
    """What :class:`SeedRun`'s methods use of the run."""

    logs: SeedLogs | None

    @property
    def command(self) -> str: ...
    @property
    def loss_tag(self) -> str: ...
    @property
    def config(self) -> Any: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def engine(self) -> BatchedLearner | PerSeedLearner: ...
    @property
    def checkpoints(self) -> CheckpointManager: ...
    @property
    def examples_done(self) -> int: ...
    def log_step(self) -> int: ...
    def checkpoint_state(self) -> dict[str, Any]: ...
    def check_finite(self, losses: np.ndarray | None = None) -> None: ...
    def report_status(self, *, force: bool = False, stopped_by: str | None = None) -> None: ...


class SeedRun:
    """What the many-seed runs (this one and ``regression``'s) do alike: the root and per-seed
    logs, the check for non-finite values, the checkpoint's last entries. A mixin: its methods
    use what :class:`SeedRunParts` lists."""

    command = ""
    """The command of its runs (the ``config.json`` key)."""
    loss_tag = ""
    """The tag of the per-seed losses :meth:`check_finite` is given."""
    logs: SeedLogs | None

    def open_logs(self: SeedRunParts, resume_positions: list[dict[str, Any]] | None = None) -> None:
        """Open the root and per-seed TensorBoard logs (resuming: cut back to the checkpoint,
        from :meth:`log_step`)."""
        self.logs = SeedLogs(
            self.run_dir,
            {COMMAND_KEY: self.command, **to_jsonable(self.config)},
            self.config.seed_list,
            resume_step=None if resume_positions is None else self.log_step(),
            resume_positions=resume_positions,
        )

    def close(self: SeedRunParts) -> None:
        if self.logs is not None:
            self.logs.close()

    def check_finite(self: SeedRunParts, losses: np.ndarray | None = None) -> None:
        """Stop (``NonFiniteError``, nothing saved) on a non-finite loss or weight of any seed."""
        check_finite_seeds(
            self.engine,
            self.config.seed_list,
            losses,
            tag=self.loss_tag,
            step=self.examples_done,
            last_checkpoint=self.checkpoints.last_step,
            where=str(self.run_dir),
        )

    def save_checkpoint(self: SeedRunParts) -> None:
        """Checkpoint :meth:`checkpoint_state`, where the logs stand and the RNG state at the
        examples done (refused on a non-finite weight); then force the status."""
        self.check_finite()
        state = {
            **self.checkpoint_state(),
            "log_positions": [] if self.logs is None else self.logs.positions(),
            "rng": capture_rng_state(),
        }
        self.checkpoints.save(self.examples_done, state)
        self.report_status(force=True)


def check_finite_seeds(
    engine: BatchedLearner | PerSeedLearner,
    seeds: list[int],
    losses: np.ndarray | None,
    *,
    tag: str,
    step: int,
    last_checkpoint: int | None,
    where: str,
) -> None:
    """Stop a many-seed run (``NonFiniteError``) on a non-finite ``losses`` value (one per seed,
    named ``TAG, seed S``; ``None``: none to check) or a non-finite weight of the ``engine``."""
    if losses is not None:
        values = {f"{tag}, seed {s}": float(x) for s, x in zip(seeds, losses, strict=True)}
        check_finite_losses(values, step=step, last_checkpoint=last_checkpoint, where=where)
    tensors = {
        f"layer {i // 2} {'weight' if i % 2 == 0 else 'bias'}": t
        for i, t in enumerate(engine.parameters())
    }
    check_finite_weights(tensors, step=step, last_checkpoint=last_checkpoint, where=where)


class PermutedMNISTRun(SeedRun):
    """The state of one run and its task loop. Use :func:`run` unless you need the pieces."""

    command = COMMAND_NAME
    loss_tag = "task/loss"

    def __init__(self, config: PermutedMNISTConfig, images: ImageSet, run_dir: Path) -> None:
        self.config = config
        self.images = images
        self.run_dir = run_dir
        self.device = resolve_device(config.run.device)
        seeds = config.seed_list
        self.engine = make_engine(config, self.device)
        self.stream = PermutedTasks(
            torch.from_numpy(images.images).to(self.device),
            torch.from_numpy(images.labels).to(self.device),
            seeds,
            config.examples_per_task,
        )
        self.results = RunResults(
            seeds, config.tasks, config.network.depth, config.examples_per_task
        )
        self.task = 0
        self.position = 0
        """Examples of the current task done."""
        self.plan: TaskPlan | None = None
        self.replaced_before = self.engine.replacements()
        self.checkpoints = CheckpointManager(run_dir, every=config.checkpoint_interval)
        self.logs: SeedLogs | None = None
        self.status = RunStatusWriter(
            run_dir, command=COMMAND_NAME, total=budget(config), unit=UNIT, metric=METRIC
        )

    # ------------------------------------------------------------------ bookkeeping
    @property
    def examples_done(self) -> int:
        return self.task * self.config.examples_per_task + self.position

    def log_step(self) -> int:
        return self.task + 1

    def open_logs(self, resume_positions: list[dict[str, Any]] | None = None) -> None:
        super().open_logs(resume_positions)
        if resume_positions is not None and self.position > 0:
            self._log_measures(self.task)  # the resumed task's start measures were purged

    def _log(self, values: dict[str, np.ndarray], step: int) -> None:
        """Log ``{tag: [S] values}``: per seed, and their mean in the root log."""
        assert self.logs is not None
        self.logs.log(values, step)

    def _log_measures(self, task: int) -> None:
        measures = self.results.measures_of(task)
        values: dict[str, np.ndarray] = {}
        depth = self.config.network.depth
        for name in ("dead_units", "effective_rank", "rank99"):
            for layer in range(depth):
                values[f"plasticity/{name}/{layer}"] = measures[name][:, layer]
        values["plasticity/dead_units/all"] = measures["dead_units"].mean(1)
        values["plasticity/effective_rank/mean"] = measures["effective_rank"].mean(1)
        for layer in range(depth):
            values[f"plasticity/weight_magnitude/{layer}"] = measures["weight_magnitude"][:, layer]
        values["plasticity/weight_magnitude/out"] = measures["weight_magnitude"][:, depth]
        values["plasticity/weight_magnitude/all"] = measures["weight_magnitude_all"]
        self._log(values, task + 1)

    # ------------------------------------------------------------------ tasks
    def begin_task(self) -> None:
        """Draw the task and, when due, measure the network on its first examples."""
        self.plan = self.stream.next_task()
        every = self.config.measures.measure_every
        if every and self.task % every == 0:
            self.results.record_measures(self.task, self.measure(self.plan))
            self._log_measures(self.task)

    def measure(self, plan: TaskPlan) -> dict[str, np.ndarray]:
        """The task-start measures on the task's first ``probe_examples`` examples."""
        count = min(self.config.measures.probe_examples, self.config.examples_per_task)
        seeds = self.engine.num_seeds
        width = max(self.config.network.width, self.stream.pixels)
        per_seed = count * width * 4 * (self.config.network.depth + 1)
        group = max(1, min(seeds, PROBE_BYTES // per_seed))
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, seeds, group):
            index = slice(start, min(seeds, start + group))
            part = TaskPlan(plan.permutations[index], plan.orders[index])
            inputs, _ = self.stream.batch(part, 0, count)
            parts.append(unit_measures(self.engine.hidden_activations(inputs, index)))
        measures = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        measures.update(weight_measures(self.engine.weights))
        return measures

    def finish_task(self) -> None:
        correct, loss_sum, examples = self.engine.take_totals()
        replaced = self.engine.replacements()
        accuracy = correct.cpu().double().numpy() / examples
        loss = loss_sum.cpu().numpy() / examples
        self.check_finite(loss)
        per_task = (replaced - self.replaced_before).numpy()
        self.replaced_before = replaced
        self.results.record_task(self.task, accuracy, loss, per_task)
        values = {"task/accuracy": accuracy, "task/loss": loss}
        if self.engine.reinitializes:
            for layer in range(self.config.network.depth):
                values[f"task/replacements/{layer}"] = per_task[:, layer].astype(np.float64)
        self._log(values, self.task + 1)
        self.results.save(self.run_dir)
        self.task += 1
        self.position = 0
        self.plan = None
        self.report_status()

    def train_until(self, limit: int, stop: GracefulStop, progress: Progress) -> None:
        """Train until ``limit`` examples in all, the end of the run, or a stop request.

        The engine takes a task's steps in windows that start at fixed places in the task;
        stops and checkpoints fall between windows, so a resumed run computes the same floats.
        """
        config = self.config
        batch, per_task = config.batch_size, config.examples_per_task
        window = self.engine.window_steps(batch) * batch
        chunk = -(-CHUNK_STEPS * batch // window) * window
        while self.task < config.tasks and not stop.requested:
            if self.plan is None:
                if self.examples_done + min(window, per_task) > limit:
                    return
                self.begin_task()
            plan = self.plan
            assert plan is not None
            loaded, inputs, labels = -1, None, None
            while self.position < per_task and not stop.requested:
                end = min(per_task, self.position + window)
                if self.examples_done + end - self.position > limit:
                    break
                start = self.position // chunk * chunk
                if start != loaded:
                    count = min(chunk, per_task - start)
                    inputs, labels = self.stream.batch(plan, start, count)
                    loaded = start
                assert inputs is not None and labels is not None
                rows = slice(self.position - start, end - start)
                self.engine.train(inputs[:, rows], labels[:, rows], batch)
                progress.update(end - self.position, task=self.task + 1, acc=self._accuracy())
                self.position = end
                if self.checkpoints.due(self.examples_done):
                    break
            if self.position >= per_task:
                self.finish_task()
            if self.checkpoints.due(self.examples_done) or stop.requested:
                self.save_checkpoint()
            if self.position and self.examples_done + min(window, per_task) > limit:
                return

    def report_status(self, *, force: bool = False, stopped_by: str | None = None) -> None:
        """Update ``status.json``: examples done and the latest task's mean accuracy."""
        done = self.results.tasks_done
        accuracy = float(self.results.arrays["accuracy"][:, done - 1].mean()) if done else None
        self.status.update(
            self.examples_done,
            accuracy,
            finished=self.task >= self.config.tasks,
            stopped_by=stopped_by,
            force=force,
            task=self.task,
            tasks=self.config.tasks,
        )

    def _accuracy(self) -> str:
        examples = self.engine.examples
        if not examples:
            return "-"
        return f"{float(self.engine.correct.double().mean()) / examples:.3f}"

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "config": to_jsonable(self.config),
            "data": self._data_identity(),
            "task": self.task,
            "position": self.position,
            "plan": None
            if plan is None
            else {"permutations": plan.permutations.cpu(), "orders": plan.orders.cpu()},
            "engine": self.engine.state_dict(),
            "stream": self.stream.state_dict(),
            "results": self.results.state_dict(),
            "replaced_before": self.replaced_before,
        }

    def _data_identity(self) -> dict[str, Any]:
        return {
            "dataset": self.images.dataset,
            "split": self.images.split,
            "md5": self.images.md5,
            "examples": len(self.images.images),
        }

    def restore(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Load a checkpoint's state; returns the log positions to resume the logs from."""
        saved = state["data"]
        if saved != self._data_identity():
            raise CheckpointError(
                f"the run was trained on {saved}, but the data found now is "
                f"{self._data_identity()}",
                self.checkpoints.path,
                "point --data-dir at the same files the run started with",
            )
        self.engine.load_state_dict(state["engine"])
        self.stream.load_state_dict(state["stream"])
        self.results = RunResults.from_state_dict(state["results"])
        self.results.grow(self.config.tasks)
        self.task, self.position = int(state["task"]), int(state["position"])
        plan = state["plan"]
        self.plan = None
        if plan is not None:
            self.plan = TaskPlan(
                plan["permutations"].to(self.device), plan["orders"].to(self.device)
            )
        self.replaced_before = state["replaced_before"]
        positions: list[dict[str, Any]] = state["log_positions"]
        return positions


def prepare(config: PermutedMNISTConfig, log: Log = stderr_log) -> PermutedMNISTRun:
    """Claim the run directory (:func:`~cbp_rl.run.rundir.claim_run_dir`), check a resumed
    run's checkpoint, load the data and build (or restore) the run and its logs."""
    check_memory(
        estimated_memory(config),
        what=f"{config.seeds} seed(s) of {config.network.depth} x {config.network.width} units",
        fix="choose a smaller --width or fewer --seeds",
    )

    def check(resumed: Resumed) -> None:
        total, done = budget(config), int(resumed.state["step"])
        if total < done:
            raise ValueError(
                f"--tasks {config.tasks} is fewer than the tasks the run has already done "
                f"({done // config.examples_per_task}); give at least as many"
            )
        refuse_finished(
            resumed.run_dir, done=done, total=total, command=COMMAND_NAME, flag="--tasks"
        )

    experiment, positions = open_run(
        config.run,
        lambda run_dir: PermutedMNISTRun(config, _load_images(config, log), run_dir),
        command=COMMAND_NAME,
        label=config.label(),
        saved_config=to_jsonable(config),
        resumable=RESUMABLE_CHANGES,
        every=config.checkpoint_interval,
        check=check,
    )
    experiment.open_logs(positions)
    if config.run.resume is not None:
        log(
            f"resuming {experiment.run_dir} at task {experiment.task + 1}, example "
            f"{experiment.position:,} of {config.examples_per_task:,}"
        )
    return experiment


def _load_images(config: PermutedMNISTConfig, log: Log) -> ImageSet:
    images = load_images(
        config.data.dataset,
        config.data.data_dir,
        download=config.data.download,
        verify=config.data.verify_data,
    )
    log(images.note)
    return images


def estimated_memory(config: PermutedMNISTConfig) -> int:
    """Bytes a run needs, roughly: per seed, the weights four times over (values, update
    buffers, optimizer or utility state) and one chunk of inputs and activations."""
    width, depth = config.network.width, config.network.depth
    pixels = 28 * 28
    weights = (pixels + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * 10
    chunk = CHUNK_STEPS * config.batch_size * (pixels + depth * width)
    probe = min(config.measures.probe_examples, config.examples_per_task) * width * depth
    return config.seeds * 4 * (4 * weights + 2 * chunk) + 4 * min(probe, PROBE_BYTES)


def run(
    config: PermutedMNISTConfig,
    *,
    stop_at_examples: int | None = None,
    log: Log = stderr_log,
) -> RunSummary:
    """Train (or resume) a run; returns where it ended (:func:`prepare`, then :func:`train`).

    ``stop_at_examples`` stops at the last window boundary (``engine.window_steps`` steps)
    at or before that many examples in all, counting from the run's start, and saves a
    checkpoint, as a signal would: resume with ``run.resume``. The run directory is locked
    until it returns.
    """
    with claims_released(), torch_threads(config.run.threads):
        return train(prepare(config, log), stop_at_examples=stop_at_examples, log=log)


def train(
    experiment: PermutedMNISTRun, *, stop_at_examples: int | None = None, log: Log = stderr_log
) -> RunSummary:
    """Run a prepared experiment to its end, a stop signal or ``stop_at_examples``.

    Raises :class:`~cbp_rl.run.conventions.NonFiniteError` (and writes no checkpoint) when a loss
    or weight becomes non-finite.
    """
    config = experiment.config
    total = budget(config)
    limit = total if stop_at_examples is None else min(total, stop_at_examples)
    stopped_by = train_to_limit(
        experiment,
        done=lambda: experiment.examples_done,
        total=total,
        limit=limit,
        progress=config.run.progress,
        desc=f"pmnist {config.learner}",
    )
    stopped = experiment.task < config.tasks
    signal_name = None if stopped_by is None else stopped_by.name
    done = experiment.results.tasks_done
    accuracy = experiment.results.arrays["accuracy"][:, :done]
    if stopped:
        by = f"stopped by {signal_name}" if signal_name else "stopped"
        log(
            f"{by} at task {experiment.task + 1}, example {experiment.position:,}: "
            f"resume with --resume {experiment.run_dir}"
        )
    else:
        last = accuracy[:, -1].mean() if done else math.nan
        log(f"done: {done} tasks in {experiment.run_dir} (last task accuracy {last:.4f})")
    return RunSummary(experiment.run_dir, done, stopped, accuracy, stopped_by)


__all__ = [
    "PermutedMNISTRun",
    "RunSummary",
    "SeedRun",
    "SeedRunParts",
    "check_finite_seeds",
    "estimated_memory",
    "prepare",
    "run",
    "train",
]
