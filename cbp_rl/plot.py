"""``python -m cbp_rl.plot RUN_DIR... [--out DIR]``: figures from run directories, as PNG.

Every run directory is read into named :class:`Series` (values per seed against an x axis) by
the first reader that understands it:

* a ``results.npz`` (online permuted MNIST) gives the thesis's figures: ``accuracy`` (online
  accuracy per task, %), ``loss``, ``dead_units`` (% of hidden units), ``weight_magnitude``
  (mean |W| over all weights), ``effective_rank`` and ``rank99`` (last hidden layer),
  ``replacements`` (units reinitialized per task), against the task number;
* otherwise TensorBoard event files: every scalar tag, against its step, with the seeds in
  ``seed_*`` subdirectories (or the directory itself as one seed).

Runs whose configurations (``config.json``) differ only in seeds and run bookkeeping form one
line, whose label is the learner plus the settings that tell the lines apart. Each figure
shows the mean over all seeds of a line and a band of one standard error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.npz"
CONFIG_FILE = "config.json"
IGNORED_CONFIG_KEYS = ("seed", "seeds", "run", "tasks", "data.data_dir", "data.download")
"""Config fields (dotted, with everything below them) that do not make a different setting."""


@dataclass(frozen=True)
class Series:
    """One quantity of one run: ``values[seed, i]`` at ``x[i]`` (NaN where missing)."""

    x: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.x):
            raise ValueError(
                f"values must be [seeds, {len(self.x)}], got shape {self.values.shape}"
            )


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
PMNIST_FIGURES: dict[str, Figure] = {
    "accuracy": Figure("Online accuracy per task", "online accuracy (%)", TASK),
    "loss": Figure("Mean loss per task", "cross-entropy loss", TASK),
    "dead_units": Figure("Dead units at the start of each task", "dead units (%)", TASK),
    "weight_magnitude": Figure("Average weight magnitude", "mean |w|", TASK),
    "effective_rank": Figure("Effective rank of the last hidden layer", "effective rank", TASK),
    "rank99": Figure("99% rank of the last hidden layer", "rank keeping 99%", TASK),
    "replacements": Figure("Units reinitialized per task", "units per task", TASK),
}


def read_results(path: Path) -> Run | None:
    """A run directory with a ``results.npz`` of per-seed, per-task arrays."""
    file = path / RESULTS_FILE
    if not file.is_file():
        return None
    with np.load(file) as data:
        arrays = {name: data[name] for name in data.files}
    done = int(arrays.get("tasks_done", arrays["accuracy"].shape[1]))
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
    return Run(path, _read_config(path), series, figures)


def read_event_files(path: Path) -> Run | None:
    """A run directory with TensorBoard event files (seeds in ``seed_*`` subdirectories)."""
    from cbp_rl.logging import read_scalars

    seed_dirs = sorted(p for p in path.glob("seed_*") if p.is_dir())
    sources = seed_dirs or [path]
    if not any(any(p.glob("events.out.tfevents.*")) for p in sources):
        return None
    per_seed = [read_scalars(p) for p in sources]
    tags = sorted({tag for scalars in per_seed for tag in scalars})
    series = {}
    for tag in tags:
        steps = sorted({step for scalars in per_seed for step, _ in scalars.get(tag, [])})
        index = {step: i for i, step in enumerate(steps)}
        values = np.full((len(per_seed), len(steps)), np.nan)
        for s, scalars in enumerate(per_seed):
            for step, value in scalars.get(tag, []):
                values[s, index[step]] = value
        series[tag] = Series(np.asarray(steps, dtype=np.float64), values)
    figures = {tag: Figure(tag, tag.rsplit("/", 1)[-1]) for tag in tags}
    return Run(path, _read_config(path), series, figures)


READERS: list[Reader] = [read_results, read_event_files]
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


# --------------------------------------------------------------------------- grouping


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _setting(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config fields that define a setting (seeds and bookkeeping removed)."""
    return {
        key: value
        for key, value in _flatten(config).items()
        if not any(key == i or key.startswith(f"{i}.") for i in IGNORED_CONFIG_KEYS)
    }


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by setting, keyed by a label: the learner (or directory name) plus the
    settings that differ between groups."""
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
    with _quiet():
        values = np.nanmean(series.values[:, :cut].reshape(-1, count, width), axis=2)
    return Series(x, values)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN warnings (missing points are expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def mean_and_stderr(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: mean over seeds, standard error ``std(ddof=1) / sqrt(n)``, and n (NaN
    entries ignored; the error is 0 where only one seed has a value)."""
    count = np.sum(np.isfinite(values), axis=0)
    with _quiet():
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    stderr = np.where(count > 1, np.nan_to_num(std) / np.sqrt(np.maximum(count, 1)), 0.0)
    return mean, stderr, count


# --------------------------------------------------------------------------- drawing


def line_points(series: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(x, mean, stderr, seeds)`` of a line, leaving out x values no seed has (measures
    taken every few tasks are joined up)."""
    mean, stderr, count = mean_and_stderr(series.values)
    keep = count > 0
    seeds = int(count.max()) if count.size else 0
    return series.x[keep], mean[keep], stderr[keep], seeds


def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") + ".png"


def plot_metric(
    metric: str,
    figure: Figure,
    lines: Mapping[str, Series],
    out: Path,
) -> Path:
    """Draw one figure: a line per label (mean) with a one-standard-error band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    try:
        for label, series in lines.items():
            x, mean, stderr, seeds = line_points(series)
            text = textwrap.fill(f"{label} ({seeds} seed{'s' * (seeds != 1)})", 80)
            (line,) = ax.plot(x, mean, label=text, marker="." if len(x) < 30 else None)
            ax.fill_between(
                x, mean - stderr, mean + stderr, color=line.get_color(), alpha=0.25, lw=0
            )
        ax.set_title(figure.title)
        ax.set_xlabel(figure.xlabel)
        ax.set_ylabel(figure.ylabel)
        ax.grid(alpha=0.3)
        if figure.xlabel == TASK:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
        out.mkdir(parents=True, exist_ok=True)
        path = out / _file_name(metric)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_runs(
    runs: Sequence[Run],
    out: Path,
    *,
    metrics: Sequence[str] | None = None,
    bin_width: int = 1,
) -> list[Path]:
    """One PNG per metric in ``out``; returns their paths."""
    groups = group_runs(runs)
    figures: dict[str, Figure] = {}
    for run in runs:
        for name, figure in run.figures.items():
            figures.setdefault(name, figure)
    names = list(metrics) if metrics else list(figures)
    unknown = [m for m in names if not any(m in run.series for run in runs)]
    if unknown:
        available = sorted({name for run in runs for name in run.series})
        raise ValueError(f"no run has {unknown}; available: {', '.join(available)}")
    paths = []
    for name in names:
        lines = {
            label: binned(combine(r.series[name] for r in group if name in r.series), bin_width)
            for label, group in groups.items()
            if any(name in r.series for r in group)
        }
        figure = figures.get(name, Figure(name, name.rsplit("/", 1)[-1]))
        paths.append(plot_metric(name, figure, lines, out))
    return paths


def default_out(run_dirs: Sequence[Path]) -> Path:
    """``RUN_DIR/plots`` for one run, else ``plots`` in the runs' common parent directory."""
    if len(run_dirs) == 1:
        return run_dirs[0] / "plots"
    common = Path(os.path.commonpath([str(p.resolve()) for p in run_dirs]))
    return common / "plots"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cbp_rl.plot",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: see docs)")
    parser.add_argument(
        "--metrics", nargs="+", default=None, help="series to plot (default: each reader's)"
    )
    parser.add_argument(
        "--bin", type=int, default=1, dest="bin_width", help="average over N consecutive points"
    )
    args = parser.parse_args(argv)
    if args.bin_width < 1:
        parser.error("--bin must be >= 1")
    try:
        runs = [load_run(path) for path in args.run_dirs]
        out = args.out or default_out(args.run_dirs)
        paths = plot_runs(runs, out, metrics=args.metrics, bin_width=args.bin_width)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


__all__ = [
    "READERS",
    "Figure",
    "Run",
    "Series",
    "binned",
    "combine",
    "group_runs",
    "load_run",
    "main",
    "mean_and_stderr",
    "plot_runs",
]

if __name__ == "__main__":
    sys.exit(main())
