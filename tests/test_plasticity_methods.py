"""The field's plasticity methods (cbp_rl.methods, cbp_rl.optim.UPGD) against hand computations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from cbp_rl.methods import (
    METHODS,
    CReLU,
    L2Init,
    ParsevalRegularizer,
    PlasticityInjection,
    ProximalFeatures,
    ReDo,
    ReGraMa,
    ResetLastLayers,
    add_layer_norm,
    use_crelu,
)
from cbp_rl.optim import UPGD


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


class Residual(nn.Module):
    """A network we did not build with cbp_rl: a residual branch, functional and module acts."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.inp(x))
        h = h + self.fc2(self.act(self.fc1(h)))
        return self.head(h)


def close(a: Tensor, b: Tensor) -> bool:
    a, b = a.detach(), b.detach()
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0)
    return bool((a - b).abs().max() <= 1e-5 * scale)


def test_every_method_has_a_description() -> None:
    expected = {"l2init", "crelu", "layernorm", "injection", "reset", "regrama", "parseval"}
    assert expected | {"upgd", "pfo", "cbp", "redo"} <= set(METHODS)
    assert all(len(text) > 20 for text in METHODS.values())


# ----------------------------------------------------------------------------- L2 Init
def test_l2_init_penalty_and_gradient_by_hand() -> None:
    net = mlp()
    l2init = L2Init(net, coef=0.01)
    initial = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    numel = sum(p.numel() for p in net.parameters())
    penalty = l2init.penalty()
    assert close(penalty, torch.tensor(0.01 * 0.25 * numel))
    penalty.backward()
    for p, p0 in zip(net.parameters(), initial, strict=True):
        assert p.grad is not None and close(p.grad, 2 * 0.01 * (p.detach() - p0))


def test_l2_init_resumes_from_its_state_dict() -> None:
    net = mlp()
    saved = L2Init(net).state_dict()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    other = L2Init(net)  # its theta_0 is the shifted network
    other.load_state_dict(saved)
    assert close(other.penalty(), torch.tensor(0.01 * net[0].weight.numel()))


def test_l2_init_refuses_bad_coefficients() -> None:
    for coef in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="coef"):
            L2Init(mlp(), coef=coef)


# ------------------------------------------------------------------------------- CReLU
def test_crelu_doubles_the_next_layers_input_and_computes_both_halves() -> None:
    net = use_crelu(mlp())
    assert isinstance(net[1], CReLU) and isinstance(net[3], CReLU)
    assert net[2].in_features == 16 and net[4].in_features == 12
    x = torch.randn(5, 4)
    h = net[0](x)
    both = net[1](h)
    # interleaved: unit j's relu(x_j), relu(-x_j) are columns 2j, 2j + 1 of the next layer
    assert torch.equal(both[:, 0::2], h.clamp_min(0)) and torch.equal(
        both[:, 1::2], (-h).clamp_min(0)
    )
    assert net(x).shape == (5, 3)


def test_crelu_on_a_conv_network_concatenates_channels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(20, 2)
    )
    use_crelu(net, example_inputs=torch.zeros(1, 1, 6, 6))
    assert net[2].in_channels == 8 and net[5].in_features == 40
    assert net(torch.randn(2, 1, 6, 6)).shape == (2, 2)


def test_crelu_refuses_functional_activations_naming_the_fix() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(ValueError, match="functional activation"):
        use_crelu(Functional(), example_inputs=torch.zeros(1, 3))


# --------------------------------------------------------------------------- LayerNorm
def test_layer_norm_goes_before_each_hidden_activation_of_any_network() -> None:
    net = Residual()
    add_layer_norm(net, example_inputs=torch.zeros(1, 4))
    assert isinstance(net.act, nn.Sequential) and isinstance(net.act[0], nn.LayerNorm)
    x = torch.randn(3, 4)
    z = net.fc1(torch.relu(net.inp(x)))
    expected = torch.relu(torch.nn.functional.layer_norm(z, (16,)))
    assert close(net.act(z), expected)
    # the discovery CBP uses now sees the norm as the hidden layer's norm
    from cbp_rl.discovery import find_hidden_layers

    found = find_hidden_layers(net, example_inputs=torch.zeros(1, 4))
    assert [h.norm for h in found.hidden] == [net.act[0]]


# ---------------------------------------------------------------- plasticity injection
def test_injection_leaves_the_output_unchanged_and_trains_only_the_new_head() -> None:
    net = mlp()
    names = [name for name, _ in net.named_parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    injection = PlasticityInjection(net, opt, head="4", every=2, seed=0)
    x = torch.randn(7, 4)
    before = net(x).detach()
    assert not injection.step() and injection.step()
    assert torch.equal(net(x), before)  # exactly: new(x) - frozen(x) is 0 at injection
    new, frozen = injection.added
    assert not torch.equal(new.weight, net[4].weight)  # freshly initialized
    assert not net[4].weight.requires_grad and not frozen.weight.requires_grad
    assert [name for name, _ in net.named_parameters()] == names  # the network is unchanged
    old_weight = net[4].weight.detach().clone()
    opt.zero_grad()
    net(x).pow(2).mean().backward()
    opt.step()
    assert torch.equal(net[4].weight, old_weight) and net[0].weight.grad is not None
    assert new.weight.grad is not None and not torch.equal(net(x), before)
    folded = injection.folded_weight()
    h = net[3](net[2](net[1](net[0](x))))
    assert close(net(x), h @ folded.t() + net[4].bias + new.bias - frozen.bias)
    # a second injection freezes the first new head and is output-preserving again
    after = net(x).detach()
    injection.inject()
    assert torch.equal(net(x), after) and not new.weight.requires_grad
    assert int(injection.injections) == 2 and len(opt.param_groups) == 3


def test_injection_resume_restores_the_structure_then_the_weights() -> None:
    net = mlp()
    opt = torch.optim.Adam(net.parameters())
    injection = PlasticityInjection(net, opt, head="4", every=1, seed=0)
    injection.step()
    x = torch.randn(3, 4)
    net(x).sum().backward()
    opt.step()
    saved = copy.deepcopy((net.state_dict(), opt.state_dict(), injection.state_dict()))
    fresh = mlp(seed=1)
    fresh_opt = torch.optim.Adam(fresh.parameters())
    restored = PlasticityInjection(fresh, fresh_opt, head="4", every=1, seed=5)
    restored.restore_structure(int(saved[2]["injections"]))
    fresh.load_state_dict(saved[0])
    fresh_opt.load_state_dict(saved[1])
    restored.load_state_dict(saved[2])
    assert torch.equal(fresh(x), net(x))
    for model, optimizer, method in ((net, opt, injection), (fresh, fresh_opt, restored)):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        method.step()
    assert torch.equal(fresh(x), net(x))  # same optimizer and random state


def test_injection_refuses_a_missing_head() -> None:
    with pytest.raises(ValueError, match="no module 'fc'"):
        PlasticityInjection(mlp(), head="fc", every=10)
    with pytest.raises(ValueError, match="every"):
        PlasticityInjection(mlp(), head="4", every=0)


# ------------------------------------------------------------------------------- reset
def test_reset_reinitializes_exactly_the_last_k_layers_and_their_optimizer_state() -> None:
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    reset = ResetLastLayers(net, opt, every=3, layers=2, seed=0)
    assert reset.layer_names == ("2", "4")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert not reset.step() and not reset.step() and reset.step()
    after = net.state_dict()
    for key in ("0.weight", "0.bias"):
        assert torch.equal(after[key], before[key])
    for key in ("2.weight", "2.bias", "4.weight", "4.bias"):
        assert not torch.equal(after[key], before[key])
    assert net[2].weight.abs().max() <= 1 / 8**0.5  # nn.Linear's own initialization
    assert net[0].weight in opt.state and net[2].weight not in opt.state
    with pytest.raises(ValueError, match="between 1 and the network's 3"):
        ResetLastLayers(net, layers=4)


def test_reset_resumes_exactly() -> None:
    a, b = mlp(), mlp()
    first = ResetLastLayers(a, every=1, seed=3)
    first.step()
    second = ResetLastLayers(b, every=1, seed=9)
    second.load_state_dict(first.state_dict())
    b.load_state_dict(a.state_dict())
    first.step(), second.step()
    assert torch.equal(a[4].weight, b[4].weight)


# ----------------------------------------------------------------------------- ReGraMa
def test_regrama_resets_match_redo_on_normalized_gradient_magnitudes() -> None:
    net = mlp()
    regrama = ReGraMa(net, None, threshold=0.3, period=1, seed=0)
    x = torch.randn(16, 4)
    net(x).pow(2).sum().backward()
    grads = [net[0].weight.grad.clone(), net[2].weight.grad.clone()]  # type: ignore[union-attr]
    expected = []
    for grad in grads:
        score = grad.abs().mean(1)  # per unit: mean |dL/dW_in[j, :]|
        expected.append(torch.nonzero(score / score.mean() <= 0.3).flatten())
    probe = ReDo(mlp(), threshold=0.3)
    assert all(
        torch.equal(probe.dormant_units(g.t()), e) for g, e in zip(grads, expected, strict=True)
    )
    out_before = net[2].weight.detach().clone()
    replaced = regrama.step()
    assert replaced == sum(len(e) for e in expected) > 0
    rows = [i for i in range(6) if i not in expected[1].tolist()]
    assert torch.all(net[2].weight[rows][:, expected[0]] == 0)
    keep = [j for j in range(8) if j not in expected[0].tolist()]
    assert torch.equal(net[2].weight[rows][:, keep], out_before[rows][:, keep])
    assert regrama.reinitialized.tolist() == [len(e) for e in expected]


def test_regrama_averages_gradient_magnitudes_over_the_period_and_resumes() -> None:
    net, twin = mlp(), mlp()
    regrama = ReGraMa(net, None, threshold=0.5, period=3, seed=0)
    sums = torch.zeros(8)
    for _ in range(2):
        net.zero_grad()
        net(torch.randn(1, 4)).sum().backward()
        sums += net[0].weight.grad.abs().mean(1)  # type: ignore[union-attr]
        assert regrama.step() == 0
    assert close(regrama.gradient_sums()[0], sums)
    other = ReGraMa(twin, None, threshold=0.5, period=3, seed=1)
    other.load_state_dict(regrama.state_dict())
    twin.load_state_dict(net.state_dict())
    x = torch.randn(1, 4)
    for model, method in ((net, regrama), (twin, other)):
        model.zero_grad()
        model(x).sum().backward()
        method.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters(), strict=True))


def test_regrama_needs_gradients() -> None:
    regrama = ReGraMa(mlp(), period=1)
    with pytest.raises(RuntimeError, match="before zero_grad"):
        regrama.step()


# ---------------------------------------------------------------------------- Parseval
def test_parseval_penalty_and_gradient_by_hand() -> None:
    net = mlp()
    parseval = ParsevalRegularizer(net, coef=1e-3, scale=2.0)
    penalty = parseval.penalty()
    expected = torch.zeros(())
    for layer in (net[0], net[2]):  # the output layer is left out
        w = layer.weight.detach()
        expected += (w @ w.t() - 2.0 * torch.eye(w.shape[0])).pow(2).sum()
    assert close(penalty, 1e-3 * expected)
    penalty.backward()
    for layer in (net[0], net[2]):
        w = layer.weight.detach()
        hand = 4e-3 * (w @ w.t() - 2.0 * torch.eye(w.shape[0])) @ w
        assert layer.weight.grad is not None and close(layer.weight.grad, hand)
    assert net[4].weight.grad is None


# --------------------------------------------------------------------------------- PFO
def test_pfo_penalty_on_the_last_hidden_pre_activations() -> None:
    net = mlp()
    pfo = ProximalFeatures(net, coef=0.5)
    x = torch.randn(5, 4)
    with torch.no_grad():
        net(x)
        old = pfo.features().clone()
        net[2].weight.add_(0.1)
    net(x)
    new = net[2](net[1](net[0](x)))
    assert close(pfo.penalty(old), 0.5 * (new - old).pow(2).mean())
    with pytest.raises(ValueError, match="same batch"):
        pfo.penalty(old[:2])


# -------------------------------------------------------------------------------- UPGD
def upgd_by_hand(
    weights: list[Tensor],
    grads: list[Tensor],
    utilities: list[Tensor],
    step: int,
    noise: list[Tensor],
) -> list[Tensor]:
    lr, decay, beta, sigma = 0.01, 1e-3, 0.999, 1e-3
    new_utils = [
        beta * u - (1 - beta) * g * w for u, g, w in zip(utilities, grads, weights, strict=True)
    ]
    top = max(float(u.max()) for u in new_utils)
    out = []
    for w, g, u, xi in zip(weights, grads, new_utils, noise, strict=True):
        gate = torch.sigmoid((u / (1 - beta**step)) / top)
        out.append((1 - lr * decay) * w - lr * (g + sigma * xi) * (1 - gate))
        utilities[len(out) - 1].copy_(u)
    return out


def test_upgd_update_against_its_formula() -> None:
    net = mlp()
    params = list(net.parameters())
    opt = UPGD(params, lr=0.01, seed=7)
    noise_source = torch.Generator().manual_seed(7)
    utilities = [torch.zeros_like(p) for p in params]
    for step in (1, 2, 3):
        opt.zero_grad()
        net(torch.randn(4, 4)).pow(2).sum().backward()
        weights = [p.detach().clone() for p in params]
        grads = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
        noise = [torch.randn(p.shape, generator=noise_source) for p in params]
        expected = upgd_by_hand(weights, grads, utilities, step, noise)
        opt.step()
        for p, e in zip(params, expected, strict=True):
            assert close(p.detach(), e)


def test_upgd_resumes_exactly_and_refuses_bad_hyperparameters() -> None:
    a, b = mlp(), mlp()
    opt_a = UPGD(a.parameters(), seed=1)
    x = torch.randn(3, 4)
    a(x).sum().backward()
    opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = UPGD(b.parameters(), seed=2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for net, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ValueError, match="beta_utility"):
        UPGD(mlp().parameters(), beta_utility=1.0)
    with pytest.raises(ValueError, match="learning rate"):
        UPGD(mlp().parameters(), lr=0.0)


def test_crelu_layers_are_units_for_cbp_and_the_measures() -> None:
    from cbp_rl import ContinualBackprop
    from cbp_rl.metrics import PlasticityProbe

    net = use_crelu(mlp())
    cbp = ContinualBackprop(net, replacement_rate=0.5, maturity_threshold=1, seed=0)
    assert [layer.outputs_per_unit for layer in cbp.hidden_layers] == [2, 2]
    traced = ContinualBackprop(use_crelu(mlp()), example_inputs=torch.zeros(1, 4))
    assert [layer.name for layer in traced.hidden_layers] == ["0", "2"]
    x = torch.randn(16, 4)
    for _ in range(3):
        net(x)
        cbp.step()
    replaced = cbp.replacement_counts()
    assert sum(replaced) > 0
    net(x)
    probe = PlasticityProbe(net)
    assert probe.measure(x)  # the dead units and ranks of the CReLU layers
