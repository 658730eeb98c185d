"""Sweeps end to end: real runs of the real commands on the local pool and on a real local Ray,
a run killed mid-way, Ctrl+C, relaunches, the status view, and the plot command on the folder.

The permuted-MNIST runs are tiny (width 16, 16 tasks of 400 real digits) so every run takes a
few seconds; the uninterrupted local sweep is the reference every other way of running the same
spec must match bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import same, tiny_ppo_sweep_spec

from cbp_rl.lab import plot
from cbp_rl.lab import sweep as sweep_module
from cbp_rl.lab.backends import Attempt, Outcome
from cbp_rl.lab.spec import Resources, SweepSpec, expand, load_spec
from cbp_rl.lab.sweep import (
    Driver,
    SweepPaths,
    has_checkpoint,
    load_manifest,
    main,
    run_states,
    write_manifest,
)
from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_run_status, read_tags

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("cbp-s0", "cbp-s1")
TASKS, EXAMPLES = 16, 400


def pmnist_spec(path: Path, data: Path | None, *, retries: int = 2) -> Path:
    """A tiny spec; ``data`` None leaves the MNIST folder to ``--set data-dir=...``."""
    data_line = "" if data is None else f'data-dir = "{data}"'
    path.write_text(
        f"""
command = "pmnist"
seeds = 2
max_retries = {retries}

[base]
width = 16
tasks = {TASKS}
examples-per-task = {EXAMPLES}
{data_line}
progress = false

[settings.cbp]
learner = "cbp"
replacement-rate = 0.001
maturity-threshold = 20
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """The spec run uninterrupted by the local backend (two runs at once on two cores)."""
    root = tmp_path_factory.mktemp("reference")
    spec = pmnist_spec(root / "spec.toml", mnist_dir)
    assert main([str(spec), "--out", str(root / "sweep"), "--num-cpus", "2"]) == 0
    return root / "sweep"


def training_state(run_dir: Path) -> dict[str, Any]:
    """What a pmnist run learned and measured: results per task and its final learner state."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    with np.load(run_dir / "results.npz") as data:
        results = {name: data[name] for name in data.files}
    return {"results": results, **{k: state[k] for k in ("engine", "stream", "task", "position")}}


def assert_like_reference(sweep: Path, reference: Path) -> None:
    for run in RUNS:
        same(training_state(sweep / "runs" / run), training_state(reference / "runs" / run), run)


def attempts(sweep: Path, run: str) -> list[str]:
    """The command lines of a run's attempts, from its log."""
    text = (sweep / "logs" / f"{run}.log").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("=== attempt")]


def start_sweep(spec: Path, out: Path, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cbp_rl.sweep",
            str(spec),
            "--out",
            str(out),
            "--num-cpus",
            "2",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.stdout.read().decode() if process.stdout else ""
            process.kill()
            pytest.fail(f"the sweep ended or stalled before the condition held:\n{output}")
        time.sleep(0.02)


def mid_way(sweep: Path, run: str) -> bool:
    """Whether the run has written a checkpoint and is not finished."""
    status = read_run_status(sweep / "runs" / run)
    saved = (sweep / "runs" / run / "checkpoint.pt").is_file()
    return saved and status is not None and 0 < status.step < status.total


# --------------------------------------------------------------------------- backends


def test_local_sweep_runs_two_seeds_and_the_plot_command_reads_it(
    reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = load_manifest(reference)
    assert [run.name for run in manifest.runs] == list(RUNS)
    views = run_states(reference)
    assert [(v.name, v.state, v.step, v.total) for v in views] == [
        (run, "done", TASKS * EXAMPLES, TASKS * EXAMPLES) for run in RUNS
    ]
    for view, run in zip(views, RUNS, strict=True):
        results = training_state(reference / "runs" / run)["results"]
        assert view.value == pytest.approx(float(results["accuracy"][0, -1]))
        assert view.metric == "accuracy" and view.attempts == 1
    # the seeds are different runs
    first, second = (training_state(reference / "runs" / run)["results"] for run in RUNS)
    assert not np.array_equal(first["accuracy"], second["accuracy"])

    capsys.readouterr()
    assert main(["status", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out and "cbp-s1  done" in out and "accuracy" in out

    plots = reference.parent / "plots"
    assert plot.main([str(reference), "--out", str(plots)]) == 0
    for name in ("accuracy", "dead_units", "weight_magnitude", "effective_rank"):
        assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(plots / "summary.csv", newline="", encoding="utf-8") as f:
        rows = {(row["metric"], row["setting"]): row for row in csv.DictReader(f)}
    accuracy = rows[("accuracy", "cbp")]
    per_seed = [training_state(reference / "runs" / run)["results"]["accuracy"] for run in RUNS]
    curves = 100.0 * np.concatenate(per_seed)  # [2 seeds, 16 tasks], in %
    # the last 10% of tasks 1..16: tasks > 1 + 0.9 * 15 = 14.5, i.e. tasks 15 and 16
    final = curves[:, -2:].mean(axis=1)
    assert int(accuracy["seeds"]) == 2
    assert float(accuracy["final"]) == pytest.approx(final.mean(), rel=1e-5)
    error = final.std(ddof=1) / np.sqrt(2)
    assert float(accuracy["final_low"]) == pytest.approx(final.mean() - error, rel=1e-5)
    best = int(np.argmax(curves.mean(0)))
    assert float(accuracy["best"]) == pytest.approx(curves.mean(0)[best], rel=1e-5)
    assert float(accuracy["best_at"]) == best + 1
    markdown = (plots / "summary.md").read_text(encoding="utf-8")
    assert "### accuracy" in markdown and "| cbp | 2 |" in markdown


def test_ray_sweep_runs_two_seeds_like_the_local_pool(
    reference: Path, tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")  # in the test extra; the backend itself explains a missing Ray
    spec = pmnist_spec(tmp_path / "spec.toml", mnist_dir)
    out = tmp_path / "sweep"
    code = main([str(spec), "--backend", "ray", "--num-cpus", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "on Ray (a local Ray: 2 CPUs" in printed
    assert [v.state for v in run_states(out)] == ["done", "done"]
    assert_like_reference(out, reference)


def test_the_ray_backend_without_ray_says_how_to_get_it(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = pmnist_spec(tmp_path / "spec.toml", mnist_dir)
    code = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['ray'] = None\n"
            "from cbp_rl.lab.sweep import main\n"
            f"sys.exit(main([{str(spec)!r}, '--backend', 'ray', '--out', {str(tmp_path)!r}]))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert code.returncode == 2
    assert "pip install 'cbp_rl[ray]'" in code.stderr


# --------------------------------------------------------------------------- faults


def test_a_run_killed_mid_way_is_retried_from_its_checkpoint_and_ends_the_same(
    reference: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    spec = pmnist_spec(tmp_path / "spec.toml", mnist_dir, retries=1)
    out = tmp_path / "sweep"
    sweep = start_sweep(spec, out)
    wait_until(lambda: mid_way(out, "cbp-s0"), sweep)
    status = read_run_status(out / "runs" / "cbp-s0")
    assert status is not None
    os.kill(status.pid, signal.SIGKILL)  # the run's process dies without a word
    output = sweep.communicate(timeout=300)[0].decode()
    assert sweep.returncode == 0, output
    assert "cbp-s0: died (killed by SIGKILL); retrying from its last checkpoint" in output
    tries = attempts(out, "cbp-s0")
    assert len(tries) == 2 and "--resume" not in tries[0] and "--resume" in tries[1]
    state = json.loads((out / "state.json").read_text())["runs"]
    assert state["cbp-s0"]["exit_codes"] == [-signal.SIGKILL, 0]
    assert state["cbp-s1"]["exit_codes"] == [0]
    assert_like_reference(out, reference)

    # a relaunch finds both runs finished and reruns nothing
    files = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert main([str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == files
    assert len(attempts(out, "cbp-s0")) == 2 and len(attempts(out, "cbp-s1")) == 1


def test_ctrl_c_leaves_runs_resumable_and_a_relaunch_finishes_them(
    reference: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    spec = pmnist_spec(tmp_path / "tiny.toml", None)
    out = tmp_path / "sweep"
    sweep = start_sweep(spec, out, "--set", f"data-dir={mnist_dir}")
    wait_until(lambda: mid_way(out, "cbp-s0"), sweep)
    sweep.send_signal(signal.SIGINT)  # what a terminal's Ctrl+C sends the sweep
    output = sweep.communicate(timeout=300)[0].decode()
    assert sweep.returncode == 128 + signal.SIGINT, output
    assert "relaunch to continue" in output
    views = {v.name: v for v in run_states(out)}
    assert views["cbp-s0"].state == "stopped" and 0 < views["cbp-s0"].step < views["cbp-s0"].total
    # the other run stopped too, unless it had just finished, or (a loaded machine) had not yet
    # written a status or a checkpoint: then nothing is there to resume and it is pending
    assert views["cbp-s1"].state in ("stopped", "done", "pending")
    if views["cbp-s1"].state == "pending":
        assert views["cbp-s1"].step == 0 and not has_checkpoint(out / "runs" / "cbp-s1")
    stopped = [name for name, view in views.items() if view.state == "stopped"]
    # the plot says how far an unfinished run got
    plotted = {run.path.name: run for run in plot.load_sweep(out)}
    done = plotted["cbp-s0"].done
    assert done == views["cbp-s0"].step / views["cbp-s0"].total and done is not None and done < 1
    first_events = {p.name for p in (out / "runs" / "cbp-s0").glob("events.out.tfevents.*")}

    # the folder alone relaunches: its spec.toml, with the --set flags of the first launch
    assert main([str(out)]) == 0
    assert load_manifest(out).name == "tiny"
    assert load_manifest(out).overrides == {"data-dir": str(mnist_dir)}
    for run in stopped:
        tries = attempts(out, run)
        assert len(tries) == 2 and "--resume" in tries[1]
    assert_like_reference(out, reference)
    events = {p.name for p in (out / "runs" / "cbp-s0").glob("events.out.tfevents.*")}
    assert first_events < events  # the first process's logs are kept, a new file added


def test_a_refused_run_fails_at_once_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    spec = pmnist_spec(tmp_path / "spec.toml", empty)
    out = tmp_path / "sweep"
    assert main([str(spec), "--out", str(out), "--set", "download=false"]) == 1
    views = run_states(out)
    assert [v.state for v in views] == ["failed", "failed"]
    assert all("refused" in v.note and v.attempts == 1 for v in views)
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    assert "2 failed" in capsys.readouterr().out


class DyingBackend:
    """A backend whose every attempt dies (SIGKILL), to count the driver's retries."""

    description = "test backend"
    queues = False

    def __init__(self) -> None:
        self.started: list[Attempt] = []
        self.live: list[Attempt] = []

    def has_room(self, resources: Resources) -> bool:
        return not self.live

    def start(self, attempt: Attempt, resources: Resources) -> Outcome | None:
        self.started.append(attempt)
        self.live.append(attempt)
        return None

    def wait(self, timeout: float) -> list[tuple[Attempt, Outcome]]:
        ended, self.live = self.live, []
        return [(attempt, Outcome(-signal.SIGKILL)) for attempt in ended]

    def running(self) -> list[Attempt]:
        return list(self.live)

    def stop(self, *, abort: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_run_that_keeps_dying_fails_after_max_retries(tmp_path: Path, mnist_dir: Path) -> None:
    from cbp_rl.lab.sweep import StopSignals

    spec: SweepSpec = load_spec(pmnist_spec(tmp_path / "spec.toml", mnist_dir, retries=2))
    paths = SweepPaths(tmp_path / "sweep")
    paths.root.mkdir()
    write_manifest(paths, spec, expand(spec))
    backend = DyingBackend()
    driver = Driver(paths, load_manifest(paths.root), backend, max_retries=2)
    with StopSignals() as stop:
        assert driver.run(stop) == 1
    assert [a.run for a in backend.started] == ["cbp-s0"] * 3 + ["cbp-s1"] * 3
    assert [a.number for a in backend.started[:3]] == [1, 2, 3]
    assert all(a.env.get("OMP_NUM_THREADS", "1") == "1" for a in backend.started)
    record = driver.records["cbp-s0"]
    assert record.state == "failed" and record.exit_codes == [-signal.SIGKILL] * 3
    assert "killed by SIGKILL after 3 attempts" in record.note


def test_a_relaunch_refuses_a_spec_that_changes_existing_runs(
    reference: Path, tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = pmnist_spec(tmp_path / "spec.toml", mnist_dir)
    text = spec.read_text().replace('learner = "cbp"', 'learner = "cbp"\nstep-size = 0.01')
    spec.write_text(text)
    before = (reference / "sweep.json").read_text()
    assert main([str(spec), "--out", str(reference)]) == 2
    assert "only the budget may change" in capsys.readouterr().err
    assert (reference / "sweep.json").read_text() == before


def test_a_ppo_sweep_reports_returns_and_plots_curves_and_plasticity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real MuJoCo: two seeds of a tiny PPO on Hopper-v4, the status view's latest return (the
    mean of the last 10 episodes), and the return and plasticity figures of the folder."""
    spec = tmp_path / "ppo.toml"
    spec.write_text(
        tiny_ppo_sweep_spec(
            seeds=2,
            total_steps=1024,
            settings="""[settings.cbp]
preset = "cbp"
""",
        ),
        encoding="utf-8",
    )
    out = tmp_path / "sweep"
    assert main([str(spec), "--out", str(out), "--num-cpus", "2"]) == 0
    for view in run_states(out):
        assert (view.state, view.step, view.total, view.metric) == ("done", 1024, 1024, "return")
        with open(out / "runs" / view.name / "episodes.csv", newline="", encoding="utf-8") as f:
            returns = [float(row["return"]) for row in csv.DictReader(f)]
        assert view.value == pytest.approx(np.mean(returns[-10:]), rel=1e-6)
    capsys.readouterr()
    assert plot.main([str(out), "--band", "bootstrap"]) == 0
    written = {Path(line).name for line in capsys.readouterr().out.split()}
    assert {"return.png", "policy_dead_units.png", "policy_weight_magnitude.png"} <= written
    assert {"policy_effective_rank.png", "summary.csv", "summary.md"} <= written
    assert {"policy_inactive.png", "policy_dormant.png", "policy_rank99.png"} <= written
    # the paper's "stable rank": rank99 of the last hidden layer as a percentage of its 16 units
    run = plot.load_run(out / "runs" / "cbp-s0")
    logged = read_tags(out / "runs" / "cbp-s0")["plasticity/policy/rank99/1"][1]
    assert np.array_equal(run.series["policy/rank99"].values[0], logged * 100.0 / 16)
    assert logged.min() > 0 and logged.max() <= 16
    markdown = (out / "plots" / "summary.md").read_text(encoding="utf-8")
    assert "### return" in markdown and "bootstrap 95%" in markdown


def test_a_sac_sweep_runs_on_the_shared_runner_and_plots_actor_and_critics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SAC through the same sweep machinery as PPO: two seeds of a tiny SAC with CBP on
    Pendulum-v1, done with their returns, and the actor's and critics' measures plotted."""
    spec = tmp_path / "sac.toml"
    spec.write_text(
        """
command = "sac"
seeds = 2
[base]
env = "Pendulum-v1"
hidden-sizes = [16, 16]
batch-size = 32
warmup-steps = 100
total-steps = 400
plasticity-every = 200
probe-size = 32
progress = false
[settings.cbp]
preset = "cbp"
maturity-threshold = 10
""",
        encoding="utf-8",
    )
    out = tmp_path / "sweep"
    assert main([str(spec), "--out", str(out), "--num-cpus", "2"]) == 0
    views = run_states(out)
    assert [view.name for view in views] == ["cbp-s0", "cbp-s1"]
    for view in views:
        assert (view.state, view.step, view.total, view.metric) == ("done", 400, 400, "return")
        with open(out / "runs" / view.name / "episodes.csv", newline="", encoding="utf-8") as f:
            returns = [float(row["return"]) for row in csv.DictReader(f)]
        assert len(returns) == 2  # Pendulum's episodes are 200 steps long
        assert view.value == pytest.approx(np.mean(returns), rel=1e-6)
    capsys.readouterr()
    assert plot.main([str(out)]) == 0
    written = {Path(line).name for line in capsys.readouterr().out.split()}
    assert {
        "return.png",
        "actor_dead_units.png",
        "q1_dead_units.png",
        "q2_stable_rank.png",
    } <= written


def test_estimate_separates_per_example_and_per_task_costs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_dir: Path
) -> None:
    """The pmnist estimate recovers a known cost model: every short run probes as many examples
    as the real run (so the probe's cost is a per-task cost, not a per-example one), and the
    extrapolation is fixed + per example x examples + per task x tasks."""
    spec = load_spec(pmnist_spec(tmp_path / "spec.toml", mnist_dir))
    budgets: list[list[str]] = []

    def fake_measure(spec: SweepSpec, run: Any, budget: list[str], work: Path) -> tuple[float, int]:
        budgets.append(budget)
        flags = dict(zip(budget[::2], budget[1::2], strict=True))
        tasks, examples = int(flags["--tasks"]), int(flags["--examples-per-task"])
        probe = int(flags["--probe-examples"])
        seconds = 2.0 + 0.004 * tasks * examples + tasks * (0.5 + 0.001 * probe)
        return seconds, tasks * examples

    monkeypatch.setattr(sweep_module, "_measure", fake_measure)
    (result,) = sweep_module.estimate(spec, expand(spec), units=100, work=tmp_path)
    probe = min(2000, EXAMPLES)  # the spec's examples per task bound its probe
    assert {b[b.index("--probe-examples") + 1] for b in budgets} == {str(probe)}
    assert result.per_unit == pytest.approx(0.004)
    assert result.per_task == pytest.approx(0.5 + 0.001 * probe)
    assert result.fixed == pytest.approx(2.0)
    total = TASKS * EXAMPLES
    assert result.per_run == pytest.approx(2.0 + 0.004 * total + TASKS * (0.5 + 0.001 * probe))
    assert result.runs == 2


def test_estimate_times_real_short_runs(tmp_path: Path, mnist_dir: Path) -> None:
    """The real measurement: short runs of the spec's command, positive CPU costs.

    8,000 examples (about 2.5 CPU-s) between the short runs: a smaller difference drowns in the
    jitter of the runs' start-up (about 2 CPU-s each) on a loaded machine.
    """
    spec = load_spec(pmnist_spec(tmp_path / "spec.toml", mnist_dir))
    (result,) = sweep_module.estimate(spec, expand(spec), units=8000, work=tmp_path)
    assert result.per_unit > 0 and result.per_run > result.per_unit * TASKS * EXAMPLES
