"""Statistics over seeds: curves on a common grid, mean and interval bands, summary tables.

Definitions (also in docs/plot.md):

* **Alignment.** Seeds whose values sit at the same x (tasks of permuted MNIST, plasticity
  probes every N steps) are compared point by point. Otherwise (episode returns end at
  different steps in every seed) each seed's points are averaged in ``points`` equal-width bins
  over ``[0, the last x of any seed]``; a bin without points of a seed takes the linear
  interpolation between that seed's neighbouring non-empty bins, and bins before a seed's
  first or after its last point stay empty (NaN), so a seed that has not got that far does not
  count there. The grid's x values are the bins' centres.
* **Band.** ``stderr``: the mean over the seeds with a value at that x, plus or minus the
  standard error ``std(ddof=1) / sqrt(n)`` (zero width for one seed). ``bootstrap``: the
  percentile bootstrap 95% interval of the mean: ``B`` resamples of the ``n`` seeds with
  replacement (``numpy.random.default_rng(seed).integers(0, n, (B, n))``), the 2.5th and
  97.5th percentiles of the resampled means (numpy's linear interpolation).
* **Final** performance of a seed: the mean of its curve over the last 10% of training (grid
  points with ``x > x0 + 0.9 (T - x0)``, ``x0`` the grid's first and ``T`` its last x that any
  seed reached); the setting's final value is the mean over seeds with its interval.
* **Best**: the maximum over x of the seed-mean curve, with that point's interval and x
  (optimistic: it is a maximum over noisy points).
* **Average**: the mean of each seed's curve over all of training (the area under it divided
  by its length, on the grid), then over seeds.
"""

from __future__ import annotations

import contextlib
import csv
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

__all__ = [
    "BANDS",
    "Band",
    "Interval",
    "Series",
    "Summary",
    "align",
    "band",
    "bin_curves",
    "bootstrap_interval",
    "interval",
    "summarize",
    "write_tables",
]

BandName = Literal["stderr", "bootstrap"]
BANDS: tuple[str, ...] = get_args(BandName)
FINAL_FRACTION = 0.1


@dataclass(frozen=True)
class Series:
    """One quantity of one or more seeds: ``values[seed, i]`` at ``x[i]`` (NaN where missing)."""

    x: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.x):
            raise ValueError(
                f"values must be [seeds, {len(self.x)}], got shape {self.values.shape}"
            )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence numpy's all-NaN warnings (missing points are expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


# --------------------------------------------------------------------------- alignment


def bin_curves(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int, *, start: float | None = None
) -> Series:
    """Per-seed ``(x, y)`` points on a common grid of ``points`` bins (see the module doc)."""
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves]
    curves = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in curves]
    nonempty = [x for x, _ in curves if len(x)]
    if not nonempty:
        return Series(np.zeros(0), np.zeros((len(curves), 0)))
    lowest = min(float(x.min()) for x in nonempty)
    end = max(float(x.max()) for x in nonempty)
    begin = min(0.0, lowest) if start is None else start
    if end <= begin:
        end = begin + 1.0
    edges = np.linspace(begin, end, points + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    values = np.full((len(curves), points), np.nan)
    for row, (x, y) in enumerate(curves):
        if not len(x):
            continue
        index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, points - 1)
        sums = np.bincount(index, weights=y, minlength=points)
        counts = np.bincount(index, minlength=points)
        filled = counts > 0
        means = np.where(filled, sums / np.maximum(counts, 1), np.nan)
        first, last = np.flatnonzero(filled)[[0, -1]]
        inside = np.arange(first, last + 1)
        values[row, inside] = np.interp(centres[inside], centres[filled], means[filled])
    return Series(centres, values)


def align(series: Sequence[Series], points: int = 100) -> Series:
    """The seeds of several series on one grid: stacked as they are when they all share the
    same x, else binned (:func:`bin_curves`)."""
    series = list(series)
    if not series:
        raise ValueError("nothing to align")
    first = series[0].x
    if all(len(s.x) == len(first) and np.array_equal(s.x, first) for s in series):
        return Series(first, np.concatenate([s.values for s in series]))
    curves = [(s.x, row) for s in series for row in s.values]
    return bin_curves(curves, points)


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its interval."""

    mean: float
    low: float
    high: float
    count: int
    """Seeds that have a value."""


def bootstrap_interval(
    values: np.ndarray, *, samples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (finite entries)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return float(values[0]), float(values[0])
    index = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    means = values[index].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def interval(
    values: np.ndarray, method: str = "stderr", *, samples: int = 2000, seed: int = 0
) -> Interval:
    """Mean over the finite ``values`` (one per seed) with a ``stderr`` or ``bootstrap`` band."""
    if method not in BANDS:
        raise ValueError(f"unknown band {method!r}; choose {', '.join(BANDS)}")
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if method == "bootstrap":
        low, high = bootstrap_interval(values, samples=samples, seed=seed)
        return Interval(mean, low, high, n)
    error = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return Interval(mean, mean - error, mean + error, n)


@dataclass(frozen=True)
class Band:
    """A line: per x, the mean over seeds and the band's edges."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray


def band(series: Series, method: str = "stderr", *, samples: int = 2000, seed: int = 0) -> Band:
    """The mean over seeds and a ``stderr`` or ``bootstrap`` band at every x of ``series``
    (x values no seed has are left out)."""
    columns = [
        interval(series.values[:, i], method, samples=samples, seed=seed)
        for i in range(len(series.x))
    ]
    keep = np.array([c.count > 0 for c in columns], dtype=bool)
    kept = [c for c in columns if c.count > 0]
    return Band(
        series.x[keep] if len(keep) else series.x,
        np.array([c.mean for c in kept]),
        np.array([c.low for c in kept]),
        np.array([c.high for c in kept]),
        np.array([c.count for c in kept], dtype=int),
    )


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    """Final, best and average value of one metric for one setting."""

    setting: str
    metric: str
    seeds: int
    final: Interval
    average: Interval
    best: Interval | None
    """``None`` for measures that are not a performance (no "best" direction)."""
    best_at: float
    method: str


def summarize(
    setting: str,
    metric: str,
    series: Series,
    *,
    method: str = "stderr",
    performance: bool = True,
    samples: int = 2000,
    seed: int = 0,
) -> Summary:
    """The summary of an aligned series (see the module doc for the definitions)."""
    values = series.values
    with quiet():
        reached = np.flatnonzero(np.isfinite(values).any(axis=0))
    if not len(reached):
        nothing = Interval(math.nan, math.nan, math.nan, 0)
        return Summary(setting, metric, 0, nothing, nothing, None, math.nan, method)
    x0, end = float(series.x[reached[0]]), float(series.x[reached[-1]])
    window = series.x > x0 + (1.0 - FINAL_FRACTION) * (end - x0)
    if not window.any():
        window = series.x >= end
    with quiet():
        final_per_seed = np.nanmean(values[:, window], axis=1)
        average_per_seed = np.nanmean(values[:, reached], axis=1)
    final = interval(final_per_seed, method, samples=samples, seed=seed)
    average = interval(average_per_seed, method, samples=samples, seed=seed)
    best, best_at = None, math.nan
    if performance:
        curve = band(series, method, samples=samples, seed=seed)
        k = int(np.argmax(curve.mean))
        best = Interval(
            float(curve.mean[k]), float(curve.low[k]), float(curve.high[k]), int(curve.count[k])
        )
        best_at = float(curve.x[k])
    seeds = int(np.isfinite(values).any(axis=1).sum())
    return Summary(setting, metric, seeds, final, average, best, best_at, method)


CSV_COLUMNS = (
    "metric",
    "setting",
    "seeds",
    "final",
    "final_low",
    "final_high",
    "final_seeds",
    "best",
    "best_low",
    "best_high",
    "best_at",
    "average",
    "average_low",
    "average_high",
    "interval",
)


def _interval_name(method: str) -> str:
    return "bootstrap 95%" if method == "bootstrap" else "standard error"


def write_tables(
    summaries: Sequence[Summary], out: Path, *, x_name: str = "step", stem: str = "summary"
) -> list[Path]:
    """``summary.csv`` (every number) and ``summary.md`` (one table per metric); returns both
    paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for s in summaries:
            best = s.best or Interval(math.nan, math.nan, math.nan, 0)
            writer.writerow(
                [
                    s.metric,
                    s.setting,
                    s.seeds,
                    *_numbers(s.final),
                    s.final.count,
                    *_numbers(best),
                    _number(s.best_at),
                    *_numbers(s.average),
                    _interval_name(s.method),
                ]
            )
    md_path.write_text(_markdown(summaries, x_name), encoding="utf-8")
    return [csv_path, md_path]


def _number(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6g}"


def _numbers(i: Interval) -> list[str]:
    return [_number(i.mean), _number(i.low), _number(i.high)]


def _cell(i: Interval | None, method: str) -> str:
    if i is None or not math.isfinite(i.mean):
        return "-"
    if method == "bootstrap":
        return f"{i.mean:.4g} [{i.low:.4g}, {i.high:.4g}]"
    return f"{i.mean:.4g} ± {(i.high - i.low) / 2:.2g}"


def _markdown(summaries: Sequence[Summary], x_name: str) -> str:
    metrics = list(dict.fromkeys(s.metric for s in summaries))
    lines = []
    for metric in metrics:
        rows = [s for s in summaries if s.metric == metric]
        method = rows[0].method
        lines += [f"### {metric}", ""]
        performance = any(s.best is not None for s in rows)
        if performance:
            lines += [
                "| setting | seeds | final | best | best at | average |",
                "|---|---|---|---|---|---|",
            ]
        else:
            lines += ["| setting | seeds | final | average |", "|---|---|---|---|"]
        for s in rows:
            cells = [s.setting, str(s.seeds), _cell(s.final, method)]
            if performance:
                cells += [_cell(s.best, method), f"{x_name} {s.best_at:.4g}"]
            cells.append(_cell(s.average, method))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"Intervals: {_interval_name(summaries[0].method) if summaries else ''} over seeds. "
        "Final: each seed's mean over the last 10% of training, then the mean over seeds. "
        "Best: the maximum over training of the mean-over-seeds curve (and where). Average: "
        "each seed's mean over all of training, then over seeds.",
        "",
    ]
    return "\n".join(lines)
