"""Online normalization (Chiley et al., NeurIPS 2019), the thesis's normalization for batch size 1.

Forward, per unit, with streaming estimates ``mu`` and ``var`` decayed by ``alpha_fwd``::

    n   = (z - mu) / sqrt(var + eps)                 # statistics from *before* this example
    var = alpha_fwd * var + alpha_fwd * (1 - alpha_fwd) * (z - mu)^2
    mu  = mu + (1 - alpha_fwd) * (z - mu)
    y   = clamp(gamma * n + beta, -c, c)             # activation clamping, c = 5 (0 disables)

Backward, a control process decayed by ``alpha_bkw`` removes the gradient's projection on the
normalized output and its mean, as batch normalization's backward does over a batch::

    g  = dn - (1 - alpha_bkw) * v * n ;  v += g * n
    g  = g / sqrt(var_old + eps)
    dz = g - (1 - alpha_bkw) * u       ;  u += dz

With a minibatch of B examples the statistics use the batch's mean and variance and the
control variables its mean (``v += mean(g * n)``), as in the authors' batched kernels; for
B = 1 both forms are the per-example algorithm above. The functions work on ``[..., B, units]``
tensors with state ``[..., 1, units]`` (the batched engine's ``[S, B, units]`` layout);
:class:`OnlineNorm1d` is the same as an ``nn.Module`` for ordinary networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class OnlineNormConfig:
    """Hyperparameters of online normalization."""

    alpha_fwd: float = 0.999
    """Decay of the streaming mean and variance (forward statistics)."""
    alpha_bkw: float = 0.99
    """Decay of the control variables u and v of the backward pass."""
    eps: float = 1e-5
    """Added to the variance before the square root."""
    clamp: float = 5.0
    """Activation clamping of the normalized output to [-clamp, clamp]; 0 disables it."""

    def __post_init__(self) -> None:
        for name in ("alpha_fwd", "alpha_bkw"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"online normalization {name} must be in (0, 1), got {value}")
        if self.eps <= 0:
            raise ValueError(f"online normalization eps must be positive, got {self.eps}")
        if self.clamp < 0:
            raise ValueError(f"online normalization clamp must be >= 0 (0 = off), got {self.clamp}")


class NormState(NamedTuple):
    """Streaming statistics and control variables, each ``[..., 1, units]``; updated in place."""

    mean: Tensor
    var: Tensor
    u: Tensor
    v: Tensor


class NormCache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    normalized: Tensor
    scale: Tensor
    unclamped: Tensor | None


def new_state(shape: tuple[int, ...], **kwargs: Any) -> NormState:
    """Initial state: mean 0, variance 1, control variables 0."""
    return NormState(
        torch.zeros(shape, **kwargs),
        torch.ones(shape, **kwargs),
        torch.zeros(shape, **kwargs),
        torch.zeros(shape, **kwargs),
    )


def forward_train(
    z: Tensor, state: NormState, gamma: Tensor, beta: Tensor, config: OnlineNormConfig
) -> tuple[Tensor, NormCache]:
    """Normalize ``z`` (``[..., B, units]``) and update the statistics in ``state``."""
    scale = state.var.add(config.eps).sqrt_()
    centered = z - state.mean
    normalized = centered / scale
    alpha = config.alpha_fwd
    if z.shape[-2] == 1:
        state.var.mul_(alpha).addcmul_(centered, centered, value=alpha * (1.0 - alpha))
        state.mean.add_(centered, alpha=1.0 - alpha)
    else:
        batch_mean = z.mean(-2, keepdim=True)
        batch_var = z.var(-2, keepdim=True, unbiased=False)
        shift = batch_mean - state.mean
        state.var.mul_(alpha).add_(batch_var, alpha=1.0 - alpha)
        state.var.addcmul_(shift, shift, value=alpha * (1.0 - alpha))
        state.mean.lerp_(batch_mean, 1.0 - alpha)
    out = torch.addcmul(beta, normalized, gamma)
    unclamped = None
    if config.clamp:
        unclamped = out.abs() < config.clamp
        out.clamp_(-config.clamp, config.clamp)
    return out, NormCache(normalized, scale, unclamped)


def forward_eval(
    z: Tensor, state: NormState, gamma: Tensor, beta: Tensor, config: OnlineNormConfig
) -> Tensor:
    """Normalize with the current statistics, changing nothing (evaluation, probes)."""
    normalized = (z - state.mean) / state.var.add(config.eps).sqrt_()
    out = torch.addcmul(beta, normalized, gamma)
    return out.clamp_(-config.clamp, config.clamp) if config.clamp else out


def backward(
    grad_out: Tensor, cache: NormCache, state: NormState, gamma: Tensor, config: OnlineNormConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dz, dgamma, dbeta)`` from ``grad_out`` (of the clamped output); updates the
    control variables in ``state``. ``dgamma``/``dbeta`` are summed over the batch."""
    if cache.unclamped is not None:
        grad_out = grad_out * cache.unclamped
    normalized = cache.normalized
    grad_gamma = (grad_out * normalized).sum(-2, keepdim=True)
    grad_beta = grad_out.sum(-2, keepdim=True)
    control = 1.0 - config.alpha_bkw
    grad = grad_out * gamma
    grad.addcmul_(state.v, normalized, value=-control)
    state.v.add_((grad * normalized).mean(-2, keepdim=True))
    grad.div_(cache.scale)
    grad.sub_(state.u, alpha=control)
    state.u.add_(grad.mean(-2, keepdim=True))
    return grad, grad_gamma, grad_beta


class _OnlineNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, gamma: Tensor, beta: Tensor, module: OnlineNorm1d) -> Tensor:
        out, cache = forward_train(z, module.state(), gamma, beta, module.config)
        ctx.cache = cache
        ctx.module = module
        ctx.save_for_backward(gamma)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        (gamma,) = ctx.saved_tensors
        module: OnlineNorm1d = ctx.module
        grad, grad_gamma, grad_beta = backward(
            grad_out, ctx.cache, module.state(), gamma, module.config
        )
        return grad, grad_gamma.view_as(gamma), grad_beta.view_as(gamma), None


class OnlineNorm1d(nn.Module):
    """Online normalization of ``[B, units]`` pre-activations, with learnable scale and shift.

    Examples:
        >>> norm = OnlineNorm1d(4)
        >>> norm(torch.randn(1, 4)).shape
        torch.Size([1, 4])

    Training mode uses and updates the streaming statistics (forward) and control variables
    (backward); evaluation mode normalizes with the current statistics.
    """

    running_mean: Tensor
    running_var: Tensor
    control_u: Tensor
    control_v: Tensor

    def __init__(self, num_features: int, config: OnlineNormConfig | None = None) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.config = config or OnlineNormConfig()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        initial = new_state((num_features,))
        self.register_buffer("running_mean", initial.mean)
        self.register_buffer("running_var", initial.var)
        self.register_buffer("control_u", initial.u)
        self.register_buffer("control_v", initial.v)

    def state(self) -> NormState:
        """The buffers as a :class:`NormState` of ``[1, units]`` views."""
        return NormState(
            self.running_mean.view(1, -1),
            self.running_var.view(1, -1),
            self.control_u.view(1, -1),
            self.control_v.view(1, -1),
        )

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.num_features:
            raise ValueError(f"expected [B, {self.num_features}] inputs, got {tuple(z.shape)}")
        gamma, beta = self.weight.view(1, -1), self.bias.view(1, -1)
        if not self.training:
            return forward_eval(z, self.state(), gamma, beta, self.config)
        out: Tensor = _OnlineNormFunction.apply(z, gamma, beta, self)
        return out

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"{self.num_features}, alpha_fwd={cfg.alpha_fwd}, alpha_bkw={cfg.alpha_bkw}, "
            f"eps={cfg.eps}, clamp={cfg.clamp}"
        )


__all__ = [
    "NormCache",
    "NormState",
    "OnlineNorm1d",
    "OnlineNormConfig",
    "backward",
    "forward_eval",
    "forward_train",
    "new_state",
]
