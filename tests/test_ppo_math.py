"""PPO's pieces against hand computations: GAE, the losses, the Gaussian policy; the closed-form
loss heads PPO trains with against autograd of the same losses (written out here, checked
against hand computations)."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor

from cbp_rl.agents import networks
from cbp_rl.agents.networks import gaussian_entropy
from cbp_rl.agents.ppo import compute_gae, policy_head, value_head


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """The agents' Gaussian log-density, of the actions rather than of the standardized noise."""
    return networks.gaussian_log_prob((actions - mean) * torch.exp(-log_std), log_std)


# --------------------------------------------------------------------------- autograd references


class Surrogate(NamedTuple):
    """The clipped surrogate loss of one minibatch and its diagnostics (detached)."""

    loss: Tensor
    approx_kl: Tensor
    clip_fraction: Tensor


def clipped_surrogate(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, *, clip_coef: float
) -> Surrogate:
    """``mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))``, ``ratio = exp(lp - lp_old)``.

    Diagnostics: ``approx_kl = mean((ratio - 1) - log ratio)`` (Schulman's k3 estimator of
    KL(old || new)) and the fraction of ratios outside ``[1 - c, 1 + c]``.
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    loss = torch.max(-advantages * ratio, -advantages * clipped).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return Surrogate(loss, approx_kl, clip_fraction)


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, *, clip_coef: float | None = None
) -> Tensor:
    """``mean((V - R)^2)``; with ``clip_coef``, CleanRL's clipped version
    ``mean(max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2))``."""
    squared = (values - returns).square()
    if clip_coef is not None:
        moved = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        squared = torch.max(squared, (moved - returns).square())
    return squared.mean()


class PPOLoss(NamedTuple):
    """The loss of one minibatch and its parts (parts detached)."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor
    approx_kl: Tensor
    clip_fraction: Tensor


def ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    entropy: Tensor,
    *,
    clip_coef: float,
    value_coef: float = 1.0,
    entropy_coef: float = 0.0,
    value_clip_coef: float | None = None,
) -> PPOLoss:
    """``surrogate + value_coef * value_loss - entropy_coef * entropy`` for one minibatch.

    The policy's parameters get gradient only from the surrogate and the entropy, the value
    network's only from the value loss, so the agent computes the two parts separately (and in
    parallel); this function is their sum, for reference and tests.
    """
    surrogate = clipped_surrogate(log_prob, old_log_prob, advantages, clip_coef=clip_coef)
    value = value_loss(values, old_values, returns, clip_coef=value_clip_coef)
    total = surrogate.loss + value_coef * value - entropy_coef * entropy
    return PPOLoss(
        total,
        surrogate.loss.detach(),
        value.detach(),
        entropy.detach(),
        surrogate.approx_kl,
        surrogate.clip_fraction,
    )


# --------------------------------------------------------------------------- tests

GAMMA, LAMBDA = 0.9, 0.8


def _rollout() -> dict[str, torch.Tensor]:
    """Two envs, four steps. Env 0 terminates at t=1; env 1 is truncated at t=2.

    ``next_values`` holds V of the state each transition led to: V(s_{t+1}) inside an episode,
    V(last observation) = 10 for the truncated episode, the bootstrap value at the end; the entry
    after the termination (99) must be ignored.
    """
    return {
        "rewards": torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]]),
        "values": torch.tensor([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0], [2.0, 0.0]]),
        "next_values": torch.tensor([[1.0, 0.0], [99.0, 0.0], [2.0, 10.0], [2.5, 5.0]]),
        "terminated": torch.tensor([[False, False], [True, False], [False, False], [False, False]]),
        "ended": torch.tensor([[False, False], [True, False], [False, True], [False, False]]),
    }


def test_gae_matches_hand_computation_with_termination_and_truncation() -> None:
    r = _rollout()
    advantages, returns = compute_gae(
        r["rewards"],
        r["values"],
        r["next_values"],
        r["terminated"],
        r["ended"],
        gamma=GAMMA,
        gae_lambda=LAMBDA,
    )
    # env 0: delta_3 = 4 + .9*2.5 - 2 = 4.25; delta_2 = 3 + .9*2 - 1.5 = 3.3 -> 3.3 + .72*4.25;
    # t=1 terminates: delta_1 = 2 - 1 = 1, no look-ahead; t=0: 1 + .9*1 - .5 + .72*1
    # env 1: t=3: 1 + .9*5 = 5.5; t=2 truncated, bootstraps from V(last obs) = 10: 1 + 9 = 10
    # and does not look past it; t=1: 1 + .72*10 = 8.2; t=0: 1 + .72*8.2 = 6.904
    expected = torch.tensor([[2.12, 6.904], [1.0, 8.2], [6.36, 10.0], [4.25, 5.5]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + r["values"])


def test_gae_with_truncation_treated_as_termination() -> None:
    r = _rollout()
    advantages, _ = compute_gae(
        r["rewards"],
        r["values"],
        r["next_values"],
        r["ended"],  # the paper's behaviour: nothing is bootstrapped after a truncation
        r["ended"],
        gamma=GAMMA,
        gae_lambda=LAMBDA,
    )
    # env 1: t=2 delta = 1 (no bootstrap); t=1: 1 + .72*1; t=0: 1 + .72*1.72
    torch.testing.assert_close(advantages[:, 1], torch.tensor([2.2384, 1.72, 1.0, 5.5]))
    torch.testing.assert_close(advantages[:, 0], torch.tensor([2.12, 1.0, 6.36, 4.25]))


def test_gae_with_lambda_one_is_the_discounted_return_minus_value() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.3], [0.2], [0.1]])
    next_values = torch.tensor([[0.2], [0.1], [4.0]])
    flags = torch.zeros(3, 1, dtype=torch.bool)
    advantages, returns = compute_gae(
        rewards, values, next_values, flags, flags, gamma=0.5, gae_lambda=1.0
    )
    discounted = [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4]
    torch.testing.assert_close(returns[:, 0], torch.tensor(discounted))
    torch.testing.assert_close(advantages, returns - values)


def _loss_inputs() -> dict[str, torch.Tensor]:
    return {
        # ratios 1.5, 0.5 and 1.1 against the old policy
        "log_prob": torch.tensor([math.log(1.5), math.log(0.5), math.log(1.1)], requires_grad=True),
        "old_log_prob": torch.zeros(3),
        "advantages": torch.tensor([1.0, -2.0, 0.5]),
        "values": torch.tensor([1.0, 2.0, 0.0], requires_grad=True),
        "old_values": torch.tensor([0.9, 2.5, 0.0]),
        "returns": torch.tensor([2.0, 0.0, 1.0]),
        "entropy": torch.tensor(1.3),
    }


def test_ppo_loss_matches_hand_computation() -> None:
    x = _loss_inputs()
    loss = ppo_loss(
        x["log_prob"],
        x["old_log_prob"],
        x["advantages"],
        x["values"],
        x["old_values"],
        x["returns"],
        x["entropy"],
        clip_coef=0.2,
        value_coef=0.5,
        entropy_coef=0.01,
    )
    # surrogate terms max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2; max(1.0, 1.6) = 1.6;
    # max(-0.55, -0.55) = -0.55 -> mean -0.05
    assert loss.policy.item() == pytest.approx(-0.05, abs=1e-6)
    assert loss.value.item() == pytest.approx((1 + 4 + 1) / 3, abs=1e-6)
    assert loss.total.item() == pytest.approx(-0.05 + 0.5 * 2.0 - 0.01 * 1.3, abs=1e-6)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))) / 3
    assert loss.approx_kl.item() == pytest.approx(kl, abs=1e-6)
    assert loss.clip_fraction.item() == pytest.approx(2 / 3, abs=1e-6)
    loss.total.backward()
    # only the unclipped third sample moves the policy: d/dlp (-A r / 3) = -0.5 * 1.1 / 3
    torch.testing.assert_close(x["log_prob"].grad, torch.tensor([0.0, 0.0, -0.5 * 1.1 / 3]))
    # d/dV of 0.5 * mean((V - R)^2) = (V - R) / 3
    torch.testing.assert_close(x["values"].grad, torch.tensor([-1.0, 2.0, -1.0]) / 3)


def test_clipped_value_loss_matches_hand_computation() -> None:
    x = _loss_inputs()
    loss = value_loss(x["values"], x["old_values"], x["returns"], clip_coef=0.2)
    # V_old + clip(V - V_old, +-0.2) = 1.0, 2.3, 0.0; squared errors max(1, 1), max(4, 5.29),
    # max(1, 1)
    assert loss.item() == pytest.approx((1 + 5.29 + 1) / 3, abs=1e-6)


def test_surrogate_is_the_plain_policy_gradient_inside_the_clip_range() -> None:
    log_prob = torch.tensor([0.05, -0.05], requires_grad=True)
    advantages = torch.tensor([2.0, -1.0])
    surrogate = clipped_surrogate(log_prob, torch.zeros(2), advantages, clip_coef=0.2)
    surrogate.loss.backward()
    ratio = log_prob.detach().exp()
    torch.testing.assert_close(log_prob.grad, -advantages * ratio / 2)
    assert surrogate.clip_fraction.item() == 0.0


def test_gaussian_log_prob_and_entropy_match_torch_distributions() -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, generator=generator)
    log_std = torch.randn(3, generator=generator) * 0.5
    actions = torch.randn(5, 3, generator=generator)
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(
        gaussian_log_prob(mean, log_std, actions), normal.log_prob(actions).sum(-1)
    )
    torch.testing.assert_close(gaussian_entropy(log_std), normal.entropy()[0].sum())


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
def test_policy_head_gradients_match_autograd(entropy_coef: float) -> None:
    generator = torch.Generator().manual_seed(1)
    mean = torch.randn(256, 4, generator=generator, requires_grad=True)
    log_std = (0.3 * torch.randn(4, generator=generator)).requires_grad_()
    actions = mean.detach() + torch.randn(256, 4, generator=generator)
    with torch.no_grad():
        log_prob = gaussian_log_prob(mean, log_std, actions)
    # ratios spread inside and outside [0.8, 1.2], some exactly 1 (ties of the max)
    old_log_prob = log_prob + 0.4 * torch.randn(256, generator=generator)
    old_log_prob[:16] = log_prob[:16]
    advantages = torch.randn(256, generator=generator)
    surrogate = clipped_surrogate(
        gaussian_log_prob(mean, log_std, actions), old_log_prob, advantages, clip_coef=0.2
    )
    total = surrogate.loss - entropy_coef * gaussian_entropy(log_std)
    total.backward()
    head = policy_head(
        mean.detach(),
        log_std.detach(),
        actions,
        old_log_prob,
        advantages,
        clip_coef=0.2,
        entropy_coef=entropy_coef,
    )
    assert 0.1 < surrogate.clip_fraction.item() < 0.9
    torch.testing.assert_close(head.loss, total.detach())
    torch.testing.assert_close(head.grad_mean, mean.grad)
    torch.testing.assert_close(head.grad_log_std, log_std.grad)
    expected = [surrogate.loss, gaussian_entropy(log_std), surrogate.approx_kl]
    torch.testing.assert_close(head.stats[:3], torch.stack(expected).detach())
    torch.testing.assert_close(head.stats[3], surrogate.clip_fraction)


@pytest.mark.parametrize("clip_coef", [None, 0.2])
def test_value_head_gradient_matches_autograd(clip_coef: float | None) -> None:
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(256, generator=generator, requires_grad=True)
    old_values = values.detach() + 0.4 * torch.randn(256, generator=generator)
    old_values[:8] = values.detach()[:8]  # no change: the clipped and plain errors tie
    returns = torch.randn(256, generator=generator)
    loss = value_loss(values, old_values, returns, clip_coef=clip_coef)
    (0.5 * loss).backward()
    head_loss, grad = value_head(
        values.detach(), old_values, returns, value_coef=0.5, clip_coef=clip_coef
    )
    torch.testing.assert_close(head_loss, loss.detach())
    torch.testing.assert_close(grad, values.grad)
