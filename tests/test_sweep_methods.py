"""Sweeps of the field's methods: specs whose settings use the methods' flags validate and run
through ``python -m cbp_rl.sweep`` on the real commands (tiny budgets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_ppo_sweep_spec

from cbp_rl.lab.sweep import main, run_states
from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars

pytestmark = pytest.mark.usefixtures("single_thread")


def saved_config(sweep: Path, run: str) -> dict[str, object]:
    config = json.loads((sweep / "runs" / run / "config.json").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def test_a_pmnist_sweep_of_field_learners(tmp_path: Path, mnist_dir: Path) -> None:
    spec = tmp_path / "methods.toml"
    spec.write_text(
        f"""
command = "pmnist"
seeds = 1
[base]
width = 16
tasks = 2
examples-per-task = 200
probe-examples = 100
data-dir = "{mnist_dir}"
[settings.bp]
learner = "bp"
[settings.upgd]
learner = "upgd"
upgd-sigma = 0.01
[settings.l2init]
learner = "l2init"
l2init-coef = 0.1
""",
        encoding="utf-8",
    )
    assert main(["validate", str(spec)]) == 0
    out = tmp_path / "sweep"
    assert main([str(spec), "--out", str(out), "--num-cpus", "2"]) == 0
    views = {view.name: view for view in run_states(out)}
    assert {name: view.state for name, view in views.items()} == {
        "bp-s0": "done",
        "upgd-s0": "done",
        "l2init-s0": "done",
    }
    upgd = saved_config(out, "upgd-s0")
    assert upgd["learner"] == "upgd" and upgd["methods"] == {**upgd["methods"], "upgd_sigma": 0.01}
    l2init = saved_config(out, "l2init-s0")
    assert l2init["methods"]["l2init_coef"] == 0.1  # type: ignore[index]
    engine = load_checkpoint(out / "runs" / "upgd-s0" / "checkpoint.pt")["engine"]
    assert engine["method"] == "upgd"  # the per-seed autograd path, UPGD's own state
    assert all("avg_utility" in s for s in engine["optimizers"][0]["state"].values())
    accuracy = {name: views[name].value for name in views}
    assert len(set(accuracy.values())) == 3, accuracy  # three different learners


def test_a_bad_method_value_in_a_spec_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(
        """
command = "ppo"
seeds = 1
[base]
env = "Hopper-v4"
[settings.l2init]
l2-init = -1.0
""",
        encoding="utf-8",
    )
    assert main(["validate", str(spec)]) == 2
    assert "--l2-init must be >= 0" in " ".join(capsys.readouterr().err.split())


def test_a_ppo_sweep_with_l2_init_and_parseval(tmp_path: Path) -> None:
    """Real MuJoCo: a tiny PPO on Hopper-v4 per setting; the penalties are logged."""
    spec = tmp_path / "ppo.toml"
    spec.write_text(
        tiny_ppo_sweep_spec(
            seeds=1,
            total_steps=512,
            settings="""[settings.l2init]
l2-init = 0.01
[settings.parseval]
parseval = 0.001
layer-norm = true
""",
        ),
        encoding="utf-8",
    )
    assert main(["validate", str(spec)]) == 0
    out = tmp_path / "sweep"
    assert main([str(spec), "--out", str(out), "--num-cpus", "2"]) == 0
    assert [(v.name, v.state, v.step) for v in run_states(out)] == [
        ("l2init-s0", "done", 512),
        ("parseval-s0", "done", 512),
    ]
    for run, flag, value in (("l2init-s0", "l2_init", 0.01), ("parseval-s0", "parseval", 0.001)):
        config = saved_config(out, run)
        assert config["field_methods"][flag] == value  # type: ignore[index]
        penalties = read_scalars(out / "runs" / run)["train/penalty/policy"]
        assert len(penalties) == 2  # one per update
        values = np.array([v for _, v in penalties])
        assert np.isfinite(values).all() and (values >= 0).all()
    # the L2 Init penalty is 0 at the first update's start and grows as the weights move
    l2 = [v for _, v in read_scalars(out / "runs" / "l2init-s0")["train/penalty/policy"]]
    assert l2[1] > l2[0]
    assert saved_config(out, "parseval-s0")["network"]["layer_norm"] is True  # type: ignore[index]
