"""Hand-checked semantics of the continual-backprop layer."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbp_rl import CBPConfig, ContinualBackprop, GenerateAndTest, ResettableAdam
from cbp_rl import cbp as cbp_module
from cbp_rl.cbp import UTILITY_NAMES, UnitLayout


def small_mlp(seed: int = 0, widths: tuple[int, ...] = (6, 5), inputs: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = inputs
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    layers.append(nn.Linear(previous, 3))
    return nn.Sequential(*layers)


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = net(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


class ReferenceUtility:
    """The reference's per-layer utility update, written out loop by loop for a Linear MLP."""

    def __init__(self, net: nn.Sequential, eta: float, utility: str) -> None:
        self.linears = [m for m in net if isinstance(m, nn.Linear)]
        sizes = [layer.out_features for layer in self.linears[:-1]]
        self.eta, self.kind = eta, utility
        self.util = [torch.zeros(n, dtype=torch.float64) for n in sizes]
        self.mean = [torch.zeros(n, dtype=torch.float64) for n in sizes]
        self.age = [torch.zeros(n, dtype=torch.float64) for n in sizes]

    def update(self, features: list[torch.Tensor]) -> None:
        eta = self.eta
        for i, h in enumerate(features):
            h = h.double()
            self.age[i] += 1
            bc = 1 - eta ** self.age[i]
            self.mean[i] = eta * self.mean[i] + (1 - eta) * h.mean(0)
            f_hat = self.mean[i] / bc
            w_out = self.linears[i + 1].weight.detach().double()
            w_in = self.linears[i].weight.detach().double()
            out_mag = torch.tensor([w_out[:, j].abs().mean() for j in range(h.shape[1])])
            in_mag = torch.tensor([w_in[j, :].abs().mean() for j in range(h.shape[1])])
            dev = (h - f_hat).abs().mean(0)
            y = {
                "contribution": out_mag * h.abs().mean(0),
                "zero_contribution": out_mag * dev,
                "adaptable_contribution": out_mag * dev / in_mag,
                "feature_by_input": dev / in_mag,
                "weight": out_mag,
                "adaptation": 1 / in_mag,
                "random": torch.zeros_like(dev),
            }[self.kind]
            self.util[i] = eta * self.util[i] + (1 - eta) * y

    def ranked(self, layer: int) -> torch.Tensor:
        return self.util[layer] / (1 - self.eta ** self.age[layer])


def hidden_features(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    features, h = [], x
    modules = list(net)
    for i, module in enumerate(modules):
        h = module(h)
        if isinstance(module, nn.ReLU):
            features.append(h.detach())
        del i
    return features


@pytest.fixture(params=["whole", "blocks"])
def block_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Weight magnitudes computed over whole tensors, or forced into many small blocks."""
    if request.param == "blocks":
        monkeypatch.setattr(cbp_module, "_BLOCK_BYTES", 40)
    return str(request.param)


@pytest.mark.parametrize("utility", [u for u in UTILITY_NAMES if u != "random"])
def test_utilities_match_the_reference_computation(utility: str, block_bytes: str) -> None:
    net = small_mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    cbp = ContinualBackprop(
        net, opt, replacement_rate=0.5, maturity_threshold=10_000, decay_rate=0.9, utility=utility
    )
    reference = ReferenceUtility(net, 0.9, utility)
    torch.manual_seed(1)
    for _ in range(7):
        x = torch.randn(8, 4)
        reference_features = hidden_features(net, x)
        train_step(net, opt, x)  # the forward inside records the same activations
        reference.update(reference_features)
        cbp.step()
        expected_util = torch.cat(reference.util).float()
        torch.testing.assert_close(cbp.utility, expected_util, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(cbp.mean_activation, torch.cat(reference.mean).float())
    assert cbp.age.tolist() == [7] * 11
    assert cbp.replacement_counts() == [0, 0]


def test_replacement_picks_lowest_bias_corrected_utility_and_reinitializes() -> None:
    net = small_mlp(widths=(8,))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    cbp = ContinualBackprop(
        net,
        opt,
        replacement_rate=0.25,
        maturity_threshold=3,
        decay_rate=0.9,
        utility="contribution",
        accumulate=True,
        init="kaiming",
        seed=0,
    )
    reference = ReferenceUtility(net, 0.9, "contribution")
    torch.manual_seed(2)
    for step in range(1, 5):
        x = torch.rand(16, 4)
        reference_features = hidden_features(net, x)
        train_step(net, opt, x)
        reference.update(reference_features)
        before_out = net[2].weight.detach().clone()
        replaced = cbp.step()
        if step < 4:  # ages 1..3 are not above the maturity threshold 3
            assert replaced == 0
    assert replaced == 2  # floor(0.25 * 8)
    expected = set(torch.topk(reference.ranked(0), 2, largest=False).indices.tolist())
    fresh = set(torch.nonzero(cbp.age == 0).flatten().tolist())
    assert fresh == expected
    bound = math.sqrt(2.0) * math.sqrt(3.0 / 4)  # kaiming, ReLU gain, fan_in 4
    for unit in fresh:
        assert net[0].weight[unit].abs().max() <= bound
        assert net[0].weight[unit].abs().max() > 0
        assert net[0].bias[unit] == 0
        assert torch.all(net[2].weight[:, unit] == 0)
        assert cbp.utility[unit] == 0 and cbp.mean_activation[unit] == 0
    others = [j for j in range(8) if j not in fresh]
    assert torch.equal(net[2].weight[:, others], before_out[:, others])


@pytest.mark.parametrize(
    "init,bound",
    [
        ("kaiming", math.sqrt(2.0) * math.sqrt(3 / 4)),
        ("lecun", math.sqrt(3 / 4)),
        ("xavier", math.sqrt(2.0) * math.sqrt(6 / (4 + 6))),
        ("default", math.sqrt(1 / 4)),
    ],
)
def test_init_bounds(init: str, bound: float) -> None:
    net = small_mlp(widths=(6,))
    cbp = ContinualBackprop(net, None, init=init)
    assert cbp.bounds[0] == pytest.approx(bound)


def test_tanh_gain_enters_the_bound() -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    cbp = ContinualBackprop(net, None, init="kaiming")
    assert cbp.bounds[0] == pytest.approx(5 / 3 * math.sqrt(3 / 4))


def test_new_units_do_not_change_the_output() -> None:
    """After replacement the output is the old network's with the replaced units removed."""
    net = small_mlp(widths=(16, 16))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    cbp = ContinualBackprop(net, opt, replacement_rate=0.2, maturity_threshold=0, seed=3)
    probe = torch.randn(32, 4)
    for _ in range(3):
        train_step(net, opt, torch.randn(8, 4))
        removed = copy.deepcopy(net)
        assert cbp.step() > 0
        new_units = torch.nonzero(cbp.age == 0).flatten()
        with torch.no_grad():  # remove the old units from the copy: zero their outgoing weights
            for unit in new_units.tolist():
                layer = 2 if unit < 16 else 4
                removed[layer].weight[:, unit % 16] = 0.0
            torch.testing.assert_close(net(probe), removed(probe), rtol=0, atol=0)


def test_output_is_unchanged_when_dead_units_are_replaced() -> None:
    net = small_mlp(widths=(16,))
    with torch.no_grad():
        net[0].bias[:4] = -100.0  # units 0-3 never fire: zero contribution, replaced first
    cbp = ContinualBackprop(net, None, replacement_rate=0.25, maturity_threshold=0, seed=0)
    probe = torch.randn(32, 4)
    with torch.no_grad():
        before = net(probe)
    assert cbp.step() == 4
    assert sorted(torch.nonzero(cbp.age == 0).flatten().tolist()) == [0, 1, 2, 3]
    with torch.no_grad():
        torch.testing.assert_close(net(probe), before, rtol=0, atol=0)


def test_accumulate_replaces_floor_of_accumulated_eligible_units() -> None:
    net = small_mlp(widths=(10,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    rr, mt = 0.15, 3
    cbp = ContinualBackprop(
        net, opt, replacement_rate=rr, maturity_threshold=mt, accumulate=True, seed=0
    )
    accumulated, expected_total, total = 0.0, 0, 0
    for _ in range(60):
        eligible = int(((cbp.age + 1) > mt).sum())
        if eligible:
            accumulated += rr * eligible
            n = math.floor(accumulated)
            accumulated -= n
            expected_total += n
        train_step(net, opt, torch.randn(4, 4))
        ages_before = cbp.age.clone() + 1
        total += cbp.step()
        replaced = torch.nonzero(cbp.age == 0).flatten()
        assert torch.all(ages_before[replaced] > mt)  # immature units are never replaced
        assert total == expected_total
    assert total > 20


def test_probabilistic_mode_has_the_right_mean() -> None:
    net = small_mlp(widths=(10,))
    cbp = ContinualBackprop(net, None, replacement_rate=0.02, maturity_threshold=0, seed=5)
    steps = 5000
    x = torch.randn(2, 4)
    total = 0
    for _ in range(steps):
        with torch.no_grad():
            net(x)
        total += cbp.step()
    mean, sd = 0.2, math.sqrt(0.2 * 0.8 / steps)  # one unit with probability rr * 10
    assert abs(total / steps - mean) < 4 * sd


def test_probabilistic_mode_above_one_replaces_the_floor() -> None:
    net = small_mlp(widths=(10,))
    cbp = ContinualBackprop(net, None, replacement_rate=0.25, maturity_threshold=0, seed=5)
    with torch.no_grad():
        net(torch.randn(2, 4))
    assert cbp.step() == 2  # floor(0.25 * 10), no draw


def test_immature_units_are_never_replaced() -> None:
    net = small_mlp(widths=(12,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    cbp = ContinualBackprop(net, opt, replacement_rate=1.0, maturity_threshold=20, seed=0)
    for step in range(1, 80):
        train_step(net, opt, torch.randn(4, 4))
        ages = cbp.age.clone() + 1
        cbp.step()
        replaced = torch.nonzero(cbp.age == 0).flatten()
        assert torch.all(ages[replaced] > 20), step
        if step <= 20:
            assert len(replaced) == 0


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd_momentum", "resettable_adam"])
def test_optimizer_state_is_zeroed_for_replaced_units(optimizer: str) -> None:
    net = small_mlp(widths=(8,))
    opt: torch.optim.Optimizer = {
        "adam": lambda: torch.optim.Adam(net.parameters(), lr=1e-3),
        "adamw": lambda: torch.optim.AdamW(net.parameters(), lr=1e-3),
        "sgd_momentum": lambda: torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9),
        "resettable_adam": lambda: ResettableAdam(net.parameters(), lr=1e-3),
    }[optimizer]()
    reset = None if optimizer == "resettable_adam" else True  # ResettableAdam resets by default
    cbp = ContinualBackprop(
        net,
        opt,
        replacement_rate=0.25,
        maturity_threshold=2,
        seed=0,
        reset_optimizer_state=reset,
    )
    replaced = 0
    while not replaced:
        train_step(net, opt, torch.randn(4, 4))
        replaced = cbp.step()
    units = torch.nonzero(cbp.age == 0).flatten()
    keep = torch.tensor([j for j in range(8) if j not in units.tolist()])
    keys = ["momentum_buffer"] if optimizer == "sgd_momentum" else ["exp_avg", "exp_avg_sq"]
    if optimizer == "resettable_adam":
        keys.append("step")
    for key in keys:
        w_in, b_in = opt.state[net[0].weight][key], opt.state[net[0].bias][key]
        w_out = opt.state[net[2].weight][key]
        assert torch.all(w_in[units] == 0) and torch.all(b_in[units] == 0)
        assert torch.all(w_out[:, units] == 0)
        assert torch.all(w_in[keep].abs().sum(1) > 0)
        assert torch.all(opt.state[net[2].bias][key] != 0)  # the next layer's bias is kept


def test_plain_adam_is_not_reset_by_default() -> None:
    net = small_mlp(widths=(8,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    cbp = ContinualBackprop(net, opt, replacement_rate=0.25, maturity_threshold=2, seed=0)
    replaced = 0
    while not replaced:
        train_step(net, opt, torch.randn(4, 4))
        state_before = copy.deepcopy(opt.state_dict()["state"])
        replaced = cbp.step()
    for index, state in opt.state_dict()["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], state_before[index][key])


def test_resettable_adam_restarts_bias_correction() -> None:
    torch.manual_seed(0)
    param = nn.Parameter(torch.zeros(2, 3))
    opt = ResettableAdam([param], lr=0.1, betas=(0.9, 0.999))
    for _ in range(5):
        param.grad = torch.ones(2, 3)
        opt.step()
    from cbp_rl.optim import reset_unit_state

    reset_unit_state(opt, param, 0, torch.tensor([1]))
    before = param.detach().clone()
    param.grad = torch.full((2, 3), 2.0)
    opt.step()
    # a freshly reset element takes a full first Adam step: lr * sign(grad)
    torch.testing.assert_close(param[1] - before[1], torch.full((3,), -0.1))
    assert torch.all(opt.state[param]["step"][0] == 6)
    assert torch.all(opt.state[param]["step"][1] == 1)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_norm_entries_are_reset(norm: str) -> None:
    torch.manual_seed(0)
    norm_layer: nn.Module = nn.LayerNorm(8) if norm == "layer" else nn.BatchNorm1d(8)
    net = nn.Sequential(nn.Linear(4, 8), norm_layer, nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        norm_layer.weight.uniform_(0.5, 2.0)
        norm_layer.bias.uniform_(-1.0, 1.0)
    cbp = ContinualBackprop(net, None, replacement_rate=0.25, maturity_threshold=0, seed=0)
    assert cbp.hidden_layers[0].norm is norm_layer
    net(torch.randn(16, 4))
    assert cbp.step() == 2
    units = torch.nonzero(cbp.age == 0).flatten()
    assert torch.all(norm_layer.weight[units] == 1) and torch.all(norm_layer.bias[units] == 0)
    others = torch.nonzero(cbp.age != 0).flatten()
    assert torch.all(norm_layer.weight[others] != 1)
    if norm == "batch":
        assert isinstance(norm_layer, nn.BatchNorm1d)
        assert norm_layer.running_mean is not None and norm_layer.running_var is not None
        assert torch.all(norm_layer.running_mean[units] == 0)
        assert torch.all(norm_layer.running_var[units] == 1)
        assert torch.all(norm_layer.running_mean[others] != 0)


def test_conv_to_conv_and_conv_to_flatten_to_linear() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    )
    cbp = ContinualBackprop(net, None, replacement_rate=0.5, maturity_threshold=0, seed=1)
    assert [layer.num_units for layer in cbp.hidden_layers] == [4, 6, 5]
    assert [layer.outputs_per_unit for layer in cbp.hidden_layers] == [1, 16, 1]
    x = torch.randn(3, 1, 8, 8)
    removed = copy.deepcopy(net)
    with torch.no_grad():
        net(x)
    replaced = cbp.step()
    assert replaced == 2 + 3 + 2
    with torch.no_grad():  # the new units add nothing: remove the old ones from the copy
        ages = cbp.age.split([4, 6, 5])
        removed[2].weight[:, ages[0] == 0] = 0.0
        removed[6].weight.view(5, 6, 16)[:, ages[1] == 0] = 0.0
        removed[8].weight[:, ages[2] == 0] = 0.0
        torch.testing.assert_close(net(x), removed(x), rtol=0, atol=0)
    conv_units = torch.nonzero(cbp.age[4:10] == 0).flatten()
    kept_rows = cbp.age[10:] != 0  # replaced rows of the Linear layer were drawn afresh
    columns = net[6].weight.view(5, 6, 16)[kept_rows]
    assert torch.all(columns[:, conv_units] == 0)
    first = torch.nonzero(cbp.age[:4] == 0).flatten()
    assert torch.all(net[2].weight[cbp.age[4:10] != 0][:, first] == 0)
    assert torch.all(net[0].bias[first] == 0)
    bound = math.sqrt(2.0) * math.sqrt(3.0 / 9)
    assert torch.all(net[0].weight[first].abs() <= bound)


def test_conv_utility_averages_over_positions(block_bytes: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 2))
    cbp = ContinualBackprop(net, None, replacement_rate=0.1, maturity_threshold=100, decay_rate=0.0)
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        h = torch.relu(net[0](x))  # [5, 3, 2, 2]
        net(x)
    cbp.step()
    out_mag = net[3].weight.detach().view(2, 3, 4).abs().mean(dim=(0, 2))
    expected = out_mag * h.abs().mean(dim=(0, 2, 3))
    torch.testing.assert_close(cbp.utility, expected)


def test_state_dict_round_trip_continues_identically() -> None:
    def make() -> tuple[nn.Sequential, torch.optim.Optimizer, ContinualBackprop]:
        net = small_mlp(seed=4, widths=(12, 12))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        cbp = ContinualBackprop(
            net,
            opt,
            replacement_rate=0.05,
            maturity_threshold=5,
            utility="adaptable_contribution",
            accumulate=False,
            seed=7,
            reset_optimizer_state=True,
            magnitude_every=3,
        )
        return net, opt, cbp

    data = [torch.randn(4, 4, generator=torch.Generator().manual_seed(i)) for i in range(60)]
    net_a, opt_a, cbp_a = make()
    for x in data:
        train_step(net_a, opt_a, x)
        cbp_a.step()
    net_b, opt_b, cbp_b = make()
    for x in data[:25]:
        train_step(net_b, opt_b, x)
        cbp_b.step()
    saved = copy.deepcopy((net_b.state_dict(), opt_b.state_dict(), cbp_b.state_dict()))
    net_c, opt_c, cbp_c = make()
    net_c.load_state_dict(saved[0])
    opt_c.load_state_dict(saved[1])
    cbp_c.load_state_dict(saved[2])
    for x in data[25:]:
        train_step(net_c, opt_c, x)
        cbp_c.step()
    assert sum(cbp_a.replacement_counts()) > 3
    for key, value in net_a.state_dict().items():
        assert torch.equal(value, net_c.state_dict()[key]), key
    for key, value in cbp_a.state_dict().items():
        if key != "_extra_state":
            assert torch.equal(value, cbp_c.state_dict()[key]), key


def test_seeded_runs_are_identical_and_seeds_differ() -> None:
    def run(seed: int) -> torch.Tensor:
        net = small_mlp(seed=0, widths=(10,))
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        cbp = ContinualBackprop(net, opt, replacement_rate=0.05, maturity_threshold=2, seed=seed)
        for i in range(40):
            train_step(net, opt, torch.randn(4, 4, generator=torch.Generator().manual_seed(i)))
            cbp.step()
        return net[0].weight.detach().clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_bias_compensation_default_is_the_reference_no_op() -> None:
    for compensate in (False, True):
        net = small_mlp(widths=(8,))
        cbp = ContinualBackprop(
            net,
            None,
            replacement_rate=0.25,
            maturity_threshold=0,
            decay_rate=0.5,
            bias_compensation=compensate,
            seed=0,
        )
        bias_before = net[2].bias.detach().clone()
        weight_before = net[2].weight.detach().clone()
        x = torch.rand(6, 4)
        with torch.no_grad():
            h = torch.relu(net[0](x))
            net(x)
        cbp.step()
        units = torch.nonzero(cbp.age == 0).flatten()
        if not compensate:
            assert torch.equal(net[2].bias, bias_before)
            continue
        f_hat = h.mean(0)[units]  # one step: mean_act / (1 - eta) is the batch mean
        expected = bias_before + (weight_before[:, units] * f_hat).sum(1)
        torch.testing.assert_close(net[2].bias.detach(), expected)


def test_explicit_layers_for_a_functional_network() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(x)))

    net = Functional()
    with pytest.raises(ValueError, match=r"found no hidden layer.*layers="):
        ContinualBackprop(net, None)
    cbp = ContinualBackprop(
        net,
        None,
        layers=[(net.fc1, "relu", net.fc2)],
        maturity_threshold=0,
        replacement_rate=0.5,
        seed=0,
    )
    net(torch.randn(3, 4))
    assert cbp.step() == 3
    assert cbp.hidden_layers[0].name == "fc1"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"utility": "usefulness"}, "valid utilities are contribution, adaptable_contribution"),
        ({"init": "orthogonal"}, "valid inits are kaiming, lecun"),
        ({"replacement_rate": 1.5}, "replacement_rate must be in"),
        ({"replacement_rate": -0.1}, "replacement_rate must be in"),
        ({"maturity_threshold": -1}, "maturity_threshold must be a non-negative integer"),
        ({"decay_rate": 1.0}, r"decay_rate must be in \[0, 1\)"),
        ({"magnitude_every": 0}, "magnitude_every must be an integer >= 1"),
        ({"reset_optimizer_state": True}, "needs the optimizer"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContinualBackprop(small_mlp(), None, **kwargs)


def test_step_without_forward_and_networks_without_hidden_layers() -> None:
    net = small_mlp()
    cbp = ContinualBackprop(net, None)
    with pytest.raises(RuntimeError, match="after a forward pass"):
        cbp.step()
    with pytest.raises(ValueError, match="found no hidden layer"):
        ContinualBackprop(nn.Sequential(nn.Linear(3, 3)), None)


def test_zero_replacement_rate_is_a_no_op() -> None:
    net = small_mlp()
    cbp = ContinualBackprop(net, None, replacement_rate=0.0)
    net(torch.randn(2, 4))
    assert cbp.step() == 0
    assert int(cbp.age.sum()) == 0


def test_batched_seeds_equal_single_runs(block_bytes: str) -> None:
    """The core over stacked [S, in, out] weights decides as S single modules do."""
    seeds, widths = [11, 12, 13], (7, 5)
    nets = [small_mlp(seed=s, widths=widths) for s in seeds]
    singles = [
        ContinualBackprop(
            net,
            None,
            replacement_rate=0.1,
            maturity_threshold=2,
            decay_rate=0.9,
            utility="adaptable_contribution",
            accumulate=True,
            seed=s,
        )
        for net, s in zip(nets, seeds, strict=True)
    ]
    linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
    # stacked copies in the batched layout: weight [S, in, out], bias [S, out]
    weights = [
        torch.stack([ls[i].weight.detach().t() for ls in linears]).contiguous() for i in range(3)
    ]
    biases = [torch.stack([ls[i].bias.detach() for ls in linears]).clone() for i in range(3)]
    config = CBPConfig(
        replacement_rate=0.1,
        maturity_threshold=2,
        decay_rate=0.9,
        utility="adaptable_contribution",
        accumulate=True,
    )
    batched = GenerateAndTest(list(widths), config, seeds=seeds, num_seeds=3)
    bounds = singles[0].bounds
    for step in range(30):
        x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(step))
        hidden = []
        h = x
        for i in range(2):
            h = torch.relu(torch.baddbmm(biases[i].unsqueeze(1), h, weights[i]))
            hidden.append(h.unsqueeze(-1))  # [S, M, units, 1]
        layouts = [
            UnitLayout(weights[i], 2, biases[i], weights[i + 1], 1, bounds[i], biases[i + 1])
            for i in range(2)
        ]
        batched.generate_and_test(hidden, layouts)
        for s, net in enumerate(nets):
            with torch.no_grad():
                net(x[s])
            singles[s].step()
        for i in range(3):  # the same learning signal for both: a deterministic nudge
            noise = torch.randn(weights[i].shape, generator=torch.Generator().manual_seed(step))
            weights[i].add_(0.01 * noise)
            for s in range(3):
                with torch.no_grad():
                    linears[s][i].weight.add_(0.01 * noise[s].t())
    for s in range(3):
        torch.testing.assert_close(batched.utility[s], singles[s].utility)
        assert torch.equal(batched.age[s], singles[s].age)
        for i in range(3):
            torch.testing.assert_close(weights[i][s], linears[s][i].weight.detach().t())
    assert batched.replacement_counts() == [
        sum(x) for x in zip(*(s.replacement_counts() for s in singles), strict=True)
    ]
    assert sum(batched.replacement_counts()) > 10


def online_permuted_mnist(
    digits: tuple[np.ndarray, np.ndarray], magnitude_every: int, tasks: int, per_task: int
) -> tuple[list[float], int]:
    """Online accuracy per task of a 784-100-100-10 CBP learner on permuted real digits."""
    images, labels = (torch.from_numpy(a) for a in digits)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    cbp = ContinualBackprop(
        net,
        opt,
        replacement_rate=1e-3,
        maturity_threshold=100,
        utility="adaptable_contribution",
        accumulate=True,
        magnitude_every=magnitude_every,
        seed=0,
    )
    data = torch.Generator().manual_seed(1)
    accuracy = []
    for _ in range(tasks):
        permutation = torch.randperm(784, generator=data)
        order = torch.randperm(len(images), generator=data)[:per_task]
        correct = 0
        for index in order.tolist():
            x, y = images[index, permutation].unsqueeze(0), labels[index : index + 1]
            logits = net(x)
            correct += int(logits.argmax(1).item() == y.item())
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            cbp.step()
        accuracy.append(correct / per_task)
    return accuracy, sum(cbp.replacement_counts())


@pytest.fixture(scope="module")
def exact_curve(mnist_digits: tuple[np.ndarray, np.ndarray]) -> tuple[list[float], int]:
    return online_permuted_mnist(mnist_digits, 1, tasks=3, per_task=1500)


@pytest.mark.parametrize("every", [10, 32])
def test_magnitude_every_learns_like_the_exact_path(
    mnist_digits: tuple[np.ndarray, np.ndarray], exact_curve: tuple[list[float], int], every: int
) -> None:
    exact, replaced_exact = exact_curve
    cheap, replaced_cheap = online_permuted_mnist(mnist_digits, every, tasks=3, per_task=1500)
    assert min(exact) > 0.5  # it learns each task (chance is 0.1)
    assert abs(sum(exact) - sum(cheap)) / 3 < 0.03
    assert max(abs(a - b) for a, b in zip(exact, cheap, strict=True)) < 0.05
    assert replaced_exact > 100
    assert abs(replaced_exact - replaced_cheap) <= 0.05 * replaced_exact


def test_low_precision_activations_are_accepted() -> None:
    net = small_mlp(widths=(8,))
    cbp = ContinualBackprop(net, None, replacement_rate=0.25, maturity_threshold=0, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.randn(4, 4))
    assert cbp.step() == 2
    assert cbp.utility.dtype == torch.float32 and torch.all(torch.isfinite(cbp.utility))


def test_non_negative_shortcut_only_where_discovery_proves_it() -> None:
    relu_net = small_mlp(widths=(6,))
    tanh_net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    assert ContinualBackprop(relu_net, None).hidden_layers[0].nonnegative
    assert not ContinualBackprop(tanh_net, None).hidden_layers[0].nonnegative
    spec = [(relu_net[0], "relu", relu_net[2])]
    explicit = ContinualBackprop(relu_net, None, layers=spec, maturity_threshold=1000)
    discovered = ContinualBackprop(relu_net, None, maturity_threshold=1000)
    assert not explicit.hidden_layers[0].nonnegative  # its recorded input is not proven >= 0
    for _ in range(3):  # both paths compute the same contribution utility on a ReLU net
        relu_net(torch.randn(16, 4))
        explicit.step()
        discovered.step()
    torch.testing.assert_close(explicit.utility, discovered.utility)


def test_buffered_replacement_draws_equal_one_draw_per_step() -> None:
    """Probabilistic replacement takes its per-step draws from blocks: the same numbers as one
    ``torch.rand(layers)`` per step, and every later draw of the generator is unchanged."""
    from cbp_rl.cbp import _BufferedUniform

    buffered = [torch.Generator().manual_seed(s) for s in (3, 4)]
    plain = [torch.Generator().manual_seed(s) for s in (3, 4)]
    uniform = _BufferedUniform(buffered, 2)
    for step in range(1500):  # crosses a block boundary
        seeds = np.array([0, 1]) if step % 3 else np.array([1])
        rows = uniform.next(seeds)
        expected = np.stack([torch.rand(2, generator=plain[s]).numpy() for s in seeds])
        np.testing.assert_array_equal(rows, expected)
        if step in (7, 1100):
            uniform.sync([1])
            assert torch.equal(
                torch.rand(5, generator=buffered[1]), torch.rand(5, generator=plain[1])
            )
    uniform.sync(range(2))
    for mine, theirs in zip(buffered, plain, strict=True):
        assert torch.equal(mine.get_state(), theirs.get_state())
