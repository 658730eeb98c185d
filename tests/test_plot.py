"""``python -m cbp_rl.plot``: readers, grouping, statistics, and PNGs with content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbp_rl.lab.plot import (
    Figure,
    Series,
    binned,
    combine,
    group_runs,
    line_points,
    load_run,
    main,
    mean_and_stderr,
    plot_metric,
)
from cbp_rl.run.logging import RunLogger
from cbp_rl.supervised.results import RunResults

pytestmark = pytest.mark.usefixtures("single_thread")


def fake_pmnist_run(
    path: Path, learner: str, seeds: list[int], shift: float, **extra: object
) -> Path:
    """A run directory as the pmnist command leaves it (results.npz and config.json)."""
    path.mkdir(parents=True)
    tasks, depth = 6, 3
    results = RunResults(seeds, tasks, depth, examples_per_task=100)
    rng = np.random.default_rng(len(seeds))
    for task in range(tasks):
        s = len(seeds)
        results.record_measures(
            task,
            {
                "dead_units": np.full((s, depth), 0.01 * task),
                "effective_rank": np.full((s, depth), 50.0 - task),
                "rank99": np.full((s, depth), 80.0 - task),
                "weight_magnitude": np.full((s, depth + 1), 0.05 + 0.01 * task),
                "weight_magnitude_all": np.full(s, 0.05 + 0.01 * task),
            },
        )
        accuracy = 0.9 - shift * task + 0.01 * rng.standard_normal(s)
        results.record_task(
            task, accuracy, 1.0 - accuracy, np.full((s, depth), 3 * (learner == "cbp"))
        )
    results.save(path)
    config = {
        "learner": learner,
        "seed": seeds[0],
        "seeds": len(seeds),
        "tasks": tasks,
        "run": {"run_dir": str(path)},
        "cbp": {"replacement_rate": 1e-4},
        **extra,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def assert_png_has_content(path: Path) -> None:
    import matplotlib.image

    assert path.suffix == ".png" and path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 400
    assert float(image[..., :3].std()) > 0.05  # not blank
    # some pixels are neither white nor grey: the coloured lines
    rgb = image[..., :3]
    assert float((rgb.max(axis=2) - rgb.min(axis=2)).max()) > 0.3


def test_plot_writes_the_thesis_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bp = fake_pmnist_run(tmp_path / "bp", "bp", [0, 1, 2], shift=0.03)
    cbp = fake_pmnist_run(tmp_path / "cbp", "cbp", [0, 1, 2], shift=0.0)
    out = tmp_path / "figures"
    assert main([str(bp), str(cbp), "--out", str(out)]) == 0
    written = {Path(line).name for line in capsys.readouterr().out.split()}
    assert {
        "accuracy.png",
        "dead_units.png",
        "weight_magnitude.png",
        "effective_rank.png",
    } <= written
    for name in written:
        assert_png_has_content(out / name)


def test_plot_defaults_to_the_run_folder_and_reads_event_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "tb"
    for seed in (0, 1):
        with RunLogger(run_dir / f"seed_{seed}", {"learner": "ppo"}) as logger:
            for step in range(1, 6):
                logger.scalar("charts/episodic_return", step * (seed + 1), step)
    run = load_run(run_dir)
    series = run.series["charts/episodic_return"]
    np.testing.assert_array_equal(series.x, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(series.values, [[1, 2, 3, 4, 5], [2, 4, 6, 8, 10]])
    assert main([str(run_dir)]) == 0
    assert_png_has_content(run_dir / "plots" / "charts_episodic_return.png")


def test_runs_group_by_setting_and_seeds_combine(tmp_path: Path) -> None:
    a = load_run(fake_pmnist_run(tmp_path / "a", "cbp", [0, 1], 0.0))
    b = load_run(fake_pmnist_run(tmp_path / "b", "cbp", [2], 0.0))  # same setting, more seeds
    c = load_run(fake_pmnist_run(tmp_path / "c", "cbp", [0], 0.0, cbp={"replacement_rate": 1e-5}))
    groups = group_runs([a, b, c])
    assert sorted(groups) == ["cbp (replacement_rate=0.0001)", "cbp (replacement_rate=1e-05)"]
    merged = combine(r.series["accuracy"] for r in groups["cbp (replacement_rate=0.0001)"])
    assert merged.values.shape == (3, 6)


def test_mean_and_standard_error_by_hand() -> None:
    values = np.array([[1.0, 2.0, np.nan], [3.0, 6.0, 5.0]])
    mean, stderr, count = mean_and_stderr(values)
    np.testing.assert_allclose(mean, [2.0, 4.0, 5.0])
    np.testing.assert_allclose(stderr, [np.sqrt(2) / np.sqrt(2), np.sqrt(8) / np.sqrt(2), 0.0])
    np.testing.assert_array_equal(count, [2, 2, 1])


def test_sparse_measures_are_joined_up() -> None:
    values = np.full((2, 6), np.nan)
    values[:, ::3] = [[1.0, 2.0], [3.0, 4.0]]
    x, mean, stderr, seeds = line_points(Series(np.arange(1.0, 7.0), values))
    np.testing.assert_array_equal(x, [1.0, 4.0])
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(stderr, [1.0, 1.0])
    assert seeds == 2


def test_binning_averages_blocks() -> None:
    series = Series(np.arange(1.0, 7.0), np.array([[1.0, 3.0, 5.0, 7.0, 9.0, 11.0]]))
    out = binned(series, 3)
    np.testing.assert_allclose(out.x, [2.0, 5.0])
    np.testing.assert_allclose(out.values, [[3.0, 9.0]])


def test_plot_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    run = fake_pmnist_run(tmp_path / "r", "bp", [0], 0.0)
    assert main([str(run), "--metrics", "nope"]) == 2
    assert "available" in capsys.readouterr().err


def test_more_lines_than_colours_stay_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evidence of the methods page draws 15 learners; matplotlib has 10 colours."""
    import matplotlib.figure

    drawn: list[tuple[str, str]] = []
    save = matplotlib.figure.Figure.savefig

    def record(figure: matplotlib.figure.Figure, *args: object, **kwargs: object) -> None:
        lines = figure.axes[0].get_lines()
        drawn.extend((str(line.get_color()), str(line.get_linestyle())) for line in lines)
        save(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    lines = {f"learner {i}": Series(np.arange(5.0), np.full((2, 5), float(i))) for i in range(15)}
    path = plot_metric("accuracy", Figure("accuracy", "%"), lines, tmp_path)
    assert_png_has_content(path)
    assert len(drawn) == 15 and len(set(drawn)) == 15
