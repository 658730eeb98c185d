"""Plasticity measures against hand-computed values, and the probe on real small networks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cbp_rl.metrics import (
    MEASURES,
    PlasticityProbe,
    WeightSnapshot,
    action_saturation,
    activation_matrix,
    approximate_rank,
    dead_unit_fraction,
    dormant_ratio,
    effective_rank,
    grad_norm,
    grad_norm_per_layer,
    inactive_unit_fraction,
    mean_abs_weight,
    mean_abs_weight_per_layer,
    named_weights,
    stable_rank,
    weight_change,
)

# --- pure functions ------------------------------------------------------------------------------


def test_dead_unit_fraction_mlp_shape() -> None:
    acts = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, -1.0, 0.0]])
    assert dead_unit_fraction(acts) == pytest.approx(2 / 4)


def test_dead_unit_fraction_conv_shape() -> None:
    acts = torch.zeros(2, 3, 4)  # [M, channels, positions]
    acts[1, 1, 3] = 0.5  # channel 1 is alive at a single position of a single example
    acts[:, 2, :] = 1.0
    assert dead_unit_fraction(acts) == pytest.approx(1 / 3)


def test_dead_unit_fraction_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="units"):
        dead_unit_fraction(torch.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        dead_unit_fraction(torch.zeros(0, 3))


def test_dormant_ratio_hand_numbers() -> None:
    acts = torch.tensor([[0.0, 1.0, 2.0, 0.1], [0.0, 3.0, -2.0, -0.1]])
    # mean |h| per unit: [0, 2, 2, 0.1]; layer mean 1.025; scores [0, 1.95, 1.95, 0.0976]
    assert dormant_ratio(acts) == pytest.approx(1 / 4)
    assert dormant_ratio(acts, tau=0.025) == pytest.approx(1 / 4)
    assert dormant_ratio(acts, tau=0.1) == pytest.approx(2 / 4)
    assert dormant_ratio(acts, tau=2.0) == pytest.approx(4 / 4)


def test_dormant_ratio_conv_shape_and_all_zero() -> None:
    acts = torch.zeros(2, 2, 2)
    acts[0, 0, 0] = 4.0  # channel 0: mean |h| = 1 over 4 entries
    acts[:, 1, :] = 0.05  # channel 1: 0.05; layer mean 0.525, score 0.095
    assert dormant_ratio(acts, tau=0.1) == pytest.approx(1 / 2)
    assert dormant_ratio(acts, tau=0.09) == pytest.approx(0.0)
    assert dormant_ratio(torch.zeros(3, 5)) == 1.0
    with pytest.raises(ValueError, match="tau"):
        dormant_ratio(acts, tau=-0.1)


def _rotated(diagonal: list[float]) -> Tensor:
    """A 3x2 matrix with the given singular values, not diagonal itself."""
    q_left, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [2.0, 0.1, 1.0]]))
    q_right, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0], [-0.5, 1.0]]))
    core = torch.zeros(3, 2)
    core[0, 0], core[1, 1] = diagonal
    return q_left @ core @ q_right.T


def test_ranks_of_known_singular_values() -> None:
    for matrix in (torch.diag(torch.tensor([3.0, 1.0])), _rotated([3.0, 1.0])):
        expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
        assert effective_rank(matrix) == pytest.approx(expected, rel=1e-6)
        assert approximate_rank(matrix) == 2
        assert approximate_rank(matrix, threshold=0.7) == 1
        assert approximate_rank(matrix, threshold=1.0) == 2
        assert stable_rank(matrix) == pytest.approx(10 / 9, rel=1e-6)
    # the boundary counts as kept: 3 of 4 keeps exactly 0.75
    assert approximate_rank(torch.diag(torch.tensor([3.0, 1.0])), threshold=0.75) == 1


def test_ranks_of_rank_one_and_zero_matrices() -> None:
    rank_one = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, -1.0]))
    assert effective_rank(rank_one) == pytest.approx(1.0, rel=1e-6)
    assert approximate_rank(rank_one) == 1
    assert stable_rank(rank_one) == pytest.approx(1.0, rel=1e-6)
    zero = torch.zeros(4, 3)
    assert (effective_rank(zero), approximate_rank(zero), stable_rank(zero)) == (0.0, 0, 0.0)
    equal = torch.eye(4)
    assert effective_rank(equal) == pytest.approx(4.0)
    assert approximate_rank(equal) == 4
    assert stable_rank(equal) == pytest.approx(4.0)


def test_rank_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        approximate_rank(torch.eye(2), threshold=0.0)
    with pytest.raises(ValueError, match="activation_matrix"):
        effective_rank(torch.zeros(2, 3, 4))


def test_activation_matrix_puts_positions_with_examples() -> None:
    acts = torch.arange(12.0).reshape(2, 3, 2)  # [M=2, channels=3, P=2]
    matrix = activation_matrix(acts)
    assert matrix.shape == (4, 3)
    # row (m, p) holds the three channels of example m at position p
    assert matrix[1].tolist() == [1.0, 3.0, 5.0]
    assert matrix[2].tolist() == [6.0, 8.0, 10.0]
    assert activation_matrix(torch.ones(5, 3)).shape == (5, 3)


def _two_layer_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        net[0].bias.fill_(100.0)  # biases are not weights
        net[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
    return net


def test_mean_abs_weight_per_layer_and_overall() -> None:
    net = _two_layer_net()
    assert mean_abs_weight_per_layer(net) == pytest.approx([2.5, 1.0])
    assert mean_abs_weight(net) == pytest.approx((10.0 + 2.0) / 6)  # count-weighted
    assert mean_abs_weight([net[2], net[0].weight]) == pytest.approx(2.0)
    assert mean_abs_weight(net[0].weight) == pytest.approx(2.5)
    assert list(named_weights(net)) == ["0.weight", "2.weight"]
    with pytest.raises(ValueError, match="no weights"):
        mean_abs_weight(nn.ReLU())


def test_weight_change_and_snapshot() -> None:
    net = _two_layer_net()
    snap = WeightSnapshot(net)
    with pytest.raises(RuntimeError, match="take"):
        snap.change_since()
    snap.take()
    old = {name: w.detach().clone() for name, w in named_weights(net).items()}
    with torch.no_grad():
        net[0].weight[0, 1] += 0.5
        net[2].weight -= 1.0
        net[0].bias += 7.0  # not measured
    change = snap.change_since()
    assert change.per_layer == pytest.approx({"0.weight": 0.5 / 4, "2.weight": 2.0 / 2})
    assert change.total == pytest.approx(2.5)
    assert change.mean == pytest.approx(2.5 / 6)
    assert weight_change(old, net) == change
    snap.take()
    assert snap.change_since().total == 0.0
    with pytest.raises(ValueError, match="does not have"):
        weight_change({"9.weight": torch.zeros(1)}, net)


def test_grad_norm_total_and_per_layer() -> None:
    net = _two_layer_net()
    net[0].weight.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    net[0].bias.grad = torch.tensor([12.0, 0.0])
    assert grad_norm(net.parameters()) == pytest.approx(13.0)  # sqrt(9 + 16 + 144); skips None
    assert grad_norm([net[2].weight]) == 0.0
    assert grad_norm_per_layer(net) == pytest.approx([5.0, 0.0])
    net[2].weight.grad = torch.tensor([[0.0, 12.0]])
    assert grad_norm(net[2].weight) == pytest.approx(12.0)
    assert grad_norm(weight for weight in named_weights(net).values()) == pytest.approx(13.0)


def test_action_saturation() -> None:
    actions = torch.tensor([[1.0, 0.5, -1.0], [1.2, -0.3, 0.9999999]])
    assert action_saturation(actions, -1.0, 1.0) == pytest.approx(4 / 6)
    assert action_saturation(actions, -1.0, 1.0, tol=0.0) == pytest.approx(3 / 6)
    low, high = torch.tensor([-2.0, -0.3, -1.0]), torch.tensor([2.0, 0.5, 1.0])
    # per dimension: column 0 never, column 1 both (0.5 and -0.3), column 2 both
    assert action_saturation(actions, low, high) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="low"):
        action_saturation(actions, 1.0, -1.0)


# --- the probe -----------------------------------------------------------------------------------


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)
    )
    with torch.no_grad():
        net[0].bias[:2] = -100.0  # two dead units in layer 0
    return net


def _expected_unit_measures(hidden: list[Tensor], tau: float) -> dict[str, float]:
    expected: dict[str, float] = {}
    for i, acts in enumerate(hidden):
        expected[f"dead_units/{i}"] = dead_unit_fraction(acts)
        expected[f"inactive/{i}"] = inactive_unit_fraction(acts, 0.01)
        expected[f"dormant/{i}"] = dormant_ratio(acts, tau)
        matrix = activation_matrix(acts)
        expected[f"effective_rank/{i}"] = effective_rank(matrix)
        expected[f"rank99/{i}"] = float(approximate_rank(matrix))
        expected[f"stable_rank/{i}"] = stable_rank(matrix)
    return expected


def _state(net: nn.Module) -> dict[str, Tensor]:
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state.update(
        {f"{k}.grad": p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    )
    return state


def test_probe_mlp_matches_hand_computation() -> None:
    net = _mlp()
    inputs = torch.randn(32, 4)
    net(inputs).square().sum().backward()  # grads exist, with dropout in train mode
    net.train()
    before, rng = _state(net), torch.get_rng_state()

    probe = PlasticityProbe(net, dormant_tau=0.1)
    got = probe.measure(inputs)

    # the network, its grads, its modes and the RNG are untouched
    after = _state(net)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(module.training for module in net.modules())

    with torch.no_grad():  # eval mode: no dropout
        h0 = torch.relu(net[0](inputs))
        h1 = torch.relu(net[3](h0))
    expected = _expected_unit_measures([h0, h1], tau=0.1)
    assert expected["dead_units/0"] == pytest.approx(2 / 6)
    expected["dead_units/mean"] = (expected["dead_units/0"] + expected["dead_units/1"]) / 2
    expected["dead_units/all"] = (2 + 5 * expected["dead_units/1"]) / 11
    assert expected["inactive/0"] >= 2 / 6  # the dead units are inactive too
    for name in ("inactive", "dormant", "effective_rank", "rank99", "stable_rank"):
        expected[f"{name}/mean"] = (expected[f"{name}/0"] + expected[f"{name}/1"]) / 2
    for name in ("inactive", "dormant"):
        expected[f"{name}/all"] = (6 * expected[f"{name}/0"] + 5 * expected[f"{name}/1"]) / 11
    weights = [net[0].weight, net[3].weight, net[5].weight]
    grads = [w.grad for w in weights if w.grad is not None]
    assert len(grads) == 3
    for key, w, g in zip(("0", "1", "out"), weights, grads, strict=True):
        expected[f"weight_magnitude/{key}"] = w.abs().mean().item()
        expected[f"weight_change/{key}"] = 0.0
        expected[f"grad_norm/{key}"] = g.norm().item()
    expected["weight_magnitude/all"] = torch.cat([w.flatten() for w in weights]).abs().mean().item()
    expected["weight_change/all"] = expected["weight_change/sum"] = 0.0
    expected["grad_norm/all"] = torch.cat([g.flatten() for g in grads]).norm().item()

    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key


def test_probe_weight_change_between_measures() -> None:
    net = _mlp()
    inputs = torch.randn(8, 4)
    probe = PlasticityProbe(net, measures=["weight_change"])
    first = probe.measure(inputs)
    assert set(first) == {"weight_change/0", "weight_change/1", "weight_change/out",
                          "weight_change/all", "weight_change/sum"}  # fmt: skip
    assert all(v == 0.0 for v in first.values())
    with torch.no_grad():
        net[3].weight[0, :] += 0.6  # 6 of 30 weights
        net[5].weight[1, 0] -= 1.0
    second = probe.measure(inputs)
    assert second["weight_change/0"] == 0.0
    assert second["weight_change/1"] == pytest.approx(6 * 0.6 / 30)
    assert second["weight_change/out"] == pytest.approx(1.0 / 10)
    assert second["weight_change/sum"] == pytest.approx(4.6)
    assert second["weight_change/all"] == pytest.approx(4.6 / (24 + 30 + 10))
    assert probe.measure(inputs)["weight_change/sum"] == 0.0


def test_probe_conv_net_matches_hand_computation() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 3, kernel_size=2), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 3 * 3, 2),
    )  # fmt: skip
    inputs = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        net[0].bias[1] = -50.0  # channel 1 dead
        net[1].running_mean.fill_(0.1)
    before = _state(net)
    probe = PlasticityProbe(net, measures=["dead_units", "effective_rank", "rank99",
                                           "stable_rank", "weight_magnitude"])  # fmt: skip
    got = probe.measure(inputs)
    after = _state(net)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats untouched
    assert net.training

    with torch.no_grad():
        net.eval()
        hidden = torch.relu(net[1](net[0](inputs)))  # [5, 3, 3, 3]
        net.train()
    acts = hidden.reshape(5, 3, 9)
    assert dead_unit_fraction(acts) == pytest.approx(1 / 3)
    matrix = hidden.permute(0, 2, 3, 1).reshape(-1, 3)  # every position is an example
    expected = {
        "dead_units/0": 1 / 3,
        "dead_units/mean": 1 / 3,
        "dead_units/all": 1 / 3,
        "effective_rank/0": effective_rank(matrix),
        "rank99/0": float(approximate_rank(matrix)),
        "stable_rank/0": stable_rank(matrix),
        "weight_magnitude/0": net[0].weight.abs().mean().item(),
        "weight_magnitude/out": net[4].weight.abs().mean().item(),
        "weight_magnitude/all": (net[0].weight.abs().sum() + net[4].weight.abs().sum()).item()
        / (12 + 54),
    }
    for name in ("effective_rank", "rank99", "stable_rank"):
        expected[f"{name}/mean"] = expected[f"{name}/0"]
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key
    assert 1.0 <= got["effective_rank/0"] <= 2.0 + 1e-9  # two live channels


def test_probe_state_dict_round_trip(tmp_path: Path) -> None:
    net = _mlp()
    inputs = torch.randn(8, 4)
    probe = PlasticityProbe(net, measures=["weight_change"])
    assert probe.state_dict() == {}
    probe.measure(inputs)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    with torch.no_grad():
        net[0].weight.mul_(1.5)

    resumed = PlasticityProbe(net, measures=["weight_change"])
    resumed.load_state_dict(torch.load(tmp_path / "probe.pt", weights_only=True))
    expected = probe.measure(inputs)
    assert expected["weight_change/0"] > 0
    assert resumed.measure(inputs) == expected

    with pytest.raises(ValueError, match="do not match"):
        resumed.load_state_dict({"0.weight": torch.zeros(6, 4)})


def test_probe_options_and_errors() -> None:
    net = _mlp()
    probe = PlasticityProbe(net, measures=["dead_units", "grad_norm"])
    got = probe.measure(torch.randn(4, 4))
    assert {key.split("/")[0] for key in got} == {"dead_units", "grad_norm"}
    assert got["grad_norm/all"] == 0.0  # no backward yet: missing grads count as zero
    with pytest.raises(ValueError, match="valid measures"):
        PlasticityProbe(net, measures=["dead_units", "rank"])
    with pytest.raises(ValueError, match="layers="):
        PlasticityProbe(nn.Sequential(nn.Linear(2, 2)))
    explicit = PlasticityProbe(net, layers=[(net[3], net[4], net[5])], measures=MEASURES)
    keys = explicit.measure(torch.randn(4, 4))
    assert "dead_units/0" in keys and "dead_units/1" not in keys
    with pytest.raises(ValueError, match="not all layers"):
        PlasticityProbe(net, layers=[(nn.Linear(6, 5), "relu", net[5])])
