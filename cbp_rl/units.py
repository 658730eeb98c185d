"""Hidden layers of a network, and recording their activations.

A hidden layer is ``incoming (Linear | Conv1d/2d/3d) -> [norm] -> activation -> [Dropout, pooling,
Flatten] -> outgoing (Linear | Conv)``. Its units are the incoming layer's output features (or
channels). CBP, ReDo and the plasticity measures all work on this structure;
:mod:`cbp_rl.discovery` finds it in a network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cbp_rl.nets import CReLU, activation_gain

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHT_LAYERS = (nn.Linear, *CONV_LAYERS)
NORM_LAYERS = (
    nn.LayerNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.RMSNorm,
)
SHARED_STATISTICS_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
"""Norms whose statistics span several units: a new unit shifts its neighbours' outputs."""
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
RECURRENT_LAYERS = (nn.RNNBase, nn.RNNCellBase)
ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    CReLU,
)
NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, CReLU)
WIDENING_ACTIVATIONS = (CReLU,)
"""Activations with several outputs per unit along the last dimension (unit ``j`` owning
consecutive outputs, as after a Flatten)."""
# Modules that may sit between an activation and the next weight layer without changing units
# (each keeps non-negative activations non-negative).
PASS_THROUGH = (
    nn.Flatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)

WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
NormLayer = (
    nn.LayerNorm | nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.GroupNorm | nn.RMSNorm
)


class LeftOut(NamedTuple):
    """A weight layer whose output features are not CBP units, and why."""

    name: str
    reason: str


@dataclass(frozen=True, eq=False)
class HiddenLayer:
    """One layer of hidden units: the layer that makes them and the layer that reads them."""

    incoming: WeightLayer
    activation: nn.Module | None
    outgoing: WeightLayer
    norm: NormLayer | None = None
    name: str = ""
    nonnegative: bool = False
    """Set by discovery when the activation's output is never negative and only pass-through
    modules follow it, so the recorded activations satisfy ``|h| = h``."""

    def __post_init__(self) -> None:
        where = f"hidden layer {self.name or '?'}"
        for role, layer in (("incoming", self.incoming), ("outgoing", self.outgoing)):
            check_weight_layer(layer, f"{where}: the {role} layer")
        if isinstance(self.outgoing, CONV_LAYERS) and not same_conv_kind(
            self.incoming, self.outgoing
        ):
            raise TypeError(
                f"{where}: a {type(self.incoming).__name__} cannot feed a "
                f"{type(self.outgoing).__name__} as a hidden layer (the units would not be its "
                "input channels)"
            )
        read = _inputs_of(self.outgoing)
        if read % self.num_units:
            raise ValueError(
                f"{where}: the outgoing layer reads {read} inputs, "
                f"which is not a multiple of the {self.num_units} units of the incoming layer"
            )
        if self.norm is not None:
            _check_norm(self.norm, self.num_units)

    @property
    def num_units(self) -> int:
        """Output features of a Linear, output channels of a conv."""
        if isinstance(self.incoming, nn.Linear):
            return self.incoming.out_features
        return self.incoming.out_channels

    @property
    def is_conv(self) -> bool:
        return isinstance(self.incoming, CONV_LAYERS)

    @property
    def outputs_per_unit(self) -> int:
        """Input columns of the outgoing layer each unit owns (H*W across a Flatten, else 1)."""
        if isinstance(self.outgoing, nn.Linear):
            return self.outgoing.in_features // self.num_units
        return 1

    @property
    def gain(self) -> float:
        """The activation's initialization gain."""
        return activation_gain(self.activation)

    def outgoing_weight_view(self) -> tuple[Tensor, int]:
        """The outgoing weight with one dimension per unit, and the index of that dimension.

        Linear ``[out, units]`` (dim 1), conv ``[out, units, *kernel]`` (dim 1), Linear after a
        Flatten ``[out, units, H*W]`` (dim 1): a channel owns ``H*W`` consecutive columns.
        """
        weight = self.outgoing.weight
        if isinstance(self.outgoing, nn.Linear) and self.outputs_per_unit > 1:
            weight = weight.view(weight.shape[0], self.num_units, self.outputs_per_unit)
        return weight, 1


def same_conv_kind(first: nn.Module, second: nn.Module) -> bool:
    """Whether both are convolutions over the same number of spatial dimensions."""
    if not (isinstance(first, CONV_LAYERS) and isinstance(second, CONV_LAYERS)):
        return False
    return len(first.kernel_size) == len(second.kernel_size)


def check_weight_layer(layer: object, what: str) -> None:
    """Raise a clear error unless ``layer`` is a Linear or an ungrouped conv."""
    if isinstance(layer, RECURRENT_LAYERS):
        raise TypeError(
            f"{what} is a recurrent layer ({type(layer).__name__}): its units mix over time "
            "through gates, so CBP cannot replace one with new incoming and zero outgoing "
            "weights. Apply CBP to the feed-forward layers around it"
        )
    if not isinstance(layer, WEIGHT_LAYERS):
        raise TypeError(f"{what} must be Linear or Conv1d/2d/3d, got {type(layer).__name__}")
    if isinstance(layer, CONV_LAYERS) and layer.groups != 1:
        raise ValueError(
            f"{what} is a grouped convolution (groups={layer.groups}, depthwise when groups "
            "equals the channels): its weight holds no column per input channel to zero. Leave "
            "it out of layers= (discovery leaves such layers out by itself)"
        )


def _inputs_of(layer: WeightLayer) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _check_norm(norm: nn.Module, num_units: int) -> None:
    if isinstance(norm, nn.LayerNorm | nn.RMSNorm):
        if tuple(norm.normalized_shape) != (num_units,):
            raise ValueError(
                f"{type(norm).__name__} over {tuple(norm.normalized_shape)} does not normalize "
                f"the {num_units} units one entry each"
            )
    elif isinstance(norm, BATCH_NORMS):
        if norm.num_features != num_units:
            raise ValueError(f"BatchNorm of {norm.num_features} features after {num_units} units")
    elif isinstance(norm, nn.GroupNorm):
        if norm.num_channels != num_units:
            raise ValueError(f"GroupNorm of {norm.num_channels} channels after {num_units} units")
    else:
        names = ", ".join(t.__name__ for t in NORM_LAYERS)
        raise TypeError(f"norm must be one of {names}; got {type(norm).__name__}")


def norm_fits(norm: nn.Module, num_units: int) -> bool:
    """Whether ``norm`` normalizes ``num_units`` units one entry each."""
    try:
        _check_norm(norm, num_units)
    except (ValueError, TypeError):
        return False
    return True


LayerSpec = (
    HiddenLayer
    | tuple[WeightLayer, nn.Module | str | None, WeightLayer]
    | tuple[WeightLayer, nn.Module | str | None, WeightLayer, NormLayer | None]
)
"""An explicit hidden layer: ``(incoming, activation, outgoing[, norm])`` or a HiddenLayer."""


def units_first(tensor: Tensor, unit_dim: int, lead_dims: int = 0) -> Tensor:
    """A view of ``tensor`` with its unit dimension moved right after the ``lead_dims`` dims."""
    return tensor.movedim(unit_dim, lead_dims) if unit_dim != lead_dims else tensor


def as_unit_activations(hidden: Tensor, num_units: int, conv: bool) -> Tensor:
    """Activations as ``[M, units, P]``: M examples, P positions per unit (1 for an MLP).

    Accepts ``[B, units]``, ``[..., units]`` (Linear), ``[B, C, *S]`` (conv) and a flattened
    ``[B, C*H*W]`` read by a Linear layer. No copy is made.
    """
    if conv or hidden.shape[-1] != num_units:
        return hidden.reshape(hidden.shape[0], num_units, -1)
    return hidden.reshape(-1, num_units, 1)


class ActivationRecorder:
    """Keeps the input of each hidden layer's outgoing layer from the latest forward pass.

    The input of the outgoing layer is the activation as the network uses it (after the norm,
    the activation function and any pooling or Flatten), which works whether the activation is a
    module or a functional call. Tensors are detached; the recorder holds one per layer.
    """

    def __init__(self, layers: Sequence[HiddenLayer]) -> None:
        self.layers = list(layers)
        self._latest: list[Tensor | None] = [None] * len(self.layers)
        self._units = [(layer.num_units, layer.is_conv) for layer in self.layers]
        self._handles = [
            layer.outgoing.register_forward_pre_hook(self._make_hook(index))
            for index, layer in enumerate(self.layers)
        ]

    def _make_hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            self._latest[index] = inputs[0].detach()

        return hook

    def has_all(self) -> bool:
        """Whether every hidden layer has been seen since the last :meth:`clear`."""
        return all(t is not None for t in self._latest)

    def latest(self) -> list[Tensor]:
        """The recorded activations, ``[M, units]`` (dense) or ``[M, units, P]`` (conv) views."""
        recorded = self._latest
        if any(t is None for t in recorded):
            missing = [
                layer.name or str(i)
                for i, (layer, t) in enumerate(zip(self.layers, recorded, strict=True))
                if t is None
            ]
            raise RuntimeError(
                f"no activations recorded for hidden layer(s) {', '.join(missing)}: call step() "
                "after a forward pass through the network"
            )
        return [
            t
            if t.ndim == 2 and not conv and t.shape[1] == units  # the common case: [M, units]
            else t.reshape(t.shape[0], units, -1)
            if conv
            else t.reshape(-1, units)
            if t.shape[-1] == units
            else t.reshape(-1, units, t.shape[-1] // units)  # a CReLU's pairs
            for t, (units, conv) in zip(recorded, self._units, strict=True)
            if t is not None
        ]

    def clear(self) -> None:
        """Forget the recorded activations."""
        self._latest = [None] * len(self.layers)

    def remove(self) -> None:
        """Remove the hooks from the network."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()


@torch.no_grad()
def probe_activations(
    net: nn.Module,
    inputs: Tensor,
    layers: Sequence[HiddenLayer],
    call: Callable[[Tensor], object] | None = None,
) -> list[Tensor]:
    """Run ``inputs`` through ``net`` (or ``call``); each hidden layer's activations as
    ``[M, units, P]``."""
    recorder = ActivationRecorder(layers)
    try:
        (net if call is None else call)(inputs)
        return [h if h.ndim == 3 else h.unsqueeze(-1) for h in recorder.latest()]
    finally:
        recorder.remove()
