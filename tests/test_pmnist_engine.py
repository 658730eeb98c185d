"""The batched engine against plain PyTorch autograd and the nn.Module methods, seed by seed."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cbp_rl.supervised.engine as engine_module
from cbp_rl import CBPConfig, ContinualBackprop, GenerateAndTest, ResettableAdam
from cbp_rl.cbp import UnitLayout
from cbp_rl.methods import ReDo, ShrinkAndPerturb
from cbp_rl.nets import init_bound, init_layer_
from cbp_rl.supervised.activations import ACTIVATION_NAMES, get_activation
from cbp_rl.supervised.engine import (
    BatchedLearner,
    LearnerSpec,
    NetworkSpec,
    ReDoSpec,
    dormant_units,
)
from cbp_rl.supervised.onlinenorm import OnlineNormConfig
from cbp_rl.supervised.stream import stream_seed

NET = NetworkSpec(width=16, depth=2)
CBP = CBPConfig(
    replacement_rate=0.05, maturity_threshold=5, utility="adaptable_contribution", accumulate=True
)

pytestmark = pytest.mark.usefixtures("single_thread")


def data(steps: int, batch: int = 1, seeds: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(seeds, steps * batch, 784, generator=generator)
    labels = torch.randint(0, 10, (seeds, steps * batch), generator=generator)
    return inputs, labels


def max_difference(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max(float((x - y).abs().max()) for x, y in pairs)


def relative_difference(a: nn.Module, b: nn.Module) -> float:
    """The largest difference of any tensor, relative to the largest magnitude in that tensor.

    Float32 rounding (FMA, AVX-512 vs AVX2 reduction order) scales with the values compared, so
    an absolute bound that holds on one CPU can fail on another.
    """
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max(
        float((x - y).abs().max() / torch.maximum(x.abs().max(), y.abs().max()).clamp_min(1e-6))
        for x, y in pairs
    )


def autograd_run(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    after_step: list | None = None,
    forward: object = None,
) -> None:
    """Plain PyTorch: forward, cross-entropy, backward, optimizer step, then ``after_step``."""
    for t in range(inputs.shape[1] // batch):
        rows = slice(t * batch, (t + 1) * batch)
        logits = net(inputs[0, rows]) if forward is None else forward(inputs[0, rows], t)  # type: ignore[operator]
        loss = F.cross_entropy(logits, labels[0, rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for method in after_step or []:
            method.step()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    ("name", "spec", "make_opt"),
    [
        ("bp", LearnerSpec(step_size=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
        (
            "l2",
            LearnerSpec(step_size=0.05, weight_decay=0.01),
            lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.01),
        ),
        (
            "adam",
            LearnerSpec(step_size=1e-3, optimizer="adam", weight_decay=1e-3),
            lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-3),
        ),
        (
            "onlinenorm",
            LearnerSpec(step_size=0.05, online_norm=OnlineNormConfig(clamp=1.5)),
            lambda p: torch.optim.SGD(p, lr=0.05),
        ),
    ],
)
def test_engine_equals_autograd(name: str, spec: LearnerSpec, make_opt: object, batch: int) -> None:
    engine = BatchedLearner(NET, spec, seeds=[3], window=8)
    net = engine.to_module(0)
    opt = make_opt(net.parameters())  # type: ignore[operator]
    inputs, labels = data(60, batch)
    engine.train(inputs, labels, batch_size=batch)
    autograd_run(net, opt, inputs, labels, batch)
    assert relative_difference(net, engine.to_module(0)) < 1e-4


@pytest.mark.parametrize("activation", ["tanh", "leaky_relu", "gelu", "silu", "selu", "elu"])
def test_engine_activations_equal_autograd(activation: str) -> None:
    spec = LearnerSpec(step_size=0.05)
    engine = BatchedLearner(NetworkSpec(width=12, depth=2, activation=activation), spec, [1])
    net = engine.to_module(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    inputs, labels = data(30)
    engine.train(inputs, labels)
    autograd_run(net, opt, inputs, labels, 1)
    assert relative_difference(net, engine.to_module(0)) < 1e-4


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_derivatives(name: str) -> None:
    activation = get_activation(name)
    z = torch.linspace(-3, 3, 41, dtype=torch.float64).requires_grad_()
    a = activation.forward(z.clone())
    (expected,) = torch.autograd.grad(a.sum(), z)
    with torch.no_grad():
        zc = z.detach().clone()
        out = activation.forward(zc)
        got = activation.backward(
            torch.ones_like(zc), z.detach() if activation.needs_input else None, out
        )
    torch.testing.assert_close(got, expected)


def test_dropout_equals_autograd_with_the_same_masks() -> None:
    p, batch = 0.3, 2
    engine = BatchedLearner(NET, LearnerSpec(step_size=0.05, dropout=p), seeds=[4])
    net = engine.to_module(0)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    generator = torch.Generator().manual_seed(stream_seed(4, "dropout"))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    def forward(x: torch.Tensor, _: int) -> torch.Tensor:
        keep = (torch.rand((2, batch, 16), generator=generator) >= p).float() / (1 - p)
        h = x
        for i, linear in enumerate(linears[:-1]):
            h = torch.relu(linear(h)) * keep[i]
        return linears[-1](h)

    inputs, labels = data(40, batch)
    engine.train(inputs, labels, batch_size=batch)
    autograd_run(net, opt, inputs, labels, batch, forward=forward)
    assert relative_difference(net, engine.to_module(0)) < 1e-4


def test_shrink_and_perturb_is_the_module() -> None:
    spec = LearnerSpec(step_size=0.05, weight_decay=1e-3, noise_std=1e-3, shrink=0.999)
    engine = BatchedLearner(NET, spec, seeds=[5])
    net = engine.to_module(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=1e-3)
    views = []
    for linear in (m for m in net if isinstance(m, nn.Linear)):
        views += [linear.weight.t(), linear.bias.view(1, -1)]  # the engine's [in, out] layout
    perturb = ShrinkAndPerturb(
        [nn.Parameter(v) for v in views], noise_std=1e-3, shrink=0.999, seed=stream_seed(5, "noise")
    )
    inputs, labels = data(30)
    engine.train(inputs, labels)
    autograd_run(net, opt, inputs, labels, 1, after_step=[perturb])
    assert relative_difference(net, engine.to_module(0)) < 1e-4
    unperturbed = BatchedLearner(NET, dataclasses.replace(spec, noise_std=0.0, shrink=1.0), [5])
    unperturbed.train(inputs, labels)
    assert max_difference(unperturbed.to_module(0), engine.to_module(0)) > 1e-3


@pytest.mark.parametrize(
    ("optimizer", "every", "batch"), [("sgd", 1, 1), ("sgd", 3, 2), ("adam", 1, 1), ("adam", 4, 1)]
)
def test_cbp_is_continual_backprop(
    optimizer: str, every: int, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows with replacements in the middle, every layer's updates deferred: still the
    nn.Module layer step for step (and ResettableAdam's resets with Adam)."""
    monkeypatch.setattr(engine_module, "DEFER_HIDDEN_ELEMENTS", 1)
    config = dataclasses.replace(CBP, magnitude_every=every)
    lr = 0.05 if optimizer == "sgd" else 1e-3
    spec = LearnerSpec(step_size=lr, optimizer=optimizer, cbp=config)
    engine = BatchedLearner(NET, spec, seeds=[3], window=8)
    net = engine.to_module(0)
    opt = (
        torch.optim.SGD(net.parameters(), lr=lr)
        if optimizer == "sgd"
        else ResettableAdam(net.parameters(), lr=lr)
    )
    cbp = ContinualBackprop(net, opt, **dataclasses.asdict(config), seed=stream_seed(3, "cbp"))
    inputs, labels = data(200, batch)
    engine.train(inputs, labels, batch_size=batch)
    autograd_run(net, opt, inputs, labels, batch, after_step=[cbp])
    assert sum(cbp.replacement_counts()) > 50
    assert engine.replacements().tolist() == [cbp.replacement_counts()]
    assert relative_difference(net, engine.to_module(0)) < 1e-4
    torch.testing.assert_close(engine.cbp.utility[0], cbp.utility)  # type: ignore[union-attr]


def test_redo_scores_like_the_module_and_reinitializes() -> None:
    activity = torch.rand(3, 40, 16)
    activity[1, :, :5] = 0.0  # five silent units in seed 1
    activity[2] = 0.0  # a silent layer: every unit dormant
    mean_abs = activity.abs().mean(1).double()
    module = ReDo(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), threshold=0.1)
    for s, units in enumerate(dormant_units(mean_abs, 0.1)):
        assert torch.equal(units, module.dormant_units(activity[s]))
    assert dormant_units(mean_abs, 0.1)[1].tolist() == [0, 1, 2, 3, 4]

    spec = LearnerSpec(step_size=0.05, redo=ReDoSpec(threshold=0.1, period=10))
    engine = BatchedLearner(NetworkSpec(width=16, depth=1), spec, seeds=[0, 1])
    with torch.no_grad():  # kill 4 units of layer 0 in seed 1: they never fire
        engine.biases[0][1, 0, :4] = -1e3
    inputs, labels = data(25, seeds=2)
    engine.train(inputs[:, :10], labels[:, :10])  # the 10th step checks and reinitializes
    assert engine.redo.reinitialized[1, 0] >= 4
    assert torch.all(engine.biases[0][1, 0, :4] == 0)  # reinitialized: zero bias
    assert torch.all(engine.weights[1][1, :4] == 0)  # ... and zero outgoing weights
    engine.train(inputs[:, 10:], labels[:, 10:])
    assert engine.redo.calls == 25 and engine.redo.examples == 5


LEARNERS = {
    "bp": LearnerSpec(step_size=0.02),
    "l2": LearnerSpec(step_size=0.02, weight_decay=1e-3),
    "snp": LearnerSpec(step_size=0.02, weight_decay=1e-3, noise_std=1e-3),
    "dropout": LearnerSpec(step_size=0.02, dropout=0.2),
    "onlinenorm": LearnerSpec(step_size=0.02, online_norm=OnlineNormConfig()),
    "adam": LearnerSpec(step_size=1e-3, optimizer="adam"),
    "redo": LearnerSpec(step_size=0.02, redo=ReDoSpec(period=20)),
    "cbp": LearnerSpec(step_size=0.02, cbp=CBP),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_batched_seeds_equal_single_seeds(name: str) -> None:
    seeds = [7, 8, 9]
    inputs, labels = data(120, seeds=3)
    batched = BatchedLearner(NET, LEARNERS[name], seeds, window=16)
    batched.train(inputs, labels)
    for s, seed in enumerate(seeds):
        single = BatchedLearner(NET, LEARNERS[name], [seed], window=16)
        single.train(inputs[s : s + 1], labels[s : s + 1])
        assert relative_difference(single.to_module(0), batched.to_module(s)) < 1e-4
        assert int(single.correct[0]) == int(batched.correct[s])
        assert single.replacements()[0].tolist() == batched.replacements()[s].tolist()
    if name in ("cbp", "redo"):
        assert int(batched.replacements().sum()) > 0


def test_seeds_differ_and_initialization_is_nets_init() -> None:
    engine = BatchedLearner(NetworkSpec(width=8, depth=1), LearnerSpec(), seeds=[0, 1])
    assert not torch.equal(engine.weights[0][0], engine.weights[0][1])
    generator = torch.Generator().manual_seed(stream_seed(1, "init"))
    for index, (fan_in, fan_out, gain) in enumerate([(784, 8, 2**0.5), (8, 10, 1.0)]):
        layer = nn.Linear(fan_in, fan_out)
        init_layer_(layer, "kaiming", gain, generator=generator)
        assert torch.equal(engine.weights[index][1], layer.weight.detach().t())
        bound = init_bound("kaiming", fan_in, fan_out, gain)
        assert float(engine.weights[index].abs().max()) <= bound
        assert torch.all(engine.biases[index] == 0)


def test_online_accuracy_counts_predictions_before_the_update() -> None:
    """A huge step makes every example right after its own update; the count must not see it."""
    engine = BatchedLearner(NET, LearnerSpec(step_size=5.0), seeds=[0, 1], window=4)
    inputs, labels = data(40, seeds=2)
    expected_correct = torch.zeros(2, dtype=torch.int64)
    expected_loss = torch.zeros(2, dtype=torch.float64)
    after = torch.zeros(2, dtype=torch.int64)
    for t in range(40):
        x, y = inputs[:, t : t + 1], labels[:, t : t + 1]
        logits = engine.predict(x)
        expected_correct += (logits.argmax(-1) == y).sum(-1)
        expected_loss += F.cross_entropy(
            logits.flatten(0, 1), y.flatten(), reduction="none"
        ).double()
        engine.step(x, y)
        after += (engine.predict(x).argmax(-1) == y).sum(-1)
    correct, loss, examples = engine.take_totals()
    assert examples == 40
    assert torch.equal(correct, expected_correct)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert int(after.sum()) > int(correct.sum()) + 20  # updating first would count far more


def test_online_norm_control_process_matches_the_per_example_algorithm() -> None:
    """The engine's online normalization against the algorithm written out example by example."""
    config = OnlineNormConfig(alpha_fwd=0.9, alpha_bkw=0.8, clamp=0.0)
    engine = BatchedLearner(
        NetworkSpec(width=6, depth=1), LearnerSpec(step_size=0.1, online_norm=config), [0]
    )
    module = engine.to_module(0)
    inputs, labels = data(12)
    mu, var = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    u, v = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    linear, head = module[0], module[3]
    w1, b1 = linear.weight.detach().double().clone(), linear.bias.detach().double().clone()
    w2, b2 = head.weight.detach().double().clone(), head.bias.detach().double().clone()
    gamma, beta = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for t in range(12):
        x = inputs[0, t].double()
        z = w1 @ x + b1
        scale = torch.sqrt(var + config.eps)
        n = (z - mu) / scale
        var = config.alpha_fwd * var + config.alpha_fwd * (1 - config.alpha_fwd) * (z - mu) ** 2
        mu = mu + (1 - config.alpha_fwd) * (z - mu)
        y = gamma * n + beta
        h = torch.relu(y)
        logits = w2 @ h + b2
        g = torch.softmax(logits, 0)
        g[labels[0, t]] -= 1
        dh = w2.t() @ g
        dy = dh * (y > 0)
        dgamma, dbeta, dn = dy * n, dy, dy * gamma
        e = dn - (1 - config.alpha_bkw) * v * n
        v = v + e * n
        e = e / scale
        dz = e - (1 - config.alpha_bkw) * u
        u = u + dz
        w2 -= 0.1 * torch.outer(g, h)
        b2 -= 0.1 * g
        w1 -= 0.1 * torch.outer(dz, x)
        b1 -= 0.1 * dz
        gamma, beta = gamma - 0.1 * dgamma, beta - 0.1 * dbeta
    engine.train(inputs, labels)
    torch.testing.assert_close(engine.weights[0][0].t().double(), w1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(engine.gammas[0][0, 0].double(), gamma, rtol=1e-4, atol=1e-5)
    state = engine.norm_states[0]
    for got, want in zip(state, (mu, var, u, v), strict=True):
        torch.testing.assert_close(got[0, 0].double(), want, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_continues_identically() -> None:
    spec = LearnerSpec(step_size=0.02, cbp=CBP, dropout=0.1)
    inputs, labels = data(80, seeds=2)
    first = BatchedLearner(NET, spec, [0, 1], window=8)
    first.train(inputs[:, :40], labels[:, :40])
    state = first.state_dict()
    second = BatchedLearner(NET, spec, [0, 1], window=8)
    second.load_state_dict(state)
    first.train(inputs[:, 40:], labels[:, 40:])
    second.train(inputs[:, 40:], labels[:, 40:])
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.correct, second.correct)
    with pytest.raises(ValueError, match="seeds"):
        BatchedLearner(NET, spec, [0, 2]).load_state_dict(state)


@pytest.mark.parametrize(("seeds", "width"), [(1, 1500), (20, 100), (2, 300)])
def test_core_magnitudes_of_large_stacked_weights(seeds: int, width: int) -> None:
    """The core's weight-magnitude refresh (blockwise for weights of 8 MB and more) equals
    the mean |W| over each unit's incoming and outgoing weights."""
    sizes = [784, width, width, 10]
    weights = [torch.randn(seeds, a, b) for a, b in itertools.pairwise(sizes)]
    biases = [torch.zeros(seeds, b) for b in sizes[1:]]
    layouts = [
        UnitLayout(weights[i], 2, biases[i], weights[i + 1], 1, 0.1, biases[i + 1])
        for i in range(2)
    ]
    core = GenerateAndTest([width] * 2, CBP, seeds=0, num_seeds=seeds)
    core._magnitude_plan(layouts).run()
    incoming = torch.cat([weights[i].abs().mean(1) for i in range(2)], -1)
    outgoing = torch.cat([weights[i + 1].abs().mean(2) for i in range(2)], -1)
    torch.testing.assert_close(core.in_magnitude, incoming)
    torch.testing.assert_close(core.out_magnitude, outgoing)


def test_core_accumulators_keep_float64_through_state_dict() -> None:
    """GenerateAndTest's fractional replacement counts survive a save exactly (a resumed run
    replaces the same units)."""
    core = GenerateAndTest([4], CBP, seeds=[0], num_seeds=1)
    core._book.stale = False
    core._book.accumulated = np.array([[0.1 + 1e-12]])
    state = core.state_dict()
    assert state["accumulated"].dtype == torch.float64
    assert float(state["accumulated"][0, 0]) == 0.1 + 1e-12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_size": 0.0}, "step size"),
        ({"optimizer": "rmsprop"}, "unknown optimizer"),
        ({"dropout": 1.0}, "dropout"),
        ({"shrink": 1.5}, "shrink"),
    ],
)
def test_bad_learner_specs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LearnerSpec(**kwargs)


def test_bad_network_and_seeds() -> None:
    with pytest.raises(ValueError, match="activation"):
        NetworkSpec(activation="swishy")
    with pytest.raises(ValueError, match="distinct"):
        BatchedLearner(NET, LearnerSpec(), [1, 1])
    with pytest.raises(ValueError, match="multiple of the batch"):
        BatchedLearner(NET, LearnerSpec(), [1]).train(*data(5), batch_size=2)


def test_deferred_updates_match_immediate_ones() -> None:
    """Windows (rank-k updates) and window 1 (every update at once) give the same weights."""
    inputs, labels = data(96, seeds=2)
    windowed = BatchedLearner(NET, LearnerSpec(step_size=0.05), [0, 1], window=32)
    immediate = BatchedLearner(NET, LearnerSpec(step_size=0.05), [0, 1], window=1)
    windowed.train(inputs, labels)
    immediate.train(inputs, labels)
    for a, b in zip(windowed.parameters(), immediate.parameters(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
