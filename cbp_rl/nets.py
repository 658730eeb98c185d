"""Network builders and the paper's weight initializations (kaiming, lecun, xavier, default)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

InitName = Literal["kaiming", "lecun", "xavier", "default"]
INIT_NAMES: tuple[str, ...] = get_args(InitName)

ActivationName = Literal[
    "relu", "tanh", "sigmoid", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "identity"
]
ACTIVATION_NAMES: tuple[str, ...] = get_args(ActivationName)

_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "identity": nn.Identity,
}

# Activations without a gain of their own in torch.nn.init.calculate_gain use the ReLU gain,
# as the reference code does for swish and elu.
_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.ELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.PReLU)


def validate_init(init: str) -> None:
    """Raise ``ValueError`` naming the valid initializations if ``init`` is not one."""
    if init not in INIT_NAMES:
        raise ValueError(f"unknown init {init!r}; valid inits are {', '.join(INIT_NAMES)}")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from its name (``relu``, ``tanh``, ...)."""
    try:
        return _ACTIVATION_MODULES[name]()
    except KeyError:
        valid = ", ".join(ACTIVATION_NAMES)
        raise ValueError(f"unknown activation {name!r}; valid activations are {valid}") from None


def activation_gain(activation: nn.Module | str | None) -> float:
    """The gain ``torch.nn.init.calculate_gain`` gives an activation (module or name)."""
    if activation is None:
        return 1.0
    if isinstance(activation, str):
        activation = make_activation(activation)
    if isinstance(activation, nn.LeakyReLU):
        return nn.init.calculate_gain("leaky_relu", activation.negative_slope)
    if isinstance(activation, _RELU_LIKE):
        return nn.init.calculate_gain("relu")
    if isinstance(activation, nn.Tanh):
        return nn.init.calculate_gain("tanh")
    if isinstance(activation, nn.Sigmoid):
        return nn.init.calculate_gain("sigmoid")
    if isinstance(activation, nn.SELU):
        return nn.init.calculate_gain("selu")
    return 1.0


def init_bound(init: str, fan_in: int, fan_out: int, gain: float) -> float:
    """Half-width of the uniform distribution a weight of this layer is drawn from.

    kaiming ``gain * sqrt(3 / fan_in)``, lecun ``sqrt(3 / fan_in)``, default ``sqrt(1 / fan_in)``,
    xavier ``gain * sqrt(6 / (fan_in + fan_out))``, as in the reference code.
    """
    validate_init(init)
    if init == "kaiming":
        return gain * math.sqrt(3.0 / fan_in)
    if init == "lecun":
        return math.sqrt(3.0 / fan_in)
    if init == "xavier":
        return gain * math.sqrt(6.0 / (fan_in + fan_out))
    return math.sqrt(1.0 / fan_in)


def fan_in_out(layer: nn.Linear | nn.Conv2d) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or Conv2d layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    receptive = int(math.prod(layer.kernel_size))
    return layer.in_channels * receptive // layer.groups, layer.out_channels * receptive


@torch.no_grad()
def init_layer_(
    layer: nn.Linear | nn.Conv2d,
    init: str,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> None:
    """Initialize weights uniformly within :func:`init_bound` and set the bias to zero."""
    fan_in, fan_out = fan_in_out(layer)
    bound = init_bound(init, fan_in, fan_out, gain)
    layer.weight.uniform_(-bound, bound, generator=generator)
    if layer.bias is not None:
        layer.bias.zero_()


def mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    out_dim: int,
    *,
    activation: str = "relu",
    init: str = "kaiming",
    output_gain: float = 1.0,
    layer_norm: bool = False,
) -> nn.Sequential:
    """An MLP ``Linear -> [LayerNorm] -> activation -> ... -> Linear`` with the paper's inits.

    Hidden layers use the activation's gain, the output layer ``output_gain`` (the linear gain 1 by
    default); biases start at zero. With ``init="lecun"`` every layer, the output layer included,
    is ``U(-sqrt(3 / fan_in), sqrt(3 / fan_in))`` as in the reference PPO.
    """
    validate_init(init)
    if in_dim <= 0 or out_dim <= 0 or any(h <= 0 for h in hidden_sizes):
        raise ValueError(
            f"layer sizes must be positive, got in={in_dim}, hidden={list(hidden_sizes)}, "
            f"out={out_dim}"
        )
    layers: list[nn.Module] = []
    previous = in_dim
    for width in hidden_sizes:
        linear = nn.Linear(previous, width)
        act = make_activation(activation)
        init_layer_(linear, init, activation_gain(act))
        layers.append(linear)
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(act)
        previous = width
    head = nn.Linear(previous, out_dim)
    init_layer_(head, init, output_gain)
    layers.append(head)
    return nn.Sequential(*layers)


def conv_net(num_classes: int = 2, in_channels: int = 3) -> nn.Sequential:
    """The continual-ImageNet network of Dohare et al. (2024), for 32x32 images.

    ``conv 5x5 32 -> pool -> conv 3x3 64 -> pool -> conv 3x3 128 -> pool -> fc 128 -> fc 128 ->
    fc num_classes``, ReLU after every hidden layer, 2x2 max pooling after each convolution, and
    PyTorch's default initialization, as in the reference. The modules are registered in the
    order of the forward pass, so :class:`~cbp_rl.ContinualBackprop` finds its five hidden
    layers; the output layer is the last module.
    """
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(128 * 2 * 2, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )
