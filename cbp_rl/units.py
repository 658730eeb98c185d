"""Finding the hidden units of a network, and recording their activations.

A hidden layer is ``incoming (Linear | Conv2d) -> [LayerNorm | BatchNorm] -> activation ->
[Dropout, pooling, Flatten] -> outgoing (Linear | Conv2d)``. Its units are the incoming layer's
output features (or channels). CBP, ReDo and the plasticity measures all work on this structure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cbp_rl.nets import activation_gain, make_activation

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
NORM_LAYERS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)
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
)
NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus)
# Modules that may sit between an activation and the next weight layer without changing units
# (each keeps non-negative activations non-negative).
PASS_THROUGH = (
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)

WeightLayer = nn.Linear | nn.Conv2d
NormLayer = nn.LayerNorm | nn.BatchNorm1d | nn.BatchNorm2d


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
        if not isinstance(self.incoming, WEIGHT_LAYERS):
            raise TypeError(f"incoming layer must be Linear or Conv2d, got {type(self.incoming)}")
        if not isinstance(self.outgoing, WEIGHT_LAYERS):
            raise TypeError(f"outgoing layer must be Linear or Conv2d, got {type(self.outgoing)}")
        if isinstance(self.outgoing, nn.Conv2d) and not isinstance(self.incoming, nn.Conv2d):
            raise TypeError("a Linear layer cannot feed a Conv2d layer as a hidden layer")
        read = _inputs_of(self.outgoing)
        if read % self.num_units:
            raise ValueError(
                f"hidden layer {self.name or '?'}: the outgoing layer reads {read} inputs, "
                f"which is not a multiple of the {self.num_units} units of the incoming layer"
            )
        if self.norm is not None:
            _check_norm(self.norm, self.num_units)

    @property
    def num_units(self) -> int:
        """Output features of a Linear, output channels of a Conv2d."""
        if isinstance(self.incoming, nn.Linear):
            return self.incoming.out_features
        return self.incoming.out_channels

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

        Linear ``[out, units]`` (dim 1), Conv2d ``[out, units, kh, kw]`` (dim 1), Linear after a
        Flatten ``[out, units, H*W]`` (dim 1): a channel owns ``H*W`` consecutive columns.
        """
        weight = self.outgoing.weight
        if isinstance(self.outgoing, nn.Linear) and self.outputs_per_unit > 1:
            weight = weight.view(weight.shape[0], self.num_units, self.outputs_per_unit)
        return weight, 1


def _inputs_of(layer: WeightLayer) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _check_norm(norm: nn.Module, num_units: int) -> None:
    if isinstance(norm, nn.LayerNorm):
        if tuple(norm.normalized_shape) != (num_units,):
            raise ValueError(
                f"LayerNorm over {tuple(norm.normalized_shape)} does not normalize the "
                f"{num_units} units one entry each"
            )
    elif isinstance(norm, nn.BatchNorm1d | nn.BatchNorm2d):
        if norm.num_features != num_units:
            raise ValueError(f"BatchNorm of {norm.num_features} features after {num_units} units")
    else:
        raise TypeError(f"norm must be LayerNorm or BatchNorm, got {type(norm)}")


def _leaves(module: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, child in module.named_modules():
        if not any(True for _ in child.children()):
            yield name, child


def _fits(incoming: WeightLayer, outgoing: WeightLayer) -> bool:
    units = incoming.out_features if isinstance(incoming, nn.Linear) else incoming.out_channels
    if isinstance(outgoing, nn.Conv2d):
        return isinstance(incoming, nn.Conv2d) and outgoing.in_channels == units
    if isinstance(incoming, nn.Linear):
        return outgoing.in_features == units
    return outgoing.in_features % units == 0


def _norm_fits(norm: nn.Module, incoming: WeightLayer) -> bool:
    units = incoming.out_features if isinstance(incoming, nn.Linear) else incoming.out_channels
    try:
        _check_norm(norm, units)
    except (ValueError, TypeError):
        return False
    return True


def discover_hidden_layers(net: nn.Module) -> list[HiddenLayer]:
    """The hidden layers of ``net``, found in the order its modules are registered.

    This matches the forward pass for ``nn.Sequential`` and for modules that register their
    layers in the order they use them. A weight layer, an optional norm, an activation module,
    pass-through modules (Dropout, pooling, Flatten) and a weight layer whose input size fits
    make one hidden layer. Anything else breaks the chain.
    """
    found: list[HiddenLayer] = []
    incoming: tuple[str, WeightLayer] | None = None
    norm: NormLayer | None = None
    activation: nn.Module | None = None
    for name, leaf in _leaves(net):
        if isinstance(leaf, WEIGHT_LAYERS):
            if incoming is not None and activation is not None and _fits(incoming[1], leaf):
                nonnegative = isinstance(activation, NONNEGATIVE_ACTIVATIONS)
                found.append(
                    HiddenLayer(incoming[1], activation, leaf, norm, incoming[0], nonnegative)
                )
            incoming, norm, activation = (name, leaf), None, None
        elif isinstance(leaf, NORM_LAYERS) and incoming is not None and activation is None:
            norm = leaf if _norm_fits(leaf, incoming[1]) else None
            if norm is None:
                incoming = None
        elif isinstance(leaf, ACTIVATIONS) and incoming is not None and activation is None:
            activation = leaf
        elif isinstance(leaf, PASS_THROUGH) and activation is not None:
            continue
        else:
            incoming, norm, activation = None, None, None
    return found


LayerSpec = (
    HiddenLayer
    | tuple[WeightLayer, nn.Module | str | None, WeightLayer]
    | tuple[WeightLayer, nn.Module | str | None, WeightLayer, NormLayer | None]
)


def resolve_hidden_layers(net: nn.Module, layers: Sequence[LayerSpec] | None) -> list[HiddenLayer]:
    """Explicit ``layers`` (tuples ``(incoming, activation, outgoing[, norm])``) or discovery.

    Raises ``ValueError`` when no hidden layer can be found.
    """
    if layers is None:
        found = discover_hidden_layers(net)
        if not found:
            raise ValueError(
                f"found no hidden layer in {type(net).__name__}: expected Linear/Conv2d -> "
                "[norm] -> activation module -> Linear/Conv2d in registration order. Pass the "
                "structure explicitly: layers=[(incoming, activation, outgoing[, norm]), ...]"
            )
        return found
    resolved = []
    names = {module: name for name, module in net.named_modules()}
    for spec in layers:
        if isinstance(spec, HiddenLayer):
            resolved.append(spec)
            continue
        if len(spec) not in (3, 4):
            raise ValueError(
                f"a layer spec is (incoming, activation, outgoing[, norm]); got {len(spec)} items"
            )
        incoming, activation, outgoing = spec[0], spec[1], spec[2]
        norm = spec[3] if len(spec) == 4 else None
        if isinstance(activation, str):
            activation = make_activation(activation)
        resolved.append(HiddenLayer(incoming, activation, outgoing, norm, names.get(incoming, "")))
    if not resolved:
        raise ValueError("layers= is empty: give at least one (incoming, activation, outgoing)")
    return resolved


def units_first(tensor: Tensor, unit_dim: int, lead_dims: int = 0) -> Tensor:
    """A view of ``tensor`` with its unit dimension moved right after the ``lead_dims`` dims."""
    return tensor.movedim(unit_dim, lead_dims) if unit_dim != lead_dims else tensor


def as_unit_activations(hidden: Tensor, num_units: int, conv: bool) -> Tensor:
    """Activations as ``[M, units, P]``: M examples, P positions per unit (1 for an MLP).

    Accepts ``[B, units]``, ``[..., units]`` (Linear), ``[B, C, H, W]`` (Conv2d) and a flattened
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
        self._units = [
            (layer.num_units, isinstance(layer.incoming, nn.Conv2d)) for layer in self.layers
        ]
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
            if t.ndim == 2 and not conv  # the common case: already [M, units]
            else t.reshape(t.shape[0], units, -1)
            if conv
            else t.reshape(-1, units)
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
    net: nn.Module, inputs: Tensor, layers: Sequence[HiddenLayer]
) -> list[Tensor]:
    """Run ``inputs`` through ``net``; each hidden layer's activations as ``[M, units, P]``."""
    recorder = ActivationRecorder(layers)
    try:
        net(inputs)
        return [h if h.ndim == 3 else h.unsqueeze(-1) for h in recorder.latest()]
    finally:
        recorder.remove()
