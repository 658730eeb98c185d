"""MLPs (the paper's initializations and CleanRL's orthogonal one), optimizers and the diagonal
Gaussian's density and entropy, for the agents."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from cbp_rl.agents.config import FieldMethodsConfig, NetworkConfig, OptimizerConfig
from cbp_rl.methods import add_layer_norm, use_crelu
from cbp_rl.nets import mlp
from cbp_rl.optim import UPGD, make_optimizer

__all__ = [
    "build_mlp",
    "build_optimizer",
    "gaussian_entropy",
    "gaussian_log_prob",
    "gaussian_log_prob_of_squares",
    "replacement_init",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(noise: Tensor, log_std: Tensor) -> Tensor:
    """``log N(mean + exp(log_std) * noise; mean, exp(log_std)^2)`` summed over the last
    (action) dimension: the density from the standardized sample ``noise = (a - mean) / std``,
    as both policies draw their actions."""
    return gaussian_log_prob_of_squares(noise.square(), log_std)


def gaussian_log_prob_of_squares(squared_noise: Tensor, log_std: Tensor) -> Tensor:
    """:func:`gaussian_log_prob` from ``noise.square()``, for callers that need the squares too."""
    return -(0.5 * squared_noise + log_std + _LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian: ``sum(0.5 + log sqrt(2 pi) + log_std)``."""
    return (0.5 + _LOG_SQRT_2PI + log_std).sum()


def build_mlp(
    in_dim: int, out_dim: int, settings: NetworkConfig, *, output_gain: float = 1.0
) -> nn.Sequential:
    """``Linear -> activation -> ... -> Linear`` as ``settings`` describe.

    ``lecun`` / ``kaiming`` / ``xavier`` / ``default`` are :func:`cbp_rl.nets.mlp`'s uniform
    inits (lecun: every layer, the output layer included, ``U(+-sqrt(3/fan_in))``, zero bias).
    ``orthogonal`` is CleanRL's: orthogonal weights with gain ``sqrt(2)`` in hidden layers and
    ``output_gain`` in the output layer, zero biases. ``output_gain`` is ignored by lecun.

    ``activation="crelu"`` builds the ReLU network and applies :func:`cbp_rl.methods.use_crelu`
    (the widened layers get the same init); ``layer_norm`` applies
    :func:`cbp_rl.methods.add_layer_norm`.
    """
    crelu = settings.activation == "crelu"
    activation = "relu" if crelu else settings.activation
    orthogonal = settings.init == "orthogonal"
    net = mlp(
        in_dim,
        settings.hidden_sizes,
        out_dim,
        activation=activation,
        init="kaiming" if orthogonal else settings.init,
        output_gain=1.0 if orthogonal else output_gain,
    )
    if crelu:
        use_crelu(net, init=None if orthogonal else settings.init, output_gain=output_gain)
    if settings.layer_norm:
        add_layer_norm(net)
    if not orthogonal:
        return net
    linears = [module for module in net if isinstance(module, nn.Linear)]
    with torch.no_grad():
        for index, linear in enumerate(linears):
            gain = output_gain if index == len(linears) - 1 else math.sqrt(2.0)
            nn.init.orthogonal_(linear.weight, gain)
            linear.bias.zero_()
    return net


def replacement_init(settings: NetworkConfig, cbp_init: str) -> str:
    """The distribution CBP and ReDo draw new incoming weights from.

    ``auto`` follows the network's init; orthogonal networks get ``kaiming`` (uniform with the
    activation's gain), since a replaced unit needs a distribution, not a matrix.
    """
    if cbp_init != "auto":
        return cbp_init
    return "kaiming" if settings.init == "orthogonal" else settings.init


def build_optimizer(
    settings: OptimizerConfig,
    params: list[nn.Parameter],
    upgd: FieldMethodsConfig | None = None,
    *,
    seed: int | None = None,
) -> Optimizer:
    """The optimizer ``settings`` describe, over ``params`` (``upgd``: UPGD's own settings).

    Adam and AdamW use torch's fused kernel when ``settings.fused`` (and torch supports it);
    the rest comes from :func:`cbp_rl.optim.make_optimizer` (coupled L2 except AdamW).
    """
    if settings.optimizer == "upgd":
        extra = upgd or FieldMethodsConfig()
        return UPGD(
            params,
            lr=settings.lr,
            weight_decay=extra.upgd_weight_decay,
            beta_utility=extra.upgd_beta_utility,
            sigma=extra.upgd_sigma,
            seed=seed,
        )
    hyper: dict[str, Any] = {
        "lr": settings.lr,
        "betas": settings.betas,
        "eps": settings.eps,
        "weight_decay": settings.weight_decay,
    }
    if settings.fused and settings.optimizer in ("adam", "adamw"):
        kind = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
        try:
            return kind(params, **hyper, fused=True)
        except (RuntimeError, TypeError):  # a torch without fused kernels for this device
            pass
    return make_optimizer(settings.optimizer, params, **hyper, momentum=settings.momentum)
