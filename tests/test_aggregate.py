"""Statistics over seeds against values worked out by hand: alignment, standard errors,
bootstrap intervals, final/best/average summaries and the tables."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from cbp_rl.lab.aggregate import (
    Series,
    align,
    band,
    bin_curves,
    bootstrap_interval,
    interval,
    summarize,
    write_tables,
)


def test_standard_error_interval_by_hand() -> None:
    # mean 3; deviations -2, -1, 0, 3: sum of squares 14, sample variance 14/3
    result = interval(np.array([1.0, 2.0, 3.0, 6.0, np.nan]), "stderr")
    error = math.sqrt(14 / 3) / 2  # / sqrt(4 seeds)
    assert result.mean == 3.0 and result.count == 4
    assert result.low == pytest.approx(3.0 - error) and result.high == pytest.approx(3.0 + error)
    one = interval(np.array([5.0]), "stderr")
    assert (one.mean, one.low, one.high, one.count) == (5.0, 5.0, 5.0, 1)
    assert interval(np.array([np.nan]), "stderr").count == 0


def test_bootstrap_interval_by_hand() -> None:
    # two seeds 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4), so with
    # thousands of resamples the 2.5th percentile is 0 and the 97.5th is 1
    low, high = bootstrap_interval(np.array([0.0, 1.0]), samples=4000, seed=3)
    assert (low, high) == (0.0, 1.0)
    # identical seeds: no spread at all
    assert bootstrap_interval(np.array([2.0, 2.0, 2.0])) == (2.0, 2.0)
    result = interval(np.array([0.0, 1.0]), "bootstrap", samples=4000)
    assert (result.mean, result.low, result.high) == (0.5, 0.0, 1.0)
    # it is a percentile interval: inside [min, max] of the seeds, around the mean
    values = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    low, high = bootstrap_interval(values, samples=2000, seed=0)
    assert 1.0 <= low < values.mean() < high <= 8.0
    # the same seed gives the same interval
    assert bootstrap_interval(values, samples=2000, seed=0) == (low, high)
    with pytest.raises(ValueError, match="unknown band"):
        interval(values, "sem")


def test_binning_seeds_logged_at_different_steps() -> None:
    # grid [0, 8] in 4 bins of width 2: centres 1, 3, 5, 7
    first = (np.array([0.0, 1.0, 5.0, 8.0]), np.array([2.0, 4.0, 10.0, 20.0]))
    second = (np.array([2.5, 3.5]), np.array([1.0, 3.0]))
    series = bin_curves([first, second], points=4)
    assert series.x.tolist() == [1.0, 3.0, 5.0, 7.0]
    # seed 1: bin 0 holds 2 and 4 (mean 3), bin 1 nothing (interpolated between 3 at x=1 and
    # 10 at x=5: 6.5), bin 2 holds 10, bin 3 holds 20 (x = 8 is the last edge)
    assert series.values[0].tolist() == [3.0, 6.5, 10.0, 20.0]
    # seed 2: only bin 1 (mean 2); before and after its points: missing
    assert np.isnan(series.values[1, [0, 2, 3]]).all() and series.values[1, 1] == 2.0
    line = band(series, "stderr")
    assert line.mean.tolist() == [3.0, 4.25, 10.0, 20.0]
    assert line.count.tolist() == [1, 2, 1, 1]
    # x = 3: seeds 6.5 and 2, sample std |6.5 - 2| / sqrt(2), over sqrt(2): 2.25
    assert line.high[1] - line.mean[1] == pytest.approx(2.25)


def test_series_on_the_same_steps_are_stacked_unchanged() -> None:
    x = np.array([1.0, 2.0, 3.0])
    a = Series(x, np.array([[1.0, 2.0, 3.0]]))
    b = Series(x, np.array([[3.0, 4.0, 5.0]]))
    aligned = align([a, b])
    assert aligned.x.tolist() == x.tolist()
    assert aligned.values.tolist() == [[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match="values must be"):
        Series(x, np.zeros((2, 4)))


def summary_series() -> Series:
    # tasks 1..21; seed a rises 0, 1, ..., 20; seed b is 10 everywhere but 30 at task 11
    x = np.arange(1.0, 22.0)
    a = np.arange(21.0)
    b = np.full(21, 10.0)
    b[10] = 30.0
    return Series(x, np.stack([a, b]))


def test_final_best_and_average_by_hand() -> None:
    summary = summarize("cbp", "accuracy", summary_series(), method="stderr")
    # final: x > 1 + 0.9 * (21 - 1) = 19, i.e. tasks 20 and 21: seed a 19.5, seed b 10
    assert summary.final.mean == pytest.approx(14.75)
    assert summary.final.high - summary.final.mean == pytest.approx(9.5 / 2)
    # best: the seed-mean curve (i + 10) / 2, except (10 + 30) / 2 = 20 at task 11; at task
    # 21 it is (20 + 10) / 2 = 15, so the best is 20 at task 11
    assert summary.best is not None and summary.best.mean == 20.0 and summary.best_at == 11.0
    # there the seeds are 10 and 30: sample std 20 / sqrt(2), standard error 10
    assert summary.best.high - summary.best.mean == pytest.approx(10.0)
    # average: seed a 10, seed b (20 * 10 + 30) / 21
    b_mean = 230 / 21
    assert summary.average.mean == pytest.approx((10 + b_mean) / 2)
    assert summary.seeds == 2
    measure = summarize("cbp", "dead_units", summary_series(), performance=False)
    assert measure.best is None and math.isnan(measure.best_at)


def test_tables_hold_every_number(tmp_path: Path) -> None:
    summaries = [
        summarize("bp", "accuracy", summary_series()),
        summarize("bp", "dead_units", summary_series(), performance=False),
    ]
    csv_path, md_path = write_tables(summaries, tmp_path, x_name="task")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["metric"], r["setting"]) for r in rows] == [("accuracy", "bp"), ("dead_units", "bp")]
    assert float(rows[0]["final"]) == pytest.approx(14.75)
    assert float(rows[0]["final_low"]) == pytest.approx(14.75 - 4.75)
    assert float(rows[0]["best"]) == 20.0 and float(rows[0]["best_at"]) == 11.0
    assert rows[1]["best"] == "" and rows[0]["interval"] == "standard error"
    markdown = md_path.read_text(encoding="utf-8")
    assert "| bp | 2 | 14.75 ± 4.8 | 20 ± 10 | task 11 |" in markdown
    assert "### dead_units" in markdown and "| setting | seeds | final | average |" in markdown
    bootstrap = [summarize("bp", "accuracy", summary_series(), method="bootstrap")]
    write_tables(bootstrap, tmp_path, stem="boot")
    assert "bootstrap 95%" in (tmp_path / "boot.md").read_text(encoding="utf-8")
