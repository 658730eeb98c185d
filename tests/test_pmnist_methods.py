"""The field's methods as permuted-MNIST learners: exact resume, the command, refusals."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from cbp_rl.methods import PlasticityInjection
from cbp_rl.supervised.autograd import (
    AUTOGRAD_METHODS,
    FieldMethodsConfig,
    MethodSpec,
    PerSeedLearner,
)
from cbp_rl.supervised.command import main
from cbp_rl.supervised.config import PermutedMNISTConfig
from cbp_rl.supervised.engine import BatchedLearner, LearnerSpec, NetworkSpec
from cbp_rl.supervised.results import load_results

pytestmark = pytest.mark.usefixtures("single_thread")

NET = NetworkSpec(width=12, depth=2)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", AUTOGRAD_METHODS)
def test_each_method_resumes_exactly(name: str) -> None:
    spec = MethodSpec(name, injection_every=13, reset_every=11, regrama_period=7)
    torch.manual_seed(0)
    inputs, labels = torch.rand(2, 40, 784), torch.randint(0, 10, (2, 40))
    whole = PerSeedLearner(NET, LearnerSpec(step_size=0.05), spec, [4, 5])
    whole.train(inputs, labels)
    first = PerSeedLearner(NET, LearnerSpec(step_size=0.05), spec, [4, 5])
    first.train(inputs[:, :20], labels[:, :20])
    resumed = PerSeedLearner(NET, LearnerSpec(step_size=0.05), spec, [4, 5])
    resumed.load_state_dict(roundtrip(first.state_dict()))
    resumed.train(inputs[:, 20:], labels[:, 20:])
    for s in range(2):
        a, b = whole.to_module(s).state_dict(), resumed.to_module(s).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(whole.correct, resumed.correct)


def test_methods_start_from_the_batched_engines_weights() -> None:
    engine = BatchedLearner(NET, LearnerSpec(), [3])
    learner = PerSeedLearner(NET, LearnerSpec(), MethodSpec("l2init"), [3])
    for a, b in zip(engine.weights, learner.weights, strict=True):
        assert torch.equal(a, b)


def test_injection_and_crelu_keep_the_measures_shapes() -> None:
    spec = MethodSpec("injection", injection_every=5)
    learner = PerSeedLearner(NET, LearnerSpec(), spec, [0])
    before = learner.weights[-1].clone()
    inputs = torch.rand(1, 5, 784)
    learner.train(inputs, torch.zeros(1, 5, dtype=torch.int64))
    method = learner._seeds[0].method
    assert isinstance(method, PlasticityInjection) and int(method.injections) == 1
    assert learner.weights[-1].shape == before.shape  # the injected head folded into one map
    crelu = PerSeedLearner(NET, LearnerSpec(), MethodSpec("crelu"), [0])
    assert [h.shape for h in crelu.hidden_activations(inputs)] == [(1, 5, 24)] * 2


def test_refused_combinations_say_why() -> None:
    with pytest.raises(ValueError, match="runs alone"):
        PerSeedLearner(NET, LearnerSpec(dropout=0.1), MethodSpec("l2init"), [0])
    with pytest.raises(ValueError, match="upgd is the optimizer"):
        PerSeedLearner(NET, LearnerSpec(optimizer="adam"), MethodSpec("upgd"), [0])
    with pytest.raises(ValueError, match="--reset-layers"):
        PermutedMNISTConfig(learner="reset", methods=FieldMethodsConfig(reset_layers=0))
    with pytest.raises(ValueError, match="--l2init-coef"):
        PermutedMNISTConfig(learner="l2init", methods=FieldMethodsConfig(l2init_coef=-1))


def test_injection_defaults_to_once_halfway() -> None:
    config = PermutedMNISTConfig(learner="injection", tasks=4, examples_per_task=100)
    spec = config.method_spec()
    assert spec is not None and spec.injection_every == 200


@pytest.mark.parametrize("learner", ["regrama", "parseval"])
def test_command_runs_a_method_on_the_real_digits(
    learner: str, tmp_path: Path, mnist_dir: Path
) -> None:
    run_dir = tmp_path / learner
    flags = ["--learner", learner, "--width", "16", "--tasks", "2", "--examples-per-task", "200"]
    flags += ["--step-size", "0.03", "--regrama-period", "50", "--run-dir", str(run_dir)]
    flags += ["--data-dir", str(mnist_dir), "--no-download", "--no-progress"]
    assert main(flags) == 0
    results = load_results(run_dir)
    assert results["accuracy"].shape == (1, 2) and np.all(results["accuracy"] > 0.15)
    assert np.all(np.isfinite(results["effective_rank"]))
    if learner == "regrama":
        assert int(results["replacements"].sum()) > 0
    assert main(["--learner", learner, "--parseval-scale", "0", "--run-dir", str(tmp_path)]) == 2


def test_state_copies_are_independent() -> None:
    learner = PerSeedLearner(NET, LearnerSpec(), MethodSpec("upgd"), [0])
    saved = copy.deepcopy(learner.state_dict())
    learner.train(torch.rand(1, 3, 784), torch.zeros(1, 3, dtype=torch.int64))
    assert not torch.equal(saved["nets"][0]["0.weight"], learner.to_module(0)[0].weight)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learner", "upgd", "--upgd-sigma", "nan"], "--upgd-sigma nan: not a finite number"),
        (["--learner", "bp", "--l2init-coef", "-1"], "--l2init-coef must be >= 0"),
        (["--upgd-beta-utility", "1"], "--upgd-beta-utility must be in [0, 1)"),
        (["--learner", "crelu", "--activation", "tanh"], "drop --activation tanh"),
    ],
)
def test_command_refuses_bad_method_values_naming_the_flag(
    flags: list[str],
    message: str,
    tmp_path: Path,
    mnist_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = ["--run-dir", str(tmp_path / "r"), "--data-dir", str(mnist_dir), "--no-progress"]
    assert main([*flags, *run]) == 2
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
