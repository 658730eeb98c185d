"""Activation functions with hand-written derivatives, for the engine's manual backward pass.

Each :class:`Activation` computes ``a = f(z)`` and, from ``z`` and ``a``, ``grad * f'(z)``.
The names and parameters are those of :func:`cbp_rl.nets.make_activation` (``leaky_relu``
slope 0.01, ``elu`` alpha 1, exact ``gelu``), so an engine network exports to the same
``nn.Module``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717
_LEAKY_SLOPE = 0.01
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation and its derivative."""

    name: str
    forward: Callable[[Tensor], Tensor]
    """``f(z)``; may overwrite ``z`` when ``needs_input`` is False."""
    backward: Callable[[Tensor, Tensor | None, Tensor], Tensor]
    """``(grad, z, a) -> grad * f'(z)``; may overwrite ``grad``."""
    needs_input: bool
    """Whether the derivative needs ``z`` (else ``z`` may be overwritten by ``forward``)."""


def _input(z: Tensor | None) -> Tensor:
    assert z is not None, "this activation's derivative needs its input"
    return z


def _relu_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    return grad.mul_(a > 0)


def _leaky_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    return grad.mul_(torch.where(_input(z) > 0, 1.0, _LEAKY_SLOPE))


def _tanh_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    return grad.mul_(1.0 - a * a)


def _sigmoid_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    return grad.mul_(a * (1.0 - a))


def _elu_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    return grad.mul_(torch.where(_input(z) > 0, 1.0, a + 1.0))


def _selu_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    return grad.mul_(torch.where(_input(z) > 0, _SELU_SCALE, a + _SELU_SCALE * _SELU_ALPHA))


def _gelu_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    z = _input(z)
    cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return grad.mul_(cdf + z * pdf)


def _silu_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    z = _input(z)
    s = torch.sigmoid(z)
    return grad.mul_(s * (1.0 + z * (1.0 - s)))


def _identity_backward(grad: Tensor, z: Tensor | None, a: Tensor) -> Tensor:
    return grad


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", torch.relu_, _relu_backward, needs_input=False),
    "leaky_relu": Activation(
        "leaky_relu",
        lambda z: torch.nn.functional.leaky_relu(z, _LEAKY_SLOPE),
        _leaky_backward,
        needs_input=True,
    ),
    "tanh": Activation("tanh", torch.tanh_, _tanh_backward, needs_input=False),
    "sigmoid": Activation("sigmoid", torch.sigmoid_, _sigmoid_backward, needs_input=False),
    "elu": Activation("elu", torch.nn.functional.elu, _elu_backward, needs_input=True),
    "selu": Activation("selu", torch.selu, _selu_backward, needs_input=True),
    "gelu": Activation("gelu", torch.nn.functional.gelu, _gelu_backward, needs_input=True),
    "silu": Activation("silu", torch.nn.functional.silu, _silu_backward, needs_input=True),
    "swish": Activation("swish", torch.nn.functional.silu, _silu_backward, needs_input=True),
    "identity": Activation("identity", lambda z: z, _identity_backward, needs_input=False),
}
ACTIVATION_NAMES: tuple[str, ...] = tuple(ACTIVATIONS)


def get_activation(name: str) -> Activation:
    """The activation called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; valid activations are {', '.join(ACTIVATION_NAMES)}"
        ) from None


__all__ = ["ACTIVATIONS", "ACTIVATION_NAMES", "Activation", "get_activation"]
