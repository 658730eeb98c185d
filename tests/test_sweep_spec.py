"""Sweep specs: parsing, expansion into runs, flag and type checks, the ready specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cbp_rl.lab.commands import COMMANDS
from cbp_rl.lab.spec import (
    Resources,
    SpecError,
    expand,
    flag_argv,
    load_spec,
    parse_spec,
    parse_value,
)
from cbp_rl.lab.spec import command_flags as flags_of
from cbp_rl.lab.sweep import main

ROOT = Path(__file__).resolve().parents[1]
READY_SPECS = sorted((ROOT / "experiments").glob("*.toml"))


def ppo_spec(**extra: Any) -> dict[str, Any]:
    return {
        "command": "ppo",
        "seeds": 2,
        "base": {"env": "Hopper-v4", "total-steps": 1e6},
        "settings": {"standard": {"preset": "standard"}, "cbp": {"preset": "cbp"}},
        **extra,
    }


def test_settings_times_seeds_become_named_runs() -> None:
    spec = parse_spec(ppo_spec(grid={"lr": [1e-4, 3e-4]}), default_name="demo")
    runs = expand(spec)
    assert spec.name == "demo"
    assert [r.name for r in runs] == [
        f"{setting}_lr={lr}-s{seed}"
        for setting in ("standard", "cbp")
        for lr in ("0.0001", "0.0003")
        for seed in (0, 1)
    ]
    run = runs[-1]
    assert run.setting == "cbp_lr=0.0003" and run.seeds == (1,)
    assert run.total == 1_000_000  # 1e8-style floats become step counts
    words = list(run.argv)
    assert words[words.index("--preset") + 1] == "cbp"
    assert words[words.index("--lr") + 1] == "0.0003"
    assert words[words.index("--total-steps") + 1] == "1000000"
    assert words[-2:] == ["--seed", "1"]
    assert run.resume_flags == ("--total-steps", "1000000", "--resume-fallback")


def test_settings_as_a_list_and_explicit_seeds() -> None:
    document = ppo_spec(seeds=[3, 7])
    document["settings"] = [{"name": "a", "lr": 1e-3}, {"name": "b", "hidden-sizes": [8, 8]}]
    runs = expand(parse_spec(document))
    assert [r.name for r in runs] == ["a-s3", "a-s7", "b-s3", "b-s7"]
    assert "--hidden-sizes" in runs[2].argv
    index = runs[2].argv.index("--hidden-sizes")
    assert runs[2].argv[index + 1 : index + 3] == ("8", "8")


def test_pmnist_batches_consecutive_seeds() -> None:
    document = {
        "command": "pmnist",
        "seeds": [0, 1, 2, 3, 4, 9],
        "resources": {"seeds_per_run": 3, "cpus": 2},
        "base": {"width": 32, "tasks": 5, "examples-per-task": 100},
    }
    runs = expand(parse_spec(document))
    assert [r.name for r in runs] == ["base-s0-2", "base-s3-4", "base-s9"]
    assert runs[1].argv[-4:] == ("--seed", "3", "--seeds", "2")
    assert runs[0].total == 500 and runs[0].resources == Resources(2.0, 0.0, 3)
    assert runs[0].resume_flags == ("--tasks", "5", "--resume-fallback")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": "dqn"}, "unknown command 'dqn'; choose one of ppo, sac, pmnist, regression"),
        ({"sweeps": 3}, "unknown key(s) ['sweeps']"),
        ({"seeds": 0}, "seeds must be >= 1"),
        ({"seeds": "many"}, "seeds must be a count"),
        ({"grid": {"lr": 3e-4}}, "grid lr must be a non-empty list"),
        ({"resources": {"cpu": 2}}, "unknown key(s) ['cpu']"),
        ({"resources": {"seeds_per_run": 2}}, "needs a command that batches seeds"),
        ({"name": "a b"}, "must be letters, digits"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
        ({"resources": {"cpus": 0}}, "cpus must be > 0"),
        ({"resources": {"gpus": -1}}, "gpus must be a number >= 0, got -1"),
        ({"expected_cpu_hours": "lots"}, "expected_cpu_hours must be a number"),
        ({"seeds": [1, 1]}, "seeds repeat"),
        ({"settings": {"cbp": 3}}, "setting 'cbp' must be a table of flags"),
        ({"settings": {"cbp": {"resources": {"cpu": 2}}}}, "unknown key(s) ['cpu']"),
        ({"base": {"optim": {"lr": 1}}}, "optim is a table; flags take values"),
    ],
)
def test_bad_specs_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as error:
        expand(parse_spec({**ppo_spec(), **change}))
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"learning-rate": 1e-3}, "unknown flag --learning-rate for ppo"),
        ({"replacment-rate": 1e-3}, "did you mean --replacement-rate?"),
        ({"lr": "fast"}, "--lr expects a number, got 'fast'"),
        ({"num-envs": 2.5}, "--num-envs expects an integer, got 2.5"),
        ({"cbp": "yes"}, "--cbp expects true or false"),
        ({"hidden-sizes": 64}, "--hidden-sizes expects a list"),
        ({"betas": [0.9]}, "--betas expects 2 values"),
        ({"vector-mode": "fast"}, "--vector-mode must be one of auto, sync, async, batched"),
        ({"seed": 3}, "--seed is set by the sweep"),
        ({"run-dir": "x"}, "--run-dir is set by the sweep"),
        ({"lr": -1.0}, "ppo refuses it"),  # the command's own validation
        ({"env": "Hoper-v4"}, "did you mean Hopper-v4"),
    ],
)
def test_flags_are_checked_against_the_command(flags: dict[str, Any], message: str) -> None:
    document = ppo_spec()
    document["settings"]["cbp"] = {"preset": "cbp", **flags}
    with pytest.raises(SpecError) as error:
        expand(parse_spec(document))
    assert message in str(error.value)
    assert "setting 'cbp'" in str(error.value)


def test_flag_words_follow_the_field_types() -> None:
    ppo = flags_of(COMMANDS["ppo"].config)
    pmnist = flags_of(COMMANDS["pmnist"].config)
    assert flag_argv(ppo["cbp"], True) == ["--cbp"]
    assert flag_argv(ppo["parallel-update"], False) == ["--no-parallel-update"]
    assert flag_argv(pmnist["online-norm"], True) == ["--online-norm", "True"]
    assert flag_argv(pmnist["step-size"], None) == ["--step-size", "None"]
    assert flag_argv(ppo["total-steps"], 2e7) == ["--total-steps", "20000000"]
    assert flag_argv(ppo["betas"], [0.99, 0.99]) == ["--betas", "0.99", "0.99"]
    assert flag_argv(pmnist["data-dir"], "/data") == ["--data-dir", "/data"]
    with pytest.raises(SpecError, match="cannot be None"):
        flag_argv(ppo["lr"], None)


def test_overrides_and_set_values() -> None:
    assert parse_value("3e-4") == 3e-4
    assert parse_value("true") is True
    assert parse_value("[64, 64]") == [64, 64]
    assert parse_value("/some/dir") == "/some/dir"
    spec = parse_spec(ppo_spec(), overrides={"total_steps": 4096})
    assert all(run.total == 4096 for run in expand(spec))


def test_a_spec_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("command = ppo\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(path)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.toml")


def test_ready_specs_are_all_there() -> None:
    names = {path.stem for path in READY_SPECS}
    assert {
        "ppo_ant",
        "ppo_hopper",
        "ppo_walker2d",
        "ppo_slippery_ant",
        "pmnist_step_sizes",
        "pmnist_widths",
        "pmnist_change_rates",
        "pmnist_methods",
    } <= names


@pytest.mark.parametrize("path", READY_SPECS, ids=lambda p: p.stem)
def test_ready_spec_validates(path: Path) -> None:
    """Every ready spec parses, every flag is accepted by its command's own parser, and its
    expected cost is written in it; nothing runs."""
    spec = load_spec(path)
    runs = expand(spec)
    hours = spec.expected_gpu_hours if spec.expected_gpu_hours else spec.expected_cpu_hours
    assert hours is not None and hours > 0  # GPU workloads state GPU-hours
    assert len({run.name for run in runs}) == len(runs)
    if spec.command.name == "ppo":
        assert len(spec.seeds) == 30
        steps = 2e7 if "slippery" in path.stem else 1e8
        assert all(run.total == steps for run in runs)
        presets = {s.flags["preset"] for s in spec.settings}
        expected = {"standard", "l2", "cbp"} | (set() if "slippery" in path.stem else {"ns"})
        assert presets == expected


def test_paper_settings_of_the_ready_specs() -> None:
    """The figures' settings: step sizes, widths, change rates, methods."""

    def flag_set(stem: str, flag: str) -> set[Any]:
        spec = load_spec(ROOT / "experiments" / f"{stem}.toml")
        return {s.flags.get(flag) for s in spec.settings}

    assert flag_set("pmnist_step_sizes", "step-size") == {0.01, 0.003, 0.001}
    assert flag_set("pmnist_widths", "width") == {100, 1000, 10000}
    assert flag_set("pmnist_change_rates", "examples-per-task") == {10_000, 100_000, 1_000_000}
    spec = load_spec(ROOT / "experiments" / "pmnist_change_rates.toml")
    assert {run.total for run in expand(spec)} == {48_000_000}
    assert flag_set("pmnist_methods", "learner") == {
        "bp",
        "l2",
        "snp",
        "dropout",
        "onlinenorm",
        "adam",
        "cbp",
    }


def test_validate_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", str(ROOT / "experiments" / "ppo_hopper.toml")]) == 0
    assert "4 settings x 30 seeds = 120 runs" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('command = "ppo"\n[base]\nlearning-rate = 1\n')
    assert main(["validate", str(bad)]) == 2
    assert "unknown flag --learning-rate" in capsys.readouterr().err
