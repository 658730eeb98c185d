"""The compact per-run results file, ``results.npz``: per seed, per task.

====================== ================ =====================================================
array                  shape            meaning
====================== ================ =====================================================
``seeds``              ``[S]``          the run seeds
``tasks_done``         ``[]``           tasks finished (rows past it are NaN)
``examples_per_task``  ``[]``           examples per task
``accuracy``           ``[S, T]``       online accuracy: fraction of the task's examples
                                        predicted correctly before the update on them
``loss``               ``[S, T]``       mean cross-entropy over the task, before the updates
``dead_units``         ``[S, T, L]``    at the task's start, per hidden layer (probe batch)
``effective_rank``     ``[S, T, L]``    at the task's start, per hidden layer
``rank99``             ``[S, T, L]``    at the task's start, per hidden layer
``weight_magnitude``   ``[S, T, L+1]``  at the task's start: mean ``|W|`` into each hidden
                                        layer, then of the output layer
``weight_magnitude_all`` ``[S, T]``     at the task's start: mean ``|W|`` over all weights
``replacements``       ``[S, T, L]``    units reinitialized during the task (CBP or ReDo)
====================== ================ =====================================================

Measures not taken (``--measure-every`` > 1) are NaN. Read it with ``numpy.load``.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbp_rl.run.checkpoint import atomic_write

RESULTS_FILE = "results.npz"

_PER_TASK = ("accuracy", "loss", "weight_magnitude_all")
_PER_LAYER = ("dead_units", "effective_rank", "rank99", "replacements")


class _SeedResults(ABC):
    """Per-seed arrays of a many-seed run: ``results.npz`` and the checkpoint's copy hold the
    seeds, the counters of ``_counters()`` and the arrays."""

    seeds: np.ndarray
    arrays: dict[str, np.ndarray]

    @abstractmethod
    def _counters(self) -> dict[str, int]:
        """The counters saved beside the arrays, by name."""

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        counters = {name: np.asarray(value) for name, value in self._counters().items()}
        return {"seeds": self.seeds, **counters, **self.arrays}

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``run_dir/results.npz`` atomically; returns its path."""
        return save_npz(run_dir, self.to_npz_dict())

    def state_dict(self) -> dict[str, object]:
        """For checkpoints: tensors and numbers only."""
        return {
            "seeds": self.seeds.tolist(),
            **self._counters(),
            "arrays": {name: torch.from_numpy(a.copy()) for name, a in self.arrays.items()},
        }


class RunResults(_SeedResults):
    """Per-seed, per-task results of one run, kept in memory and written to ``results.npz``."""

    def __init__(
        self, seeds: Sequence[int], tasks: int, depth: int, examples_per_task: int
    ) -> None:
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.examples_per_task = int(examples_per_task)
        self.tasks_done = 0
        shape = (len(seeds), tasks)
        self.arrays: dict[str, np.ndarray] = {
            **{name: np.full(shape, np.nan) for name in _PER_TASK},
            **{name: np.full((*shape, depth), np.nan) for name in _PER_LAYER},
            "weight_magnitude": np.full((*shape, depth + 1), np.nan),
        }

    @property
    def tasks(self) -> int:
        return int(self.arrays["accuracy"].shape[1])

    def grow(self, tasks: int) -> None:
        """Make room for ``tasks`` tasks (a resumed run that goes on longer)."""
        extra = tasks - self.tasks
        if extra <= 0:
            return
        for name, array in self.arrays.items():
            pad = np.full((array.shape[0], extra, *array.shape[2:]), np.nan)
            self.arrays[name] = np.concatenate([array, pad], axis=1)

    def record_measures(self, task: int, measures: Mapping[str, np.ndarray]) -> None:
        """Store the task-start measures (``[S]`` or ``[S, layers]`` arrays by name)."""
        for name, values in measures.items():
            self.arrays[name][:, task] = values

    def record_task(
        self, task: int, accuracy: np.ndarray, loss: np.ndarray, replacements: np.ndarray
    ) -> None:
        """Store a finished task's online accuracy, mean loss and replacement counts."""
        self.arrays["accuracy"][:, task] = accuracy
        self.arrays["loss"][:, task] = loss
        self.arrays["replacements"][:, task] = replacements
        self.tasks_done = task + 1

    def measures_of(self, task: int) -> dict[str, np.ndarray]:
        """The task-start measures stored for ``task``."""
        names = ("dead_units", "effective_rank", "rank99", "weight_magnitude")
        return {name: self.arrays[name][:, task] for name in (*names, "weight_magnitude_all")}

    def _counters(self) -> dict[str, int]:
        return {"tasks_done": self.tasks_done, "examples_per_task": self.examples_per_task}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, object]) -> RunResults:
        arrays = state["arrays"]
        assert isinstance(arrays, Mapping)
        seeds = state["seeds"]
        assert isinstance(seeds, list)
        accuracy = arrays["accuracy"]
        depth = arrays["dead_units"].shape[2]
        results = cls(seeds, accuracy.shape[1], depth, int(state["examples_per_task"]))  # type: ignore[call-overload]
        results.arrays = {name: tensor.numpy().copy() for name, tensor in arrays.items()}
        results.tasks_done = int(state["tasks_done"])  # type: ignore[call-overload]
        return results


def save_npz(run_dir: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``run_dir/results.npz`` atomically; returns its path."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path = Path(run_dir) / RESULTS_FILE
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


class BinnedResults(_SeedResults):
    """Per-seed, per-bin results of a run over one example stream (slowly-changing regression),
    written to ``results.npz``:

    ========================= ========== ================================================
    array                     shape      meaning
    ========================= ========== ================================================
    ``seeds``                 ``[S]``    the run seeds
    ``bins_done``             ``[]``     bins finished (columns past it are NaN)
    ``bin_size``              ``[]``     examples per bin
    ``errors``                ``[S, B]`` mean squared error over the bin, each example's
                                         error taken before the update on it
    ``dead_units``            ``[S, B]`` at the bin's end: fraction of hidden units that
                                         output 0 on every probe input
    ``effective_rank``        ``[S, B]`` at the bin's end: of the hidden layer's
                                         activations on the probe inputs
    ``weight_magnitude``      ``[S, B]`` at the bin's end: mean ``|W|`` into the hidden layer
    ``weight_magnitude_out``  ``[S, B]`` at the bin's end: mean ``|W|`` of the output layer
    ``replacements``          ``[S, B]`` hidden units CBP replaced during the bin
    ========================= ========== ================================================

    Without a hidden layer (the linear learner) the hidden-layer measures are NaN.
    """

    NAMES = (
        "errors",
        "dead_units",
        "effective_rank",
        "weight_magnitude",
        "weight_magnitude_out",
        "replacements",
    )

    def __init__(self, seeds: Sequence[int], bins: int, bin_size: int) -> None:
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.bin_size = int(bin_size)
        self.bins_done = 0
        self.arrays = {name: np.full((len(seeds), bins), np.nan) for name in self.NAMES}

    @property
    def bins(self) -> int:
        return int(self.arrays["errors"].shape[1])

    def grow(self, bins: int) -> None:
        """Make room for ``bins`` bins (a resumed run that goes on longer)."""
        extra = bins - self.bins
        if extra > 0:
            pad = np.full((len(self.seeds), extra), np.nan)
            self.arrays = {n: np.concatenate([a, pad], axis=1) for n, a in self.arrays.items()}

    def record(self, index: int, values: Mapping[str, np.ndarray]) -> None:
        """Store bin ``index``'s ``[S]`` values by name; the bin counts as done."""
        for name, value in values.items():
            self.arrays[name][:, index] = value
        self.bins_done = index + 1

    def _counters(self) -> dict[str, int]:
        return {"bins_done": self.bins_done, "bin_size": self.bin_size}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> BinnedResults:
        arrays = state["arrays"]
        results = cls(state["seeds"], arrays["errors"].shape[1], int(state["bin_size"]))
        results.arrays = {name: tensor.numpy().copy() for name, tensor in arrays.items()}
        results.bins_done = int(state["bins_done"])
        return results


def load_results(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``results.npz`` (or a run directory holding it) as a dict of arrays."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


__all__ = ["RESULTS_FILE", "BinnedResults", "RunResults", "load_results", "save_npz"]
