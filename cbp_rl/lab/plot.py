"""``python -m cbp_rl.plot DIR... [--out DIR]``: figures (PNG) and summary tables of runs.

Each ``DIR`` is a sweep folder (``python -m cbp_rl.sweep``; every run of it, one line per
setting) or a run directory. A run directory is read into named :class:`Series` (values per
seed against an x axis) by the first reader of :data:`READERS` that understands it:

* a ``results.npz`` of ``continual-imagenet`` or ``incremental-cifar`` (told by its ``kind``):
  ``test_accuracy`` per task (%; for CIFAR of the early-stopped network), ``dead_units`` and
  ``dormant_units`` (% over hidden layers), ``effective_rank`` and ``stable_rank`` (last hidden
  layer), ``weight_magnitude`` (mean |p| over all parameters), ``replacements``; and
  ``train_accuracy`` (ImageNet) or ``epoch_test_accuracy`` (CIFAR, against epochs);
* a ``results.npz`` (online permuted MNIST) gives the thesis's figures: ``accuracy`` (online
  accuracy per task, %), ``loss``, ``dead_units`` (% of hidden units), ``weight_magnitude``
  (mean |W| over all weights), ``effective_rank`` and ``rank99`` (last hidden layer),
  ``replacements`` (units reinitialized per task), against the task number;
* a ``results.npz`` of binned errors (slowly-changing regression): ``error`` (mean squared
  error per bin), ``dead_units`` (% of hidden units), ``effective_rank`` and
  ``weight_magnitude`` (mean |W| into the hidden layer) at each bin's end, ``replacements``
  (units reinitialized per bin), against examples;
* an RL run (``config.json`` with an ``algorithm``, and ``episodes.csv``): ``return`` (every
  episode's return, ``episodes.csv``) and, per network (``policy``, ``value``, ...),
  ``<net>/dead_units`` (% of hidden units), ``<net>/weight_magnitude`` (mean |W|),
  ``<net>/effective_rank`` and ``<net>/stable_rank`` (last hidden layer), against environment
  steps; every other TensorBoard scalar under its tag;
* otherwise TensorBoard event files: every scalar tag, against its step, with the seeds in
  ``seed_*`` subdirectories (or the directory itself as one seed).

Lines: the runs of a sweep folder by setting; other runs whose configurations (``config.json``)
differ only in seeds and run bookkeeping form one line, labelled with the settings that tell
the lines apart. Each line is the mean over seeds with a band: one standard error
(``--band stderr``, the default) or a bootstrap 95% interval (``--band bootstrap``). Seeds
logged at different x (episode returns) are averaged in ``--points`` bins first; see
:mod:`cbp_rl.lab.aggregate` for the exact definitions, also of the summary tables
(``summary.csv``, ``summary.md``: final, best and average value per setting, written for sweep
folders and with ``--table``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbp_rl.lab.aggregate import (
    BANDS,
    Series,
    align,
    band,
    bin_curves,
    quiet,
    summarize,
    write_tables,
)
from cbp_rl.lab.commands import COMMANDS
from cbp_rl.run.checkpoint import flatten_dict
from cbp_rl.run.conventions import EXIT_USAGE, report
from cbp_rl.run.logging import CONFIG_FILE, EPISODES_FILE, read_tags
from cbp_rl.supervised.results import RESULTS_FILE

MANIFEST_FILE = "sweep.json"
IGNORED_CONFIG_KEYS = (
    "seed",
    "seeds",
    "run",
    "tasks",
    "examples",
    "data.data_dir",
    "data.download",
    "data_dir",
    "download",
)
"""Config fields (dotted, with everything below them) that do not make a different setting."""


@dataclass(frozen=True)
class Figure:
    """How to draw one quantity."""

    title: str
    ylabel: str
    xlabel: str = "step"


@dataclass
class Run:
    """A run directory read into series."""

    path: Path
    config: dict[str, Any]
    series: dict[str, Series]
    figures: dict[str, Figure] = field(default_factory=dict)
    """Figures this run's reader knows how to draw, by series name (the default selection)."""
    performance: str | None = None
    """The series that measures performance (``accuracy``, ``return``): higher is better."""
    irregular: frozenset[str] = frozenset()
    """Series logged at x values of their own in every seed (episode ends): always binned."""
    label: str | None = None
    """The line this run belongs to (a sweep's setting); ``None``: grouped by config."""
    done: float | None = None
    """The fraction of its budget a sweep's run has done, when it is not finished."""


Reader = Callable[[Path], Run | None]


# --------------------------------------------------------------------------- readers


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.is_file():
        return {}
    with open(file, encoding="utf-8") as f:
        config = json.load(f)
    return config if isinstance(config, dict) else {}


TASK = "task number"
STEPS = "environment steps"
PMNIST_FIGURES: dict[str, Figure] = {
    "accuracy": Figure("Online accuracy per task", "online accuracy (%)", TASK),
    "loss": Figure("Mean loss per task", "cross-entropy loss", TASK),
    "dead_units": Figure("Dead units at the start of each task", "dead units (%)", TASK),
    "weight_magnitude": Figure("Average weight magnitude", "mean |w|", TASK),
    "effective_rank": Figure("Effective rank of the last hidden layer", "effective rank", TASK),
    "rank99": Figure("99% rank of the last hidden layer", "rank keeping 99%", TASK),
    "replacements": Figure("Units reinitialized per task", "units per task", TASK),
}


EXAMPLES = "examples"
REGRESSION_FIGURES: dict[str, Figure] = {
    "error": Figure("Squared error, binned", "mean squared error per bin", EXAMPLES),
    "dead_units": Figure("Dead hidden units at each bin's end", "dead units (%)", EXAMPLES),
    "effective_rank": Figure("Effective rank of the hidden layer", "effective rank", EXAMPLES),
    "weight_magnitude": Figure("Weight magnitude of the hidden layer", "mean |w|", EXAMPLES),
    "replacements": Figure("Units reinitialized per bin", "units per bin", EXAMPLES),
}


def _npz_arrays(path: Path) -> dict[str, np.ndarray] | None:
    file = path / RESULTS_FILE
    if not file.is_file():
        return None
    with np.load(file) as data:
        return {name: data[name] for name in data.files}


def read_binned_results(path: Path) -> Run | None:
    """A run directory with a ``results.npz`` of per-seed, per-bin errors (regression)."""
    arrays = _npz_arrays(path)
    if arrays is None or "errors" not in arrays:
        return None
    done = int(arrays["bins_done"])
    size = int(arrays["bin_size"])
    x = size * np.arange(1, done + 1, dtype=np.float64)

    def take(name: str) -> np.ndarray:
        return np.asarray(arrays[name][:, :done], dtype=np.float64)

    series = {
        "error": Series(x, take("errors")),
        "weight_magnitude": Series(x, take("weight_magnitude")),
        "dead_units": Series(x, 100.0 * take("dead_units")),
        "effective_rank": Series(x, take("effective_rank")),
        "replacements": Series(x, take("replacements")),
    }
    figures = dict(REGRESSION_FIGURES)
    for name in ("dead_units", "effective_rank", "weight_magnitude"):
        if not np.isfinite(series[name].values).any():  # the linear learner: no hidden layer
            series.pop(name)
            figures.pop(name)
    if not np.nansum(series["replacements"].values) > 0:
        series.pop("replacements")
        figures.pop("replacements")
    return Run(path, _read_config(path), series, figures)


def read_results(path: Path) -> Run | None:
    """A run directory with a ``results.npz`` of per-seed, per-task arrays."""
    arrays = _npz_arrays(path)
    if arrays is None or "accuracy" not in arrays:
        return None
    done = int(arrays["tasks_done"]) if "tasks_done" in arrays else arrays["accuracy"].shape[1]
    x = np.arange(1, done + 1, dtype=np.float64)

    def take(name: str) -> np.ndarray:
        return np.asarray(arrays[name][:, :done], dtype=np.float64)

    series = {
        "accuracy": Series(x, 100.0 * take("accuracy")),
        "loss": Series(x, take("loss")),
        "dead_units": Series(x, 100.0 * take("dead_units").mean(axis=2)),
        "weight_magnitude": Series(x, take("weight_magnitude_all")),
        "effective_rank": Series(x, take("effective_rank")[:, :, -1]),
        "rank99": Series(x, take("rank99")[:, :, -1]),
    }
    figures = dict(PMNIST_FIGURES)
    replaced = take("replacements")
    if np.nansum(replaced) > 0:
        series["replacements"] = Series(x, replaced.sum(axis=2))
    else:
        figures.pop("replacements")
    return Run(path, _read_config(path), series, figures, performance="accuracy")


EPOCH = "epoch"
CONV_FIGURES: dict[str, dict[str, Figure]] = {
    "continual-imagenet": {
        "test_accuracy": Figure("Test accuracy at the end of each task", "test accuracy (%)", TASK),
        "train_accuracy": Figure("Train accuracy, last epoch of each task", "accuracy (%)", TASK),
        "dead_units": Figure("Dead units at the start of each task", "dead units (%)", TASK),
        "dormant_units": Figure("Dormant units at the start of each task", "dormant (%)", TASK),
        "effective_rank": Figure("Effective rank of the last hidden layer", "effective rank", TASK),
        "stable_rank": Figure("Stable rank of the last hidden layer", "stable rank", TASK),
        "weight_magnitude": Figure("Average weight magnitude", "mean |p|", TASK),
        "replacements": Figure("Units reinitialized per task", "units per task", TASK),
    },
    "incremental-cifar": {
        "test_accuracy": Figure("Test accuracy of each task's final network", "accuracy (%)", TASK),
        "epoch_test_accuracy": Figure("Test accuracy per epoch", "test accuracy (%)", EPOCH),
        "dormant_units": Figure("Dormant units at the start of each task", "dormant (%)", TASK),
        "dead_units": Figure("Dead units at the start of each task", "dead units (%)", TASK),
        "effective_rank": Figure("Effective rank of the pooled features", "effective rank", TASK),
        "stable_rank": Figure("Stable rank of the pooled features", "stable rank", TASK),
        "weight_magnitude": Figure("Average weight magnitude", "mean |p|", TASK),
        "replacements": Figure("Units reinitialized per task", "units per task", TASK),
    },
}
"""The figures of the convolutional commands' ``results.npz``, by its ``kind``."""


def read_conv_results(path: Path) -> Run | None:
    """A ``continual-imagenet`` or ``incremental-cifar`` run directory (its ``results.npz``)."""
    file = path / RESULTS_FILE
    if not file.is_file():
        return None
    with np.load(file) as data:
        if "kind" not in data.files or str(data["kind"]) not in CONV_FIGURES:
            return None
        arrays = {name: data[name] for name in data.files}
    kind = str(arrays["kind"])
    done = int(arrays["tasks_done"])
    x = np.arange(1, done + 1, dtype=np.float64)

    def per_task(name: str) -> np.ndarray:
        return np.asarray(arrays[name][:done], dtype=np.float64)

    series = {
        "test_accuracy": Series(x, 100.0 * per_task("task_test_accuracy")[None, :]),
        "dead_units": Series(x, 100.0 * per_task("dead_units").mean(axis=1)[None, :]),
        "dormant_units": Series(x, 100.0 * per_task("dormant_units").mean(axis=1)[None, :]),
        "effective_rank": Series(x, per_task("effective_rank")[None, :, -1]),
        "stable_rank": Series(x, per_task("stable_rank")[None, :, -1]),
        "weight_magnitude": Series(x, per_task("weight_magnitude_all")[None, :]),
    }
    if kind == "continual-imagenet":
        series["train_accuracy"] = Series(x, 100.0 * per_task("task_train_accuracy")[None, :])
    else:
        epochs = int(np.sum(np.isfinite(arrays["epoch_test_accuracy"])))
        accuracy = np.asarray(arrays["epoch_test_accuracy"][:epochs], dtype=np.float64)
        series["epoch_test_accuracy"] = Series(
            np.arange(1, epochs + 1, dtype=np.float64), 100.0 * accuracy[None, :]
        )
    figures = dict(CONV_FIGURES[kind])
    replaced = per_task("replacements")
    if np.nansum(replaced) > 0:
        series["replacements"] = Series(x, replaced.sum(axis=1)[None, :])
    else:
        figures.pop("replacements")
    return Run(path, _read_config(path), series, figures, performance="test_accuracy")


PERCENT_OF_UNITS = -1.0
"""A scale in :data:`RL_MEASURES`: divide by the layer's width and multiply by 100."""

RL_MEASURES: dict[str, tuple[str, float, Figure]] = {
    "dead_units": (
        "all",
        100.0,
        Figure("Dead units of the {net} network", "dead units (%)", STEPS),
    ),
    "inactive": (
        "all",
        100.0,
        Figure(
            "Dormant units of the {net} network (the paper's: active on under 1% of inputs)",
            "dormant units (%)",
            STEPS,
        ),
    ),
    "dormant": (
        "all",
        100.0,
        Figure(
            "ReDo-dormant units of the {net} network (ratio <= --dormant-tau)",
            "ReDo-dormant units (%)",
            STEPS,
        ),
    ),
    "weight_magnitude": (
        "all",
        1.0,
        Figure("Weight magnitude of the {net} network", "mean |w|", STEPS),
    ),
    "effective_rank": (
        "last",
        1.0,
        Figure("Effective rank, last hidden layer of the {net} network", "effective rank", STEPS),
    ),
    "rank99": (
        "last",
        PERCENT_OF_UNITS,
        Figure(
            "The paper's stable rank (rank99), last hidden layer of the {net} network",
            "singular values for 99% (% of units)",
            STEPS,
        ),
    ),
    "stable_rank": (
        "last",
        1.0,
        Figure(
            "Numerical stable rank, last hidden layer of the {net} network",
            "sum(s^2) / max(s)^2",
            STEPS,
        ),
    ),
}
"""The plasticity figures of an RL run, per network: the layer read (``all``: the tag pooling
every hidden unit or weight; ``last``: the last hidden layer), a scale (or
:data:`PERCENT_OF_UNITS`), the figure. ``rank99`` is what the paper and its code call the
stable rank (``compute_stable_rank``); ``stable_rank`` is the numerical one."""


def read_rl_run(path: Path) -> Run | None:
    """An RL run directory (its ``config.json`` names a command of :mod:`cbp_rl.lab.commands`:
    ``ppo``, ``sac``): returns from ``episodes.csv``, the rest from its event files."""
    config = _read_config(path)
    episodes = path / EPISODES_FILE
    if config.get("algorithm") not in COMMANDS or not episodes.is_file():
        return None
    steps, returns = _read_episodes(episodes)
    series = {"return": Series(steps, returns[None, :])}
    figures = {"return": Figure("Episodic return", "return per episode", STEPS)}
    for tag, (x, y) in read_tags(path).items():
        series[tag] = Series(x, y[None, :])
    networks = sorted(
        {t.split("/")[1] for t in series if t.startswith("plasticity/") and t.count("/") == 3}
    )
    for net in networks:
        for measure, (layer, scale, figure) in RL_MEASURES.items():
            source_tag = _layer_tag(series, f"plasticity/{net}/{measure}", layer)
            if source_tag is None:
                continue
            if scale == PERCENT_OF_UNITS:
                width = _last_hidden_width(config)
                if width is None:
                    continue
                scale = 100.0 / width
            source = series[source_tag]
            name = f"{net}/{measure}"
            series[name] = Series(source.x, scale * source.values)
            figures[name] = Figure(figure.title.format(net=net), figure.ylabel, STEPS)
    metric = COMMANDS[config["algorithm"]].metric
    return Run(path, config, series, figures, performance=metric, irregular=frozenset({"return"}))


def _last_hidden_width(config: Mapping[str, Any]) -> int | None:
    """The width of the last hidden layer of an RL run's networks (``network.hidden_sizes``)."""
    sizes = config.get("network", {}).get("hidden_sizes")
    return int(sizes[-1]) if sizes else None


def _layer_tag(series: Mapping[str, Series], prefix: str, layer: str) -> str | None:
    if layer == "all":
        return f"{prefix}/all" if f"{prefix}/all" in series else None
    layers = [int(t.rsplit("/", 1)[1]) for t in series if re.fullmatch(rf"{prefix}/\d+", t)]
    return f"{prefix}/{max(layers)}" if layers else None


def _read_episodes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, returns)`` of an ``episodes.csv`` (empty arrays when it has no rows)."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header or "step" not in header or "return" not in header:
        return np.zeros(0), np.zeros(0)
    columns = (header.index("step"), header.index("return"))
    with quiet():
        data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=columns, ndmin=2)
    if data.size == 0:
        return np.zeros(0), np.zeros(0)
    return data[:, 0].astype(np.float64), data[:, 1].astype(np.float64)


def read_event_files(path: Path) -> Run | None:
    """A run directory with TensorBoard event files (seeds in ``seed_*`` subdirectories)."""
    seed_dirs = sorted(p for p in path.glob("seed_*") if p.is_dir())
    sources = seed_dirs or [path]
    if not any(any(p.glob("events.out.tfevents.*")) for p in sources):
        return None
    per_seed = [read_tags(p) for p in sources]
    tags = sorted({tag for scalars in per_seed for tag in scalars})
    series = {}
    for tag in tags:
        parts = [_one_seed(scalars[tag]) if tag in scalars else None for scalars in per_seed]
        steps = np.unique(np.concatenate([p.x for p in parts if p is not None]))
        values = np.full((len(per_seed), len(steps)), np.nan)
        for s, part in enumerate(parts):
            if part is not None:
                values[s, np.searchsorted(steps, part.x)] = part.values
        series[tag] = Series(steps, values)
    figures = {tag: Figure(tag, tag.rsplit("/", 1)[-1]) for tag in tags}
    return Run(path, _read_config(path), series, figures)


def _one_seed(points: tuple[np.ndarray, np.ndarray]) -> Series:
    return Series(points[0], points[1][None, :])


READERS: list[Reader] = [
    read_binned_results,
    read_conv_results,
    read_results,
    read_rl_run,
    read_event_files,
]
"""Tried in order; the first that returns a :class:`Run` reads the directory."""


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read a run directory with the first reader of :data:`READERS` that understands it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; pass run directories")
    for reader in READERS:
        run = reader(path)
        if run is not None:
            return run
    raise ValueError(
        f"{path} holds neither {RESULTS_FILE} nor TensorBoard event files: is it a run directory?"
    )


def is_sweep(path: Path) -> bool:
    """Whether ``path`` is a sweep folder (``python -m cbp_rl.sweep``)."""
    return (path / MANIFEST_FILE).is_file()


def load_sweep(path: str | os.PathLike[str], *, prefix: str = "") -> list[Run]:
    """The runs of a sweep folder that have results yet, labelled ``prefix + setting``."""
    from cbp_rl.lab.sweep import SweepPaths, load_manifest, run_states

    paths = SweepPaths(Path(path))
    manifest = load_manifest(paths.root)
    views = {view.name: view for view in run_states(paths.root)}
    runs, missing, going = [], [], []
    for spec in manifest.runs:
        run_dir = paths.run_dir(spec.name)
        try:
            run = load_run(run_dir)
        except (FileNotFoundError, ValueError):
            missing.append(spec.name)
            continue
        run.label = prefix + spec.setting
        view = views[spec.name]
        if view.state != "done" and view.total > 0:
            run.done = view.step / view.total
            going.append(f"{spec.name} ({view.state}, {view.step:,} of {view.total:,})")
        runs.append(run)
    if going:
        print(f"note: {len(going)} run(s) not finished: {', '.join(going)}", file=sys.stderr)
    if missing:
        print(
            f"note: {len(missing)} run(s) without results yet: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else ""),
            file=sys.stderr,
        )
    if not runs:
        raise ValueError(f"no run of the sweep {path} has results yet")
    return runs


# --------------------------------------------------------------------------- grouping


def _setting(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config fields that define a setting (seeds and bookkeeping removed)."""
    return {
        key: value
        for key, value in flatten_dict(config).items()
        if not any(key == i or key.startswith(f"{i}.") for i in IGNORED_CONFIG_KEYS)
    }


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped into lines: by their ``label`` (a sweep's settings) when they all have one;
    otherwise by setting, keyed by the learner (or directory name) plus the settings that
    differ between groups."""
    if runs and all(run.label is not None for run in runs):
        labelled: dict[str, list[Run]] = {}
        for run in runs:
            assert run.label is not None
            labelled.setdefault(run.label, []).append(run)
        return labelled
    settings: list[dict[str, Any]] = []
    members: list[list[Run]] = []
    for run in runs:
        setting = _setting(run.config) if run.config else {"run": str(run.path)}
        for index, known in enumerate(settings):
            if known == setting:
                members[index].append(run)
                break
        else:
            settings.append(setting)
            members.append([run])
    keys = sorted({key for s in settings for key in s})
    differing = [
        k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1
    ]
    labels: dict[str, list[Run]] = {}
    for setting, group in zip(settings, members, strict=True):
        first = group[0]
        base = (
            str(first.config.get("learner", first.path.name)) if first.config else first.path.name
        )
        extra = [
            f"{key.rsplit('.', 1)[-1]}={_short(setting.get(key))}"
            for key in differing
            if key not in ("learner", "run")
        ]
        label = f"{base} ({', '.join(extra)})" if extra else base
        while label in labels:
            label += "'"
        labels[label] = group
    return labels


# --------------------------------------------------------------------------- statistics


def combine(series: Iterable[Series]) -> Series:
    """The seeds of several runs' series as one, on the union of their x values."""
    series = list(series)
    xs = np.unique(np.concatenate([s.x for s in series]))
    rows = []
    for s in series:
        values = np.full((s.values.shape[0], len(xs)), np.nan)
        values[:, np.searchsorted(xs, s.x)] = s.values
        rows.append(values)
    return Series(xs, np.concatenate(rows))


def binned(series: Series, width: int) -> Series:
    """Averages over consecutive blocks of ``width`` points (per seed); x is each block's mean."""
    if width <= 1:
        return series
    count = len(series.x) // width
    if count == 0:
        return series
    cut = count * width
    x = series.x[:cut].reshape(count, width).mean(1)
    with quiet():
        values = np.nanmean(series.values[:, :cut].reshape(-1, count, width), axis=2)
    return Series(x, values)


def mean_and_stderr(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: mean over seeds, standard error ``std(ddof=1) / sqrt(n)``, and n (NaN
    entries ignored; the error is 0 where only one seed has a value)."""
    count = np.sum(np.isfinite(values), axis=0)
    with quiet():
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    stderr = np.where(count > 1, np.nan_to_num(std) / np.sqrt(np.maximum(count, 1)), 0.0)
    return mean, stderr, count


def line_points(series: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(x, mean, stderr, seeds)`` of a line, leaving out x values no seed has (measures
    taken every few tasks are joined up)."""
    mean, stderr, count = mean_and_stderr(series.values)
    keep = count > 0
    seeds = int(count.max()) if count.size else 0
    return series.x[keep], mean[keep], stderr[keep], seeds


@dataclass(frozen=True)
class LineConfig:
    """How lines are made from seeds."""

    band: str = "stderr"
    """stderr or bootstrap."""
    points: int = 100
    """Bins of the common grid for seeds logged at different x."""
    bin_width: int = 1
    """Average over this many consecutive grid points."""
    samples: int = 2000
    """Bootstrap resamples."""
    seed: int = 0
    """Bootstrap seed."""


def line_series(runs: Sequence[Run], name: str, options: LineConfig) -> Series | None:
    """The seeds of ``runs`` for series ``name`` on one grid (``None`` if no run has it)."""
    parts = [run.series[name] for run in runs if name in run.series]
    parts = [p for p in parts if len(p.x)]
    if not parts:
        return None
    if any(name in run.irregular for run in runs):
        aligned = bin_curves([(p.x, row) for p in parts for row in p.values], options.points)
    else:
        aligned = align(parts, options.points)
    return binned(aligned, options.bin_width)


# --------------------------------------------------------------------------- drawing


def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") + ".png"


def _band_text(method: str) -> str:
    return "bootstrap 95% interval" if method == "bootstrap" else "one standard error"


LINE_STYLES = ("-", "--", ":", "-.")
"""Matplotlib's colour cycle repeats after ten lines: the next ten are dashed, and so on."""


def _line_style(index: int) -> str:
    return LINE_STYLES[(index // 10) % len(LINE_STYLES)]


def plot_metric(
    metric: str,
    figure: Figure,
    lines: Mapping[str, Series],
    out: Path,
    options: LineConfig | None = None,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Draw one figure: a line per label (mean over seeds) with its band; ``notes`` are added
    to the legend entries of their labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    options = options or LineConfig()
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    try:
        for index, (label, series) in enumerate(lines.items()):
            line = band(series, options.band, samples=options.samples, seed=options.seed)
            seeds = int(line.count.max()) if line.count.size else 0
            note = f"; {notes[label]}" if notes and label in notes else ""
            text = textwrap.fill(f"{label} ({seeds} seed{'s' * (seeds != 1)}{note})", 80)
            (drawn,) = ax.plot(
                line.x,
                line.mean,
                label=text,
                marker="." if len(line.x) < 30 else None,
                linestyle=_line_style(index),
            )
            ax.fill_between(line.x, line.low, line.high, color=drawn.get_color(), alpha=0.25, lw=0)
        ax.set_title(textwrap.fill(figure.title, 70))
        ax.set_xlabel(figure.xlabel)
        ax.set_ylabel(figure.ylabel)
        ax.grid(alpha=0.3)
        if figure.xlabel == TASK:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            frameon=False,
            title=f"mean over seeds, band: {_band_text(options.band)}",
            title_fontsize=8,
        )
        out.mkdir(parents=True, exist_ok=True)
        path = out / _file_name(metric)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _figures(runs: Sequence[Run]) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    for run in runs:
        for name, figure in run.figures.items():
            figures.setdefault(name, figure)
    return figures


def plot_runs(
    runs: Sequence[Run],
    out: Path,
    *,
    metrics: Sequence[str] | None = None,
    bin_width: int = 1,
    options: LineConfig | None = None,
    table: bool = False,
) -> list[Path]:
    """One PNG per metric in ``out`` (and with ``table`` the summary tables); returns the
    paths written."""
    options = options or LineConfig()
    if bin_width > 1:
        options = dataclasses.replace(options, bin_width=bin_width)
    if not runs:
        raise ValueError("nothing to plot: no run has results yet")
    groups = group_runs(runs)
    figures = _figures(runs)
    names = list(metrics) if metrics else list(figures)
    unknown = [m for m in names if not any(m in run.series for run in runs)]
    if unknown:
        available = sorted({name for run in runs for name in run.series})
        raise ValueError(f"no run has {unknown}; available: {', '.join(available)}")
    notes = _unfinished_notes(groups)
    paths = []
    lines_by_metric: dict[str, dict[str, Series]] = {}
    for name in names:
        lines = {}
        for label, group in groups.items():
            line = line_series(group, name, options)
            if line is not None:
                lines[label] = line
        if not lines:
            continue  # no run has logged it yet: no empty figure
        lines_by_metric[name] = lines
        figure = figures.get(name, Figure(name, name.rsplit("/", 1)[-1]))
        paths.append(plot_metric(name, figure, lines, out, options, notes))
    if not paths:
        where = ", ".join(sorted({str(run.path) for run in runs}))
        raise ValueError(
            f"nothing to plot: the runs{' in ' + where if where else ''} have logged no data "
            f"for {', '.join(names) or 'any metric'} yet"
        )
    if table:
        paths += summary_tables(runs, lines_by_metric, out, options)
    return paths


def _unfinished_notes(groups: Mapping[str, Sequence[Run]]) -> dict[str, str]:
    """Per line with unfinished runs: how far they got (``still going: 31%``, or a range)."""
    notes = {}
    for label, group in groups.items():
        done = sorted(run.done for run in group if run.done is not None)
        if done:
            span = f"{done[0]:.0%}" if done[0] == done[-1] else f"{done[0]:.0%}-{done[-1]:.0%}"
            notes[label] = f"not finished: {span} of the budget"
    return notes


def summary_tables(
    runs: Sequence[Run],
    lines_by_metric: Mapping[str, Mapping[str, Series]],
    out: Path,
    options: LineConfig,
) -> list[Path]:
    """``summary.csv`` and ``summary.md`` of the plotted lines (performance first)."""
    performance = {run.performance for run in runs if run.performance}
    order = sorted(lines_by_metric, key=lambda name: name not in performance)
    summaries = [
        summarize(
            label,
            name,
            series,
            method=options.band,
            performance=name in performance,
            samples=options.samples,
            seed=options.seed,
        )
        for name in order
        for label, series in lines_by_metric[name].items()
    ]
    if not summaries:
        return []
    xlabel = _figures(runs).get(order[0], Figure("", "")).xlabel
    x_name = "task" if xlabel == TASK else "step"
    return write_tables(summaries, out, x_name=x_name)


def default_out(run_dirs: Sequence[Path]) -> Path:
    """``DIR/plots`` for one run or sweep folder, else ``plots`` in their common parent."""
    if len(run_dirs) == 1:
        return run_dirs[0] / "plots"
    common = Path(os.path.commonpath([str(p.resolve()) for p in run_dirs]))
    return common / "plots"


def load_dirs(paths: Sequence[Path]) -> tuple[list[Run], bool]:
    """The runs of run directories and sweep folders; whether any was a sweep folder."""
    sweeps = [p for p in paths if is_sweep(p)]
    runs: list[Run] = []
    for path in paths:
        if is_sweep(path):
            runs += load_sweep(path, prefix=f"{path.name}: " if len(sweeps) > 1 else "")
        else:
            runs.append(load_run(path))
    if sweeps and len(sweeps) < len(paths):
        raise ValueError("pass either sweep folders or run directories, not both")
    return runs, bool(sweeps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cbp_rl.plot",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="DIR", help="run directories or sweep folders"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/plots)")
    parser.add_argument(
        "--metrics", nargs="+", default=None, help="series to plot (default: each reader's)"
    )
    parser.add_argument(
        "--bin", type=int, default=1, dest="bin_width", help="average over N consecutive points"
    )
    parser.add_argument(
        "--band", choices=BANDS, default="stderr", help="stderr (default) or bootstrap (95%%)"
    )
    parser.add_argument(
        "--points",
        type=int,
        default=100,
        help="grid bins for seeds logged at different x (default 100)",
    )
    parser.add_argument(
        "--bootstrap-samples", type=int, default=2000, help="bootstrap resamples (default 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--table",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write summary.csv and summary.md (default: for sweep folders)",
    )
    args = parser.parse_args(argv)
    if args.bin_width < 1:
        parser.error("--bin must be >= 1")
    if args.points < 1 or args.bootstrap_samples < 1:
        parser.error("--points and --bootstrap-samples must be >= 1")
    options = LineConfig(args.band, args.points, args.bin_width, args.bootstrap_samples, args.seed)
    try:
        runs, sweep = load_dirs(args.run_dirs)
        out = args.out or default_out(args.run_dirs)
        table = sweep if args.table is None else args.table
        paths = plot_runs(runs, out, metrics=args.metrics, options=options, table=table)
    except (FileNotFoundError, ValueError) as err:
        return report("plot", err, EXIT_USAGE)
    for path in paths:
        print(path)
    return 0


__all__ = [
    "READERS",
    "Figure",
    "LineConfig",
    "Run",
    "Series",
    "binned",
    "combine",
    "group_runs",
    "line_series",
    "load_run",
    "load_sweep",
    "main",
    "mean_and_stderr",
    "plot_runs",
]
