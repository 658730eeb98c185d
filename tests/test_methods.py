"""ReDo, shrink-and-perturb and the optimizer factory (L2, non-stationary Adam)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cbp_rl.methods import ReDo, ShrinkAndPerturb
from cbp_rl.optim import NONSTATIONARY_ADAM_BETAS, UPGD, ResettableAdam, make_optimizer


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_redo_reinitializes_units_at_or_below_the_threshold_every_period() -> None:
    net = mlp()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.05, -1.0]))
    redo = ReDo(net, None, threshold=0.1, period=3, init="kaiming", seed=0)
    x = torch.randn(5, 4)
    out_before = net[2].weight.detach().clone()
    # activity per unit: [1]*6, 0.05, 0 -> mean 0.75625; scores 1.32.., 0.066, 0
    for call in range(1, 4):
        net(x)
        replaced = redo.step()
        assert replaced == (2 if call == 3 else 0)
    assert torch.all(net[2].weight[:, 6:] == 0)
    assert torch.equal(net[2].weight[:, :6], out_before[:, :6])
    assert torch.all(net[0].bias[6:] == 0)
    bound = math.sqrt(2.0) * math.sqrt(3 / 4)
    assert torch.all(net[0].weight[6:].abs() <= bound) and torch.any(net[0].weight[6:] != 0)
    assert torch.all(net[0].weight[:6] == 0)
    assert redo.reinitialized.tolist() == [2]


def test_redo_resets_optimizer_moments_when_asked() -> None:
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    redo = ReDo(net, opt, threshold=0.0, period=4, reset_optimizer_state=True, seed=0)
    with torch.no_grad():
        net[0].bias.fill_(1.0)  # every unit alive: all moments become non-zero
    for _ in range(3):
        net(torch.randn(6, 4)).pow(2).sum().backward()
        opt.step()
        redo.step()
    with torch.no_grad():
        net[0].bias[:3] = -50.0  # units 0-2 go dead
    net(torch.randn(6, 4))
    assert redo.step() == 3
    for key in ("exp_avg", "exp_avg_sq"):
        incoming, outgoing = opt.state[net[0].weight][key], opt.state[net[2].weight][key]
        assert torch.all(incoming[:3] == 0) and torch.all(outgoing[:, :3] == 0)
        assert torch.all(incoming[3:].abs().sum(1) > 0)
        assert torch.all(outgoing[:, 3:].abs().sum(0) > 0)


def test_redo_state_dict_carries_counter_and_generator() -> None:
    net = mlp()
    redo = ReDo(net, None, threshold=1.0, period=2, seed=5)
    x = torch.randn(4, 4)
    for _ in range(3):
        net(x)
        redo.step()
    saved = redo.state_dict()
    clone_net = mlp()
    clone_net.load_state_dict(net.state_dict())
    clone = ReDo(clone_net, None, threshold=1.0, period=2, seed=99)
    clone.load_state_dict(saved)
    net(x)
    clone_net(x)
    redo.step()
    clone.step()
    assert torch.equal(net[0].weight, clone_net[0].weight)


def test_redo_validates_arguments() -> None:
    with pytest.raises(ValueError, match="period must be a positive integer"):
        ReDo(mlp(), None, period=0)
    with pytest.raises(ValueError, match="threshold must be non-negative"):
        ReDo(mlp(), None, threshold=-1)
    with pytest.raises(ValueError, match="valid inits are"):
        ReDo(mlp(), None, init="he")


def test_shrink_and_perturb_matches_the_formula() -> None:
    net = mlp()
    before = [p.detach().clone() for p in net.parameters()]
    snp = ShrinkAndPerturb(net, noise_std=0.01, shrink=0.9, seed=3)
    snp.step()
    generator = torch.Generator().manual_seed(3)
    for old, new in zip(before, net.parameters(), strict=True):
        noise = torch.randn(old.shape, generator=generator)
        torch.testing.assert_close(new.detach(), 0.9 * old + 0.01 * noise)


def test_shrink_and_perturb_resumes_its_noise_stream() -> None:
    a = ShrinkAndPerturb(mlp(), noise_std=0.1, seed=1)
    a.step()
    state = a.state_dict()
    net_b = mlp()
    b = ShrinkAndPerturb(net_b, noise_std=0.1, seed=2)
    b.load_state_dict(state)
    net_a_params = list(a._params)
    with torch.no_grad():
        for pa, pb in zip(net_a_params, net_b.parameters(), strict=True):
            pb.copy_(pa)
    a.step()
    b.step()
    for pa, pb in zip(net_a_params, net_b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_shrink_and_perturb_validates() -> None:
    with pytest.raises(ValueError, match="noise_std must be non-negative"):
        ShrinkAndPerturb(mlp(), noise_std=-1.0)
    with pytest.raises(ValueError, match=r"shrink must be in \(0, 1\]"):
        ShrinkAndPerturb(mlp(), noise_std=0.1, shrink=0.0)


def test_make_optimizer_builds_the_baselines() -> None:
    params = list(mlp().parameters())
    ns = make_optimizer("adam", params, lr=1e-4, betas=NONSTATIONARY_ADAM_BETAS)
    assert isinstance(ns, torch.optim.Adam)
    assert ns.param_groups[0]["betas"] == (0.99, 0.99)
    l2 = make_optimizer("sgd", params, lr=0.003, weight_decay=1e-4)
    assert l2.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(make_optimizer("resettable_adam", params, lr=1e-3), ResettableAdam)
    with pytest.raises(ValueError, match="valid optimizers are sgd, adam, adamw"):
        make_optimizer("rmsprop", params, lr=1e-3)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        make_optimizer("adam", params, lr=0.0)
    with pytest.raises(ValueError, match="betas must be two numbers"):
        make_optimizer("adam", params, lr=1e-3, betas=(0.9, 1.0))


def test_coupled_l2_adds_decay_to_the_gradient() -> None:
    param = nn.Parameter(torch.tensor([2.0]))
    opt = make_optimizer("sgd", [param], lr=0.1, weight_decay=0.5)
    param.grad = torch.tensor([1.0])
    opt.step()
    assert param.item() == pytest.approx(2.0 - 0.1 * (1.0 + 0.5 * 2.0))


@pytest.mark.parametrize("optimizer", [ResettableAdam, UPGD])
def test_a_closure_is_evaluated_with_gradients_and_its_loss_returned(
    optimizer: type[ResettableAdam] | type[UPGD],
) -> None:
    weight = nn.Parameter(torch.ones(2))

    def closure() -> float:
        loss = (weight**2).sum()
        assert torch.is_grad_enabled()
        loss.backward()
        return loss.item()

    opt = optimizer([weight], lr=0.1)
    with torch.no_grad():
        assert opt.step(closure) == 2.0
    assert opt.step() is None
    assert not torch.equal(weight.detach(), torch.ones(2))


def test_resettable_adam_equals_adam_without_resets() -> None:
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(3, 4))
    b = nn.Parameter(a.detach().clone())
    opt_a = torch.optim.Adam([a], lr=0.01, betas=(0.9, 0.99), weight_decay=1e-3)
    opt_b = ResettableAdam([b], lr=0.01, betas=(0.9, 0.99), weight_decay=1e-3)
    for i in range(20):
        grad = torch.randn(3, 4, generator=torch.Generator().manual_seed(i))
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b)
