"""One slowly-changing regression run: the example loop, bins, logs, checkpoints, exact resume.

A run directory holds::

    config.json                    the full configuration ("algorithm": "regression")
    events.out.tfevents.*          TensorBoard: the mean over seeds of every per-seed scalar
    seed_<s>/events.out.tfevents.* TensorBoard: seed s (and seed_<s>/config.json)
    results.npz                    per seed, per bin (cbp_rl.supervised.results.BinnedResults)
    status.json                    progress: examples done, the last bin's error, finished
    checkpoint.pt                  the latest checkpoint (and checkpoint.prev.pt)

TensorBoard steps are examples (at each bin's end). Tags: ``bin/error`` (mean squared error
over the bin), ``bin/replacements`` (cbp), and the hidden layer's ``plasticity/dead_units``,
``plasticity/effective_rank``, ``plasticity/weight_magnitude`` and, for the output layer,
``plasticity/weight_magnitude/out``.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbp_rl.run.checkpoint import (
    CheckpointManager,
    restore_torch_generator,
    to_jsonable,
    torch_generator_state,
)
from cbp_rl.run.conventions import (
    COMMAND_KEY,
    refuse_finished,
)
from cbp_rl.run.lifecycle import Log, Resumed, open_run, stderr_log, train_to_limit
from cbp_rl.run.logging import RunStatusWriter
from cbp_rl.run.rundir import claims_released
from cbp_rl.run.runtime import GracefulStop, Progress, resolve_device, torch_threads
from cbp_rl.supervised.autograd import make_learner
from cbp_rl.supervised.experiment import SeedRun
from cbp_rl.supervised.measures import unit_measures, weight_measures
from cbp_rl.supervised.regression_config import RESUMABLE_CHANGES, RegressionConfig
from cbp_rl.supervised.regression_problem import SlowlyChangingInputs, TargetNetwork
from cbp_rl.supervised.results import BinnedResults
from cbp_rl.supervised.seedlogs import SeedLogs
from cbp_rl.supervised.stream import generators_for

NAME = "regression"
CHUNK = 1000
"""Examples drawn and trained at once; chunks start at fixed offsets in each bin, and stops
and checkpoints fall between chunks, so a resumed run computes the same floats."""


def config_json(config: RegressionConfig) -> dict[str, Any]:
    """What ``config.json`` holds: the command's name and every field."""
    return {COMMAND_KEY: NAME, **to_jsonable(config)}


@dataclass(frozen=True)
class RunSummary:
    """What a call to :func:`run` did."""

    run_dir: Path
    bins_done: int
    stopped: bool
    """Stopped early (signal or ``stop_at_examples``); resume with ``--resume run_dir``."""
    errors: np.ndarray
    """``[S, bins_done]`` mean squared error per seed and bin."""
    stopped_by: signal.Signals | None = None
    """The signal that stopped the run (``None``: it ended by itself or at ``stop_at_examples``)."""


class RegressionRun(SeedRun):
    """The state of one run and its loop. Use :func:`run` unless you need the pieces."""

    command = NAME
    loss_tag = "bin/error"

    def __init__(self, config: RegressionConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.device = resolve_device(config.run.device)
        seeds = config.seed_list
        problem = config.problem.spec()
        self.engine = make_learner(
            config.network_spec(),
            config.learner_spec(),
            config.method_spec(),
            seeds,
            loss="squared_error",
            device=self.device,
        )
        self.target = TargetNetwork(problem, seeds)
        self.stream = SlowlyChangingInputs(problem, seeds)
        self.probe_generators = generators_for(seeds, "probe")
        self.results = BinnedResults(seeds, config.bins, config.bin_size)
        self.examples_done = 0
        self.replaced_before = self.engine.replacements()
        self.checkpoints = CheckpointManager(run_dir, every=config.run.checkpoint_every)
        self.logs: SeedLogs | None = None
        self.status = RunStatusWriter(
            run_dir, command=NAME, total=config.examples, unit="examples", metric="error"
        )

    # ------------------------------------------------------------------ logs
    def log_step(self) -> int:
        return self.examples_done + 1

    # ------------------------------------------------------------------ the loop
    def train_until(self, limit: int, stop: GracefulStop, progress: Progress) -> None:
        """Train until ``limit`` examples in all (rounded down to a chunk boundary), the end of
        the run, or a stop request."""
        bin_size = self.config.bin_size
        while self.examples_done < self.config.examples and not stop.requested:
            in_bin = self.examples_done % bin_size
            count = min(CHUNK - in_bin % CHUNK, bin_size - in_bin)
            if self.examples_done + count > limit:
                return
            inputs = self.stream.next(count)  # drawn and labelled on the CPU
            targets = self.target(inputs)
            self.engine.train(inputs.to(self.device), targets.to(self.device))
            self.examples_done += count
            progress.update(count, error=self._running_error())
            if self.examples_done % bin_size == 0:
                self.finish_bin()
            if self.checkpoints.due(self.examples_done):
                self.save_checkpoint()

    def finish_bin(self) -> None:
        """Record the bin's error and the hidden layer's measures; log and save them."""
        _, loss_sum, examples = self.engine.take_totals()
        errors = loss_sum.cpu().numpy() / examples
        self.check_finite(errors)
        replaced = self.engine.replacements()
        per_bin = (replaced - self.replaced_before).sum(1).numpy().astype(np.float64)
        self.replaced_before = replaced
        values = {"errors": errors, "replacements": per_bin, **self.measure()}
        index = self.examples_done // self.config.bin_size - 1
        self.results.record(index, values)
        tags = {
            "bin/error": errors,
            "plasticity/dead_units": values["dead_units"],
            "plasticity/effective_rank": values["effective_rank"],
            "plasticity/weight_magnitude": values["weight_magnitude"],
            "plasticity/weight_magnitude/out": values["weight_magnitude_out"],
        }
        if self.engine.reinitializes:
            tags["bin/replacements"] = per_bin
        assert self.logs is not None
        self.logs.log(tags, self.examples_done)
        self.results.save(self.run_dir)
        self.report_status()

    def measure(self) -> dict[str, np.ndarray]:
        """The hidden layer's measures on ``probe_examples`` inputs of the current input
        distribution (NaN without a hidden layer)."""
        seeds = self.engine.num_seeds
        nan = np.full(seeds, np.nan)
        weights = weight_measures(self.engine.weights)["weight_magnitude"]
        if self.engine.depth == 0:
            return {
                "dead_units": nan,
                "effective_rank": nan,
                "weight_magnitude": nan,
                "weight_magnitude_out": weights[:, -1],
            }
        probe = self.stream.sample_current(
            self.config.measures.probe_examples, self.probe_generators
        )
        units = unit_measures(self.engine.hidden_activations(probe.to(self.device)))
        return {
            "dead_units": units["dead_units"][:, 0],
            "effective_rank": units["effective_rank"][:, 0],
            "weight_magnitude": weights[:, 0],
            "weight_magnitude_out": weights[:, -1],
        }

    def _running_error(self) -> str:
        examples = self.engine.examples
        if not examples:
            return "-"
        return f"{float(self.engine.loss_sum.mean()) / examples:.3f}"

    def report_status(self, *, force: bool = False, stopped_by: str | None = None) -> None:
        done = self.results.bins_done
        error = float(self.results.arrays["errors"][:, done - 1].mean()) if done else None
        self.status.update(
            self.examples_done,
            error,
            finished=self.examples_done >= self.config.examples,
            stopped_by=stopped_by,
            force=force,
            bins=done,
        )

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "config": config_json(self.config),
            "examples_done": self.examples_done,
            "engine": self.engine.state_dict(),
            "stream": self.stream.state_dict(),
            "probe": [torch_generator_state(g) for g in self.probe_generators],
            "results": self.results.state_dict(),
            "replaced_before": self.replaced_before,
        }

    def restore(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Load a checkpoint's state; returns the log positions to resume the logs from."""
        self.engine.load_state_dict(state["engine"])
        self.stream.load_state_dict(state["stream"])
        for generator, saved in zip(self.probe_generators, state["probe"], strict=True):
            restore_torch_generator(generator, saved)
        self.results = BinnedResults.from_state_dict(state["results"])
        self.results.grow(self.config.bins)
        self.examples_done = int(state["examples_done"])
        self.replaced_before = state["replaced_before"]
        positions: list[dict[str, Any]] = state["log_positions"]
        return positions


def prepare(config: RegressionConfig, log: Log = stderr_log) -> RegressionRun:
    """Claim the run directory (:func:`~cbp_rl.run.rundir.claim_run_dir`), check a resumed
    run's checkpoint and build (or restore) the run and its logs."""

    def check(resumed: Resumed) -> None:
        done = int(resumed.state["step"])
        if config.examples < done:
            raise ValueError(
                f"--examples {config.examples} is fewer than the run has already done "
                f"({done}); give at least as many"
            )
        refuse_finished(
            resumed.run_dir, done=done, total=config.examples, command=NAME, flag="--examples"
        )

    experiment, positions = open_run(
        config.run,
        lambda run_dir: RegressionRun(config, run_dir),
        command=NAME,
        label=config.label(),
        saved_config=config_json(config),
        resumable=RESUMABLE_CHANGES,
        every=config.run.checkpoint_every,
        check=check,
    )
    experiment.open_logs(positions)
    if config.run.resume is not None:
        log(f"resuming {experiment.run_dir} at example {experiment.examples_done:,}")
    return experiment


def run(
    config: RegressionConfig,
    *,
    stop_at_examples: int | None = None,
    log: Log = stderr_log,
) -> RunSummary:
    """Train (or resume) a run; returns where it ended (:func:`prepare`, then :func:`train`).

    ``stop_at_examples`` stops at the last chunk boundary at or before that many examples in
    all and saves a checkpoint, as a signal would: resume with ``run.resume``. The run
    directory is locked until it returns.
    """
    with claims_released(), torch_threads(config.run.threads):
        return train(prepare(config, log), stop_at_examples=stop_at_examples, log=log)


def train(
    experiment: RegressionRun, *, stop_at_examples: int | None = None, log: Log = stderr_log
) -> RunSummary:
    """Train a prepared run to its end (or ``stop_at_examples``, or a signal).

    Raises :class:`~cbp_rl.run.conventions.NonFiniteError` (and writes no checkpoint) when an
    error or weight becomes non-finite.
    """
    config = experiment.config
    limit = config.examples if stop_at_examples is None else min(config.examples, stop_at_examples)
    stopped_by = train_to_limit(
        experiment,
        done=lambda: experiment.examples_done,
        total=config.examples,
        limit=limit,
        progress=config.run.progress,
        desc=f"regression {config.label()}",
    )
    stopped = experiment.examples_done < config.examples
    done = experiment.results.bins_done
    errors = experiment.results.arrays["errors"][:, :done]
    if stopped:
        log(
            f"stopped at example {experiment.examples_done:,}: resume with --resume "
            f"{experiment.run_dir}"
        )
    else:
        last = errors[:, -1].mean() if done else math.nan
        log(f"done: {done} bins in {experiment.run_dir} (last bin's error {last:.4f})")
    return RunSummary(experiment.run_dir, done, stopped, errors, stopped_by)


__all__ = ["NAME", "RegressionRun", "RunSummary", "config_json", "prepare", "run", "train"]
