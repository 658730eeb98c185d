"""The field's methods on ``python -m cbp_rl.train regression`` (the per-seed autograd path):
each learner's short run resumes bit-exactly and shows its method at work."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cbp_rl.run.checkpoint import load_checkpoint
from cbp_rl.run.logging import read_scalars
from cbp_rl.supervised.autograd import AUTOGRAD_METHODS
from cbp_rl.supervised.regression_command import main
from cbp_rl.supervised.results import load_results

pytestmark = pytest.mark.usefixtures("single_thread")

SHORT = [
    "--seeds", "2", "--bin-size", "250", "--flip-after", "300", "--probe-examples", "100",
    "--checkpoint-every", "0", "--no-progress",
]  # fmt: skip
METHOD_FLAGS = {
    "l2init": ["--l2init-coef", "1.0"],
    "parseval": ["--parseval-coef", "0.1"],
    "injection": ["--injection-every", "350"],
    "reset": ["--reset-every", "300"],
    "regrama": ["--regrama-period", "100", "--regrama-threshold", "0.5"],
}
"""Hyperparameters that make each method act within 1,000 examples."""


def regression(run_dir: Path, learner: str, examples: int, *extra: str) -> None:
    flags = ["--learner", learner, "--examples", str(examples), *SHORT, *extra]
    assert main([*flags, "--run-dir", str(run_dir), *METHOD_FLAGS.get(learner, [])]) == 0


def engine_state(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "checkpoint.pt")["engine"]
    assert isinstance(state, dict)
    return state


def distance_from(first: dict, last: dict) -> float:
    """The summed squared distance between two nets' matching Linear weights."""
    return sum(
        float((last[key] - first[key]).square().sum()) for key in last if key.endswith("weight")
    )


@pytest.fixture(scope="module")
def plain_sgd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bp, the batched engine, on the same stream."""
    run_dir = tmp_path_factory.mktemp("bp") / "run"
    regression(run_dir, "bp", 1000)
    return run_dir


@pytest.mark.parametrize("learner", AUTOGRAD_METHODS)
def test_each_learner_resumes_exactly_and_acts(
    tmp_path: Path, learner: str, plain_sgd: Path
) -> None:
    regression(tmp_path / "whole", learner, 1000)
    regression(tmp_path / "parts", learner, 500)
    resume = ["--resume", str(tmp_path / "parts"), "--examples", "1000", "--no-progress"]
    assert main(resume) == 0
    whole, parts = load_results(tmp_path / "whole"), load_results(tmp_path / "parts")
    for name in whole:
        np.testing.assert_array_equal(whole[name], parts[name], err_msg=name)
    state, resumed = engine_state(tmp_path / "whole"), engine_state(tmp_path / "parts")
    for mine, theirs in zip(state["nets"], resumed["nets"], strict=True):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert np.isfinite(whole["errors"]).all() and whole["errors"].shape == (2, 4)

    net, method = state["nets"][0], state["methods"][0]
    bp_state = engine_state(plain_sgd)
    bp_net = {
        f"{2 * index}.weight": weight[0].t() for index, weight in enumerate(bp_state["weights"])
    }
    if learner == "crelu":  # the output layer reads both halves of the 5 hidden units
        assert net["2.weight"].shape == (1, 10)
    elif learner == "layernorm":
        assert net["1.0.weight"].shape == (5,)  # Sequential(LayerNorm, ReLU) at index 1
    elif learner == "injection":
        assert int(method["injections"]) == 2  # at 350 and 700
    elif learner == "reset":
        assert int(method["resets"]) == 3  # at 300, 600 and 900
    elif learner == "regrama":
        assert whole["replacements"].sum() > 0
        assert len(read_scalars(tmp_path / "whole")["bin/replacements"]) == 4
    elif learner == "l2init":  # pulled back to its start: closer to it than plain SGD
        start = {key: method[f"initial_{index}"] for index, key in enumerate(net)}
        assert distance_from(start, net) < 0.5 * distance_from(start, bp_net)
    elif learner == "parseval":  # the hidden layer's rows closer to orthonormal than SGD's
        gram = net["0.weight"] @ net["0.weight"].t()
        bp_gram = bp_net["0.weight"] @ bp_net["0.weight"].t()
        eye = torch.eye(5)
        assert (gram - eye).norm() < (bp_gram - eye).norm()
    elif learner == "upgd":  # its own optimizer, with a utility trace per parameter
        optimizer = state["optimizers"][0]["state"]
        assert len(optimizer) == 4 and all("avg_utility" in s for s in optimizer.values())


def plain(text: str) -> str:
    """An error message without tyro's box and line wrapping."""
    return " ".join(re.sub(r"[│|╭╮╰╯]", " ", text).split())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learner", "regrama", "--activation", "linear"], "--activation linear has none"),
        (["--learner", "crelu", "--activation", "tanh"], "drop --activation tanh"),
        (["--learner", "upgd", "--optimizer", "adam"], "drop --optimizer adam"),
        (["--learner", "l2init", "--l2init-coef", "nan"], "--l2init-coef nan: not a finite"),
        (["--upgd-sigma", "-1"], "--upgd-sigma must be >= 0"),
        (["--learner", "reset", "--reset-every", "0"], "--reset-every must be >= 1"),
        (["--upgd-beta-utility", "1"], "--upgd-beta-utility must be in [0, 1)"),
    ],
)
def test_bad_method_settings_are_refused(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*flags, "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in plain(capsys.readouterr().err)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
