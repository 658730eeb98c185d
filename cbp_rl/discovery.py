"""Finding the hidden layers of a network: one discovery for CBP, ReDo and the measures.

:func:`find_hidden_layers` finds them

- from the data flow, given ``example_inputs``: one traced forward pass (:mod:`cbp_rl.dataflow`)
  shows which weight layer's output goes, through an optional norm, an activation (a module or a
  function such as ``F.gelu``) and shape-keeping pass-through ops (dropout, pooling, flatten,
  view/reshape), into exactly one weight layer. A value that also reaches anything else (a
  residual sum, a concatenation, a second layer, the network's output) is not a unit of its own;
  such layers are listed in :attr:`Discovery.left_out` with the reason;
- from the module structure, without ``example_inputs``, for plain ``nn.Sequential`` chains only
  (their registration order is their data flow); anything else is refused, naming
  ``example_inputs``;
- as given in ``layers=``, checked against the example forward pass where there is one;
- as the reference's ResNet chain (``residual_stream="reference_chain"``): every conv in
  registration order, downsample paths skipped, read by the next one, as the reference's
  ``res_gnt.py`` does for its class-incremental CIFAR-100 runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import Tensor, nn

from cbp_rl.dataflow import ATOMIC_MODULES, Op, Trace, trace
from cbp_rl.nets import make_activation
from cbp_rl.units import (
    ACTIVATIONS,
    BATCH_NORMS,
    CONV_LAYERS,
    NONNEGATIVE_ACTIVATIONS,
    NORM_LAYERS,
    PASS_THROUGH,
    RECURRENT_LAYERS,
    WEIGHT_LAYERS,
    WIDENING_ACTIVATIONS,
    HiddenLayer,
    LayerSpec,
    LeftOut,
    WeightLayer,
    check_weight_layer,
    norm_fits,
    same_conv_kind,
)

ResidualStream = Literal["leave_out", "reference_chain"]
RESIDUAL_STREAM_OPTIONS: tuple[str, ...] = get_args(ResidualStream)
ExampleInputs = Tensor | tuple[Any, ...]


@dataclass(frozen=True)
class Discovery:
    """The hidden layers found in a network, and the weight layers left out with the reason."""

    hidden: tuple[HiddenLayer, ...]
    left_out: tuple[LeftOut, ...] = ()


# functional activations by name, with the module whose gain they share
_ACTIVATION_FUNCTIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu_": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "leaky_relu_": nn.LeakyReLU,
    "elu": nn.ELU,
    "elu_": nn.ELU,
    "selu": nn.SELU,
    "selu_": nn.SELU,
    "celu": nn.CELU,
    "celu_": nn.CELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "tanh_": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "sigmoid_": nn.Sigmoid,
    "hardtanh": nn.Hardtanh,
    "hardtanh_": nn.Hardtanh,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
}
_PASS_THROUGH_FUNCTIONS = {
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "clone",
    "detach",
    "to",
    "float",
    "mean",
    "amax",
}
_SUMS = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__"}


def find_hidden_layers(
    net: nn.Module,
    *,
    layers: Sequence[LayerSpec] | None = None,
    example_inputs: ExampleInputs | None = None,
    example_call: Callable[..., Any] | None = None,
    residual_stream: str = "leave_out",
) -> Discovery:
    """The hidden layers of ``net`` (see the module docstring for the four ways).

    ``example_call`` is what runs on ``example_inputs`` (default ``net`` itself), for networks
    used through a method, e.g. a CleanRL agent's ``get_action_and_value``. Raises
    ``ValueError`` naming the problem and the fix when no hidden layer is certain.
    """
    if residual_stream not in RESIDUAL_STREAM_OPTIONS:
        raise ValueError(
            f"unknown residual_stream {residual_stream!r}; valid options are "
            f"{', '.join(RESIDUAL_STREAM_OPTIONS)}"
        )
    if example_call is not None and example_inputs is None:
        raise ValueError("example_call needs example_inputs: the arguments to call it with")
    graph = None
    if example_inputs is not None:
        inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
        graph = trace(net, inputs, example_call)
    if layers is not None:
        if residual_stream != "leave_out":
            raise ValueError("give either layers= or residual_stream='reference_chain', not both")
        return Discovery(tuple(_explicit(net, layers, graph)))
    if residual_stream == "reference_chain":
        return _reference_chain(net)
    if graph is None:
        return Discovery(tuple(discover_sequential(net)))
    return _from_trace(net, graph)


# --------------------------------------------------------------------- from the data flow
def _from_trace(net: nn.Module, graph: Trace) -> Discovery:
    names = {id(module): name for name, module in net.named_modules()}
    found: list[HiddenLayer] = []
    left_out: list[LeftOut] = []
    atomic = [(n, m) for n, m in net.named_modules() if isinstance(m, ATOMIC_MODULES)]
    for name, module in net.named_modules():
        if isinstance(module, RECURRENT_LAYERS):
            left_out.append(LeftOut(name, "a recurrent layer: its units mix over time"))
        if not isinstance(module, WEIGHT_LAYERS):
            continue
        owner = next((n for n, _ in atomic if name.startswith(f"{n}.")), None)
        if owner is not None:
            kind = type(net.get_submodule(owner)).__name__
            left_out.append(LeftOut(name, f"inside `{owner}` ({kind}), one operation as a whole"))
            continue
        result = _unit_path(module, graph, names)
        if isinstance(result, HiddenLayer):
            found.append(result)
        else:
            left_out.append(LeftOut(name, result))
    order = {id(op.module): op.index for op in graph.ops if op.module is not None}
    found.sort(key=lambda layer: order[id(layer.incoming)])
    if not found:
        reasons = "; ".join(f"{item.name}: {item.reason}" for item in left_out) or "none"
        raise ValueError(
            f"found no hidden layer in {type(net).__name__}'s forward pass: no weight layer's "
            "output goes through an activation into exactly one weight layer (weight layers "
            f"seen: {reasons}). Pass the structure explicitly: layers=[(incoming, activation, "
            "outgoing[, norm]), ...]"
        )
    return Discovery(tuple(found), tuple(left_out))


def _unit_path(module: WeightLayer, graph: Trace, names: dict[int, str]) -> HiddenLayer | str:
    """The hidden layer ``module`` makes, or why its output features are not units."""
    calls = graph.calls.get(id(module), 0)
    if calls == 0:
        return "not called in the example forward pass"
    if calls > 1:
        return f"called {calls} times in the forward pass (a module used twice)"
    if isinstance(module, CONV_LAYERS) and module.groups != 1:
        return f"a grouped convolution (groups={module.groups})"
    op = graph.module_ops(module)[0]
    if len(op.outputs) != 1:
        return "its output is not one tensor"
    walk = _Walk(module, graph, names)
    return walk.run(op.outputs[0])


class _Walk:
    """Follows one weight layer's output to the layer that reads it."""

    def __init__(self, module: WeightLayer, graph: Trace, names: dict[int, str]) -> None:
        self.module, self.graph, self.names = module, graph, names
        self.units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        self.conv = isinstance(module, CONV_LAYERS)
        self.norm: nn.Module | None = None
        self.activation: nn.Module | None = None
        self.flat = False
        self.width = self.units
        """Features per example along the last dimension (twice the units after a CReLU)."""
        self.passed: list[str] = []

    def _after(self) -> str:
        return f" (after {', '.join(self.passed)})" if self.passed else ""

    def run(self, value: int) -> HiddenLayer | str:
        graph = self.graph
        while True:
            current = graph.values[value]
            if current.is_output:
                return f"its output{self._after()} is returned by the network"
            readers = [graph.ops[i] for i in current.readers]
            if not readers:
                return f"its output{self._after()} is not read"
            if len(readers) > 1:
                listed = ", ".join(op.describe() for op in readers)
                why = (
                    "the residual stream: it is carried past the layer that reads it"
                    if any(op.function is not None and op.name in _SUMS for op in readers)
                    else "not an independent unit"
                )
                count = len(readers)
                return f"its output{self._after()} is read by {count} operations ({listed}): {why}"
            op = readers[0]
            if isinstance(op.module, WEIGHT_LAYERS):
                return self._reader(op, current.shape)
            step = self._step(op, current.shape)
            if step is not None:
                return step
            value = op.outputs[0]

    def _step(self, op: Op, shape: tuple[int, ...]) -> str | None:
        """Pass through ``op`` (a norm, the activation or a pass-through op), or say why not."""
        if len(op.inputs) != 1 or len(op.outputs) != 1:
            return self._blocked(op)
        out = self.graph.values[op.outputs[0]].shape
        module = op.module
        if isinstance(module, NORM_LAYERS):
            return self._take_norm(op, module, shape)
        activation = self._as_activation(op)
        if activation is not None:
            if self.activation is not None:
                return self._blocked(op)
            self.activation = activation
        elif not self._passes(op):
            return self._blocked(op)
        widens = activation is not None and isinstance(activation, WIDENING_ACTIVATIONS)
        if widens and not self.conv and shape[-1] == self.width and out[-1] == 2 * self.width:
            self.width = out[-1]
        elif not self._keeps_units(shape, out):
            return f"{op.describe()} reshapes its output{self._after()} across the units"
        self.passed.append(op.describe())
        return None

    def _blocked(self, op: Op) -> str:
        if op.function is not None and op.name in _SUMS:
            return (
                f"its output{self._after()} joins a residual sum ({op.describe()}): the "
                "residual stream is left out"
            )
        return (
            f"its output{self._after()} goes into {op.describe()}, not through an activation "
            "into one weight layer"
        )

    def _take_norm(self, op: Op, norm: nn.Module, shape: tuple[int, ...]) -> str | None:
        if self.norm is not None or self.activation is not None or self.flat:
            return self._blocked(op)
        if self.graph.calls.get(id(norm), 0) != 1:
            return f"its norm {op.describe()} is used more than once"
        if isinstance(norm, nn.LayerNorm | nn.RMSNorm):  # normalizes the last dimension
            along_units = not self.conv and shape[-1] == self.units
        else:  # BatchNorm, GroupNorm: dimension 1
            along_units = len(shape) >= 2 and shape[1] == self.units
            along_units = along_units and (self.conv or len(shape) == 2)
        if not (along_units and norm_fits(norm, self.units)):
            return f"its norm {op.describe()} does not normalize the units one entry each"
        self.norm = norm
        self.passed.append(op.describe())
        return None

    def _as_activation(self, op: Op) -> nn.Module | None:
        if isinstance(op.module, ACTIVATIONS):
            prelu = isinstance(op.module, nn.PReLU)
            if prelu and op.module.num_parameters not in (1, self.units):
                return None
            return op.module
        if op.function is None or op.name not in _ACTIVATION_FUNCTIONS:
            return None
        kind = _ACTIVATION_FUNCTIONS[op.name]
        if kind is nn.LeakyReLU:
            slope = op.kwargs.get("negative_slope", op.args[1] if len(op.args) > 1 else 0.01)
            return nn.LeakyReLU(float(slope))
        return kind()

    def _passes(self, op: Op) -> bool:
        if op.module is not None:
            return isinstance(op.module, PASS_THROUGH)
        return op.name in _PASS_THROUGH_FUNCTIONS

    def _keeps_units(self, shape: tuple[int, ...], out: tuple[int, ...]) -> bool:
        if not self.conv:
            return shape[-1] == self.width and out[-1] == self.width
        if self.flat:
            return out == shape
        if len(out) >= 2 and out[:2] == shape[:2]:
            return True
        flattened = len(out) == 2 and out[0] == shape[0] and out[1] == _numel(shape[1:])
        self.flat = flattened
        return flattened

    def _reader(self, op: Op, shape: tuple[int, ...]) -> HiddenLayer | str:
        reader = op.module
        assert isinstance(reader, WEIGHT_LAYERS)
        name = op.describe()
        if self.activation is None:
            return f"it feeds {name}{self._after()} with no activation in between"
        calls = self.graph.calls.get(id(reader), 0)
        if calls > 1:
            return f"its reader {name} is called {calls} times (a module used twice)"
        if isinstance(reader, CONV_LAYERS) and reader.groups != 1:
            return f"its reader {name} is a grouped convolution (groups={reader.groups})"
        if len(op.inputs) != 1:
            return f"its reader {name} reads more than this tensor"
        if not self._reads_units(reader, shape):
            return f"its reader {name} does not read the units along its input features"
        nonnegative = isinstance(self.activation, NONNEGATIVE_ACTIVATIONS)
        return HiddenLayer(
            self.module,
            self.activation,
            reader,
            self.norm,  # type: ignore[arg-type]
            self.names.get(id(self.module), ""),
            nonnegative,
        )

    def _reads_units(self, reader: WeightLayer, shape: tuple[int, ...]) -> bool:
        if isinstance(reader, CONV_LAYERS):
            same_kind = same_conv_kind(reader, self.module)
            return self.conv and same_kind and len(shape) >= 2 and shape[1] == reader.in_channels
        if not self.conv:
            return reader.in_features == self.width
        return len(shape) == 2 and reader.in_features == shape[1] and shape[1] % self.units == 0


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for n in shape:
        total *= n
    return total


# ------------------------------------------------------------------ from the module structure
def _uncertain_structure(net: nn.Module) -> str | None:
    """Why registration order may not be ``net``'s data flow, or None for a plain chain."""
    if not isinstance(net, nn.Sequential):
        return (
            f"{type(net).__name__} is not an nn.Sequential, so the order its modules are "
            "registered in need not be the order its forward uses them"
        )
    for name, module in net.named_modules():
        if module.__class__ is not nn.Sequential and any(True for _ in module.children()):
            return f"`{name}` is a {type(module).__name__} with a forward of its own"
    every = [id(m) for _, m in net.named_modules(remove_duplicate=False)]
    if len(every) != len(set(every)):
        return "a module is used twice in the chain"
    return None


def discover_sequential(net: nn.Module) -> list[HiddenLayer]:
    """The hidden layers of a plain ``nn.Sequential`` chain, in registration order.

    A weight layer, an optional norm, an activation module, pass-through modules (Dropout,
    pooling, Flatten) and a weight layer whose input size fits make one hidden layer. Anything
    else breaks the chain. Raises ``ValueError`` (naming ``example_inputs``) for anything that is
    not a plain chain, or has no hidden layer.
    """
    why = _uncertain_structure(net)
    fix = (
        "Pass example_inputs=(x,) (an example input batch) so the hidden layers are found from "
        "one traced forward pass, or give the structure explicitly: layers=[(incoming, "
        "activation, outgoing[, norm]), ...]"
    )
    if why is not None:
        raise ValueError(f"found no hidden layer that is certain in {why}. {fix}")
    found: list[HiddenLayer] = []
    incoming: tuple[str, WeightLayer] | None = None
    norm: nn.Module | None = None
    activation: nn.Module | None = None
    for name, leaf in net.named_modules():
        if any(True for _ in leaf.children()):
            continue
        if isinstance(leaf, WEIGHT_LAYERS):
            widening = 2 if isinstance(activation, WIDENING_ACTIVATIONS) else 1
            if (
                incoming is not None
                and activation is not None
                and _fits(incoming[1], leaf, widening)
            ):
                nonnegative = isinstance(activation, NONNEGATIVE_ACTIVATIONS)
                found.append(
                    HiddenLayer(incoming[1], activation, leaf, norm, incoming[0], nonnegative)  # type: ignore[arg-type]
                )
            grouped = isinstance(leaf, CONV_LAYERS) and leaf.groups != 1
            incoming, norm, activation = (None if grouped else (name, leaf)), None, None
        elif isinstance(leaf, NORM_LAYERS) and incoming is not None and activation is None:
            norm = leaf if norm_fits(leaf, _units_of(incoming[1])) else None
            if norm is None:
                incoming = None
        elif isinstance(leaf, ACTIVATIONS) and incoming is not None and activation is None:
            activation = leaf
        elif isinstance(leaf, PASS_THROUGH) and activation is not None:
            continue
        else:
            incoming, norm, activation = None, None, None
    if not found:
        raise ValueError(
            f"found no hidden layer in {type(net).__name__}: expected Linear/Conv -> [norm] -> "
            f"activation module -> Linear/Conv in the chain. {fix}"
        )
    return found


def _units_of(layer: WeightLayer) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _fits(incoming: WeightLayer, outgoing: WeightLayer, widening: int = 1) -> bool:
    units = _units_of(incoming)
    if isinstance(outgoing, CONV_LAYERS):
        same = same_conv_kind(incoming, outgoing) and outgoing.groups == 1
        return same and widening == 1 and outgoing.in_channels == units
    if isinstance(incoming, nn.Linear):
        return outgoing.in_features == units * widening
    if widening != 1:  # a conv's CReLU concatenates channels: not one unit per channel
        return False
    return outgoing.in_features % units == 0


# ------------------------------------------------------------------------------ explicit
def _explicit(
    net: nn.Module, layers: Sequence[LayerSpec], graph: Trace | None
) -> list[HiddenLayer]:
    if not layers:
        raise ValueError("layers= is empty: give at least one (incoming, activation, outgoing)")
    names = {id(module): name for name, module in net.named_modules()}
    resolved = []
    for index, spec in enumerate(layers):
        layer = spec if isinstance(spec, HiddenLayer) else _from_tuple(spec, names, index)
        for role in ("incoming", "outgoing", "norm"):
            module = getattr(layer, role)
            if module is not None and id(module) not in names:
                raise ValueError(
                    f"the given layers are not all layers of the network {type(net).__name__}: "
                    f"the {role} {type(module).__name__} of layers[{index}] is not one of its "
                    "modules; pass the network's own modules (e.g. net.fc1), not copies"
                )
        if graph is not None:
            _check_connected(layer, graph, names, index)
        resolved.append(layer)
    return resolved


def _from_tuple(spec: Any, names: dict[int, str], index: int) -> HiddenLayer:
    if not isinstance(spec, tuple | list) or len(spec) not in (3, 4):
        raise ValueError(
            f"layers[{index}]: a layer spec is (incoming, activation, outgoing[, norm]); got "
            f"{spec!r}"
        )
    incoming, activation, outgoing = spec[0], spec[1], spec[2]
    norm = spec[3] if len(spec) == 4 else None
    check_weight_layer(incoming, f"layers[{index}]: the incoming layer")
    check_weight_layer(outgoing, f"layers[{index}]: the outgoing layer")
    if isinstance(activation, str):
        activation = make_activation(activation)
    return HiddenLayer(incoming, activation, outgoing, norm, names.get(id(incoming), ""))


def _check_connected(layer: HiddenLayer, graph: Trace, names: dict[int, str], index: int) -> None:
    """Raise unless ``layer.outgoing`` reads ``layer.incoming``'s output in ``graph``."""
    where = f"layers[{index}]"
    incoming = names.get(id(layer.incoming), "incoming")
    outgoing = names.get(id(layer.outgoing), "outgoing")
    for role, name, module in (
        ("incoming", incoming, layer.incoming),
        ("outgoing", outgoing, layer.outgoing),
    ):
        calls = graph.calls.get(id(module), 0)
        if calls != 1:
            raise ValueError(
                f"{where}: the {role} layer `{name}` is called {calls} times in the example "
                "forward pass; a hidden layer's layers must each be called once"
            )
    op = graph.module_ops(layer.outgoing)[0]
    source = "the network's input"
    value = op.inputs[0] if op.inputs else None
    while value is not None:
        producer = graph.ops[graph.values[value].producer]
        if producer.module is layer.incoming:
            return
        source = producer.describe()
        single = len(producer.inputs) == 1 and not isinstance(producer.module, WEIGHT_LAYERS)
        value = producer.inputs[0] if single else None
    raise ValueError(
        f"{where}: `{outgoing}` does not read the output of `{incoming}` in the example forward "
        f"pass (its input comes from {source}); give as incoming the layer whose output features "
        "the outgoing layer reads"
    )


# ----------------------------------------------------------------------- reference chain
def _reference_chain(net: nn.Module) -> Discovery:
    """The reference's ResNet chain (``res_gnt.py``): each conv, in registration order with
    ``downsample`` paths skipped, read by the next weight layer, normalized by the next norm."""
    weights: list[tuple[str, WeightLayer]] = []
    norms: list[nn.Module] = []
    skipped: list[LeftOut] = []
    relu: nn.Module | None = None
    for name, module in net.named_modules():
        if "downsample" in name.split("."):
            if isinstance(module, WEIGHT_LAYERS):
                skipped.append(LeftOut(name, "a downsample path: the reference chain skips it"))
            continue
        if isinstance(module, WEIGHT_LAYERS):
            weights.append((name, module))
        elif isinstance(module, BATCH_NORMS):
            norms.append(module)
        elif isinstance(module, nn.ReLU) and relu is None:
            relu = module
    if len(weights) < 2 or len(norms) not in (0, len(weights) - 1):
        raise ValueError(
            "residual_stream='reference_chain' expects a ResNet in torchvision's layout (e.g. "
            f"cbp_rl.nets.resnet18): weight layers, one BatchNorm after each but the last; "
            f"{type(net).__name__} has {len(weights)} weight layers and {len(norms)} BatchNorms "
            "outside downsample paths"
        )
    activation = relu if relu is not None else nn.ReLU()
    hidden = tuple(
        HiddenLayer(
            module,
            activation,
            weights[i + 1][1],
            norms[i] if norms else None,  # type: ignore[arg-type]
            name,
            nonnegative=True,
        )
        for i, (name, module) in enumerate(weights[:-1])
    )
    last = LeftOut(weights[-1][0], "the output layer")
    return Discovery(hidden, (*skipped, last))


__all__ = [
    "RESIDUAL_STREAM_OPTIONS",
    "Discovery",
    "ExampleInputs",
    "ResidualStream",
    "discover_sequential",
    "find_hidden_layers",
]
