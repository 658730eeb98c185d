"""One traced forward pass: which operation made each tensor, and which operations read it.

:func:`trace` runs a network once on example inputs and records a small data-flow graph. Leaf
modules (and a few modules whose insides are not units, such as ``nn.MultiheadAttention``) are
single operations, seen through forward hooks; every torch function called outside them
(``F.gelu``, ``x + y``, ``x.view(...)``, in-place ops too) is an operation of its own, seen
through a ``TorchFunctionMode``. Tensors are told apart by object, with a new version after each
in-place op, so ``out += identity`` and ``nn.ReLU(inplace=True)`` are followed correctly.

The network is left as it was: buffers (BatchNorm statistics) are restored and the random
number generators are forked, so tracing does not change what training does afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# Modules traced as one operation although they have children: their insides are not units.
ATOMIC_MODULES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.RNNBase)

# Functions that read a tensor's metadata, not its values.
_METADATA = {
    "size",
    "dim",
    "ndimension",
    "numel",
    "nelement",
    "stride",
    "__len__",
    "is_contiguous",
    "is_floating_point",
    "is_complex",
    "element_size",
    "data_ptr",
    "get_device",
    "storage_offset",
    "untyped_storage",
    "has_names",
    "requires_grad_",
    "retain_grad",
    "register_hook",
}


@dataclass(eq=False)
class Op:
    """One operation of the traced forward pass."""

    index: int
    module: nn.Module | None
    """The module called (a hooked module), or None for a torch function."""
    function: Callable[..., Any] | None
    """The torch function called, or None for a module."""
    name: str
    """The module's qualified name in the network, or the function's name."""
    inputs: list[int]
    """Values read (positional arguments first, in order), by index into ``Trace.values``."""
    outputs: list[int] = field(default_factory=list)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"`{self.name}`" if self.module is not None else f"`{self.name}()`"


@dataclass(eq=False)
class Value:
    """One tensor (one version of it) made by an operation of the trace."""

    index: int
    producer: int
    shape: tuple[int, ...]
    readers: list[int] = field(default_factory=list)
    """Operations reading it, in execution order (an operation reading it twice counts twice)."""
    is_output: bool = False
    """Returned by the network."""


@dataclass
class Trace:
    """The data-flow graph of one forward pass."""

    ops: list[Op]
    values: list[Value]
    calls: dict[int, int]
    """How often each module (by ``id``) was called, nested calls included."""

    def module_ops(self, module: nn.Module) -> list[Op]:
        return [op for op in self.ops if op.module is module]


def function_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", None) or getattr(func, "__qualname__", None) or repr(func)
    return str(name)


def _tensors(tree: Any) -> Iterator[Tensor]:
    """The tensors in nested tuples, lists, dicts and named tuples (other objects are skipped)."""
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, tuple | list):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


class _Recorder(TorchFunctionMode):
    """Builds the graph while the forward pass runs."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.ops: list[Op] = []
        self.values: list[Value] = []
        self.calls: dict[int, int] = {}
        self._current: dict[int, int] = {}
        self._alive: list[Tensor] = []  # keeps ids unique while tracing
        self._stack: list[Op | None] = []

    # values ------------------------------------------------------------------------------------
    def _read(self, tensors: Iterator[Tensor]) -> list[int]:
        found = (self._current.get(id(t)) for t in tensors)
        return [index for index in found if index is not None]

    def _write(self, op: Op, produced: Any) -> None:
        for tensor in _tensors(produced):
            value = Value(len(self.values), op.index, tuple(tensor.shape))
            self.values.append(value)
            op.outputs.append(value.index)
            self._current[id(tensor)] = value.index
            self._alive.append(tensor)

    def _begin(self, op: Op) -> None:
        self.ops.append(op)
        for index in op.inputs:
            self.values[index].readers.append(op.index)

    # functions ---------------------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._stack:  # inside a hooked module: the module is the operation
            return func(*args, **kwargs)
        name = function_name(func)
        inputs = self._read(_tensors((args, kwargs)))
        result = func(*args, **kwargs)
        produced = list(_tensors(result))
        if not inputs or (not produced and (name in _METADATA or name.endswith("__get__"))):
            if produced and not inputs:
                self._forget(produced)
            return result
        op = Op(len(self.ops), None, func, name, inputs, args=args, kwargs=kwargs)
        self._begin(op)
        if name == "__setitem__" and args and isinstance(args[0], Tensor):
            produced = [args[0]]  # writes into its first argument: a new version of it
        self._write(op, produced)
        return result

    def _forget(self, tensors: list[Tensor]) -> None:
        for tensor in tensors:
            self._current.pop(id(tensor), None)

    # modules -----------------------------------------------------------------------------------
    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls[id(module)] = self.calls.get(id(module), 0) + 1
        if self._stack:
            self._stack.append(None)
            return
        inputs = self._read(_tensors((args, kwargs)))
        name = self.names.get(id(module), type(module).__name__)
        op = Op(len(self.ops), module, None, name, inputs, args=args, kwargs=kwargs)
        self._begin(op)
        self._stack.append(op)

    def after(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        op = self._stack.pop()
        if op is not None:
            self._write(op, output)

    def mark_outputs(self, result: Any) -> None:
        for tensor in _tensors(result):
            index = self._current.get(id(tensor))
            if index is not None:
                self.values[index].is_output = True


def traced_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules traced as single operations: leaves, and :data:`ATOMIC_MODULES`."""
    chosen: list[tuple[str, nn.Module]] = []
    inside: set[str] = set()
    for name, module in net.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, ATOMIC_MODULES):
            inside.add(name)
            chosen.append((name, module))
        elif not any(True for _ in module.children()):
            chosen.append((name, module))
    return chosen


def trace(
    net: nn.Module, example_inputs: tuple[Any, ...], call: Callable[..., Any] | None = None
) -> Trace:
    """Run ``call(*example_inputs)`` (default ``net(*example_inputs)``) once and record its graph.

    Buffers and random generators are restored afterwards. Raises ``ValueError`` naming the
    exception when the forward pass fails.
    """
    leaves = traced_modules(net)
    recorder = _Recorder({id(module): name for name, module in leaves})
    handles = []
    for _, module in leaves:
        # first among the pre-hooks: what other hooks compute happens inside the module's op
        handles.append(
            module.register_forward_pre_hook(recorder.before, with_kwargs=True, prepend=True)
        )
        handles.append(module.register_forward_hook(recorder.after, with_kwargs=True))
    saved = {name: buffer.clone() for name, buffer in net.named_buffers()}
    devices = sorted({b.device.index or 0 for b in net.parameters() if b.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), recorder:
            result = (net if call is None else call)(*example_inputs)
        recorder.mark_outputs(result)
    except Exception as error:
        raise ValueError(
            f"the forward pass on example_inputs failed ({type(error).__name__}: {error}); pass "
            "example_inputs as the positional arguments the network's forward takes, e.g. "
            "example_inputs=(torch.zeros(1, obs_dim),)"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, buffer in net.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])
    return Trace(recorder.ops, recorder.values, recorder.calls)


def shape_numel(shape: tuple[int, ...], start: int = 0) -> int:
    return math.prod(shape[start:])


__all__ = ["ATOMIC_MODULES", "Op", "Trace", "Value", "trace", "traced_modules"]
