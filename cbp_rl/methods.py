"""The other plasticity-preserving methods of the thesis, reusable like :class:`ContinualBackprop`.

* :class:`ReDo` (Sokar et al. 2023): every ``period`` steps, reinitialize the units whose
  normalized activation ``mean|h_j| / mean_k mean|h_k|`` is at most ``threshold``.
* :class:`ShrinkAndPerturb` (Ash & Adams 2020): after each step ``w <- shrink * w + noise``.
* L2 is coupled weight decay and the "non-stationary Adam" is Adam with betas (0.99, 0.99):
  both come from :func:`cbp_rl.optim.make_optimizer`.
* :class:`L2Init` (Kumar et al. 2023): the loss ``coef * ||theta - theta_0||^2``.
* :func:`use_crelu` (Abbas et al. 2023): every hidden activation becomes
  ``[relu(x), relu(-x)]``, the layer reading it twice as wide.
* :func:`add_layer_norm` (Lyle et al. 2024): a LayerNorm before each hidden activation.
* :class:`PlasticityInjection` (Nikishin et al. 2023): a new head minus its frozen copy, added
  to the frozen old head (a forward hook: the network's parameters keep their names).
* :class:`ResetLastLayers` (Nikishin et al. 2022): reinitialize the last K weight layers every N
  steps.
* :class:`ReGraMa` (Liu et al. 2025): ReDo's test on the units' normalized gradient magnitudes.
* :class:`ParsevalRegularizer` (Chung et al. 2024): the loss ``coef * sum ||W W^T - s I||_F^2``.
* :class:`ProximalFeatures` (Moalla et al. 2024, PFO): the loss
  ``coef * mean (phi(s) - phi_old(s))^2`` on the last hidden pre-activations.
* UPGD (Elsayed & Mahmood 2024) is an optimizer: :class:`cbp_rl.optim.UPGD`.

Each is an ``nn.Module`` whose ``state_dict()`` holds its counters and random state; the
hidden layers they work on come from :func:`cbp_rl.discovery.find_hidden_layers`, the one
discovery CBP uses (``example_inputs``, ``example_call``, ``layers`` as there).
:data:`METHODS` lists every method with a one-line description.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cbp_rl.cbp import (
    check_optimizer_reset,
    layout_of,
    reinit_units,
    replacement_bound,
    reset_units_optimizer_state,
)
from cbp_rl.discovery import ExampleInputs, find_hidden_layers
from cbp_rl.metrics import dormant_mask
from cbp_rl.nets import CReLU, activation_gain, init_layer_, validate_init
from cbp_rl.units import WEIGHT_LAYERS, ActivationRecorder, HiddenLayer, LayerSpec, WeightLayer


def _seed_or_draw(seed: int | None) -> int:
    return int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)


class _OwnGenerator(nn.Module):
    """A module drawing from a generator of its own, ``_generator``, kept in its state dict."""

    _generator: torch.Generator

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])


class _EveryNSteps(_OwnGenerator):
    """A method that acts (:meth:`_act`) on every ``every``-th call of :meth:`step`, drawing
    from its own generator seeded by ``seed`` (drawn from the global generator if ``None``)."""

    calls: Tensor

    def __init__(self, *, every: int, seed: int | None) -> None:
        super().__init__()
        self.every = _check_period("every", every)
        self._generator = torch.Generator().manual_seed(_seed_or_draw(seed))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def step(self) -> bool:
        """Count a step; act on every ``every``-th. Returns whether it acted."""
        self.calls += 1
        if int(self.calls) % self.every:
            return False
        self._act()
        return True

    def _act(self) -> None:
        raise NotImplementedError


class ReDo(_OwnGenerator):
    """Recycling dormant units: periodic reinitialization of inactive hidden units.

    Call :meth:`step` after every optimizer step, as with :class:`ContinualBackprop`; every
    ``period``-th call scores the units on the activations of the latest forward pass
    (the reference PPO uses the update's minibatch) and reinitializes those scoring at most
    ``threshold`` with the same incoming/outgoing treatment as CBP. When a layer's mean
    activation is zero every unit of it counts as dormant. The reference PPO (threshold 0.1,
    period 100) does not reset optimizer state; ``reset_optimizer_state=True`` zeroes the moments
    of the reinitialized weights, as the ReDo paper does. Hidden layers are found as
    :class:`ContinualBackprop` finds them (``example_inputs``, ``example_call``, ``layers``).
    """

    calls: Tensor
    reinitialized: Tensor

    def __init__(
        self,
        net: nn.Module,
        opt: torch.optim.Optimizer | None = None,
        *,
        threshold: float = 0.1,
        period: int = 1000,
        init: str = "kaiming",
        reset_optimizer_state: bool = False,
        layers: Sequence[LayerSpec] | None = None,
        example_inputs: ExampleInputs | None = None,
        example_call: Callable[..., Any] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be non-negative, got {threshold}")
        if int(period) != period or period < 1:
            raise ValueError(f"period must be a positive integer, got {period}")
        validate_init(init)
        self.threshold = float(threshold)
        self.period = int(period)
        found = find_hidden_layers(
            net, layers=layers, example_inputs=example_inputs, example_call=example_call
        )
        self.hidden_layers = found.hidden
        self.left_out = found.left_out
        self.optimizer = opt
        self.reset_optimizer = check_optimizer_reset(opt, reset_optimizer_state)
        self.bounds = tuple(replacement_bound(layer, init) for layer in self.hidden_layers)
        self._recorder = ActivationRecorder(self.hidden_layers)
        self._generator = torch.Generator().manual_seed(_seed_or_draw(seed))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer(
            "reinitialized", torch.zeros(len(self.hidden_layers), dtype=torch.int64)
        )

    @torch.no_grad()
    def step(self) -> int:
        """Count a step; on every ``period``-th, reinitialize dormant units. Returns how many."""
        self.calls += 1
        if int(self.calls) % self.period:
            self._recorder.clear()
            return 0
        activations = self._recorder.latest()
        self._recorder.clear()
        total = 0
        for index, (layer, hidden) in enumerate(zip(self.hidden_layers, activations, strict=True)):
            units = self.dormant_units(hidden)
            if len(units):
                reinit_units(layout_of(layer, self.bounds[index]), units, self._generator)
                if self.reset_optimizer and self.optimizer is not None:
                    reset_units_optimizer_state(self.optimizer, layer, units)
                self.reinitialized[index] += len(units)
                total += len(units)
        return total

    def dormant_units(self, hidden: Tensor) -> Tensor:
        """Indices of the units of ``hidden`` (``[M, units(, P)]``) scoring at most threshold."""
        reduce = (0, 2) if hidden.ndim == 3 else (0,)
        activity = hidden.abs().mean(reduce)
        return torch.nonzero(dormant_mask(activity, self.threshold)).flatten()

    def remove(self) -> None:
        """Detach from the network (removes the forward hooks)."""
        self._recorder.remove()


class ShrinkAndPerturb(_OwnGenerator):
    """After each optimizer step, ``w <- shrink * w + N(0, noise_std^2)`` for every parameter.

    The thesis's permuted-MNIST runs shrink through coupled weight decay in the optimizer and
    perturb with ``noise_std`` (1e-4 .. 1e-6) here, weights and biases alike; ``shrink`` (< 1)
    applies the shrink directly instead. Noise comes from a generator of its own on the
    parameters' device, so runs are reproducible under ``seed``.

    ``per_unit=True`` (``params`` a network) shrinks and perturbs only the hidden units: the
    incoming weights and biases of the hidden layers :class:`ContinualBackprop` would find
    (``example_inputs``, ``example_call``, ``layers`` as there), leaving the output layer, the
    left-out layers and the norms alone.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[Tensor],
        *,
        noise_std: float,
        shrink: float = 1.0,
        per_unit: bool = False,
        layers: Sequence[LayerSpec] | None = None,
        example_inputs: ExampleInputs | None = None,
        example_call: Callable[..., Any] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if noise_std < 0:
            raise ValueError(f"noise_std must be non-negative, got {noise_std}")
        if not 0.0 < shrink <= 1.0:
            raise ValueError(f"shrink must be in (0, 1], got {shrink}")
        tensors = _unit_parameters(params, layers, example_inputs, example_call, per_unit)
        self._params = [p for p in tensors if p.requires_grad]
        if not self._params:
            raise ValueError("ShrinkAndPerturb got no trainable parameters")
        self.noise_std = float(noise_std)
        self.shrink = float(shrink)
        device = self._params[0].device
        self._generator = torch.Generator(device).manual_seed(_seed_or_draw(seed))

    @torch.no_grad()
    def step(self) -> None:
        """Shrink and perturb every parameter once."""
        for param in self._params:
            if self.shrink != 1.0:
                param.mul_(self.shrink)
            if self.noise_std:
                noise = torch.randn(
                    param.shape, generator=self._generator, device=param.device, dtype=param.dtype
                )
                param.add_(noise, alpha=self.noise_std)


def _unit_parameters(
    params: nn.Module | Iterable[Tensor],
    layers: Sequence[LayerSpec] | None,
    example_inputs: ExampleInputs | None,
    example_call: Callable[..., Any] | None,
    per_unit: bool,
) -> Iterable[Tensor]:
    """Every parameter, or with ``per_unit`` the hidden units' incoming weights and biases."""
    if not per_unit:
        if layers is not None or example_inputs is not None:
            raise ValueError("layers= and example_inputs= choose units: pass per_unit=True too")
        return params.parameters() if isinstance(params, nn.Module) else params
    if not isinstance(params, nn.Module):
        raise ValueError("per_unit=True finds the hidden units of a network: pass the nn.Module")
    found = find_hidden_layers(
        params, layers=layers, example_inputs=example_inputs, example_call=example_call
    )
    incoming = [layer.incoming for layer in found.hidden]
    return [t for m in incoming for t in (m.weight, m.bias) if isinstance(t, Tensor)]


# ----------------------------------------------------------------------------- registry
METHODS: dict[str, str] = {
    "cbp": "continual backprop: replace a small fraction of low-utility mature units every step "
    "(Dohare et al. 2024)",
    "redo": "reinitialize units whose normalized activation is at most a threshold, "
    "periodically (Sokar et al. 2023)",
    "snp": "shrink and perturb: w <- shrink * w + noise after each step (Ash & Adams 2020)",
    "l2": "coupled L2 weight decay",
    "adam": "non-stationary Adam: betas (0.99, 0.99)",
    "dropout": "dropout on the hidden units",
    "onlinenorm": "online normalization before each activation (Chiley et al. 2019)",
    "l2init": "regenerative regularization: loss coef * ||theta - theta_0||^2 (Kumar et al. 2023)",
    "crelu": "concatenated ReLU [relu(x), relu(-x)]; the next layer reads twice the width "
    "(Abbas et al. 2023)",
    "layernorm": "LayerNorm before each hidden activation (Lyle et al. 2024)",
    "injection": "plasticity injection: frozen head + new head - frozen copy of the new head, "
    "output unchanged at injection (Nikishin et al. 2023)",
    "reset": "reinitialize the last K weight layers every N steps (Nikishin et al. 2022)",
    "regrama": "ReDo on the units' normalized gradient magnitudes (Liu et al. 2025)",
    "parseval": "Parseval regularization: loss coef * sum ||W W^T - s I||_F^2 over the hidden "
    "layers (Chung et al. 2024)",
    "upgd": "utility-gated perturbed gradient descent optimizer (Elsayed & Mahmood 2024)",
    "pfo": "proximal feature optimization (PPO): loss coef * mean (phi - phi_old)^2 on the "
    "last hidden pre-activations (Moalla et al. 2024)",
}
"""Every plasticity method of the toolkit with its one-line description (``--help``, docs)."""


def _check_coef(name: str, value: float) -> float:
    if not (value >= 0 and value == value and value != float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _check_period(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _trainable(params: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    tensors = params.parameters() if isinstance(params, nn.Module) else params
    chosen = [p for p in tensors if p.requires_grad]
    if not chosen:
        raise ValueError("got no trainable parameters")
    return chosen


# ------------------------------------------------------------------------------ L2 Init
class L2Init(nn.Module):
    """Regenerative regularization (Kumar et al. 2023, "Maintaining plasticity in continual
    learning via regenerative regularization"): add ``penalty()`` to the loss,

        coef * sum_i (theta_i - theta_0_i)^2,

    over every trainable parameter, ``theta_0`` the values at construction. The paper sweeps
    ``coef`` in {1e-2, 1e-3, 1e-4, 1e-5}; the default 1e-2 is Plasticine's regenerative
    regularization weight. The initial values are buffers, so ``state_dict()`` resumes exactly.

    >>> net = nn.Linear(3, 2)
    >>> l2init = L2Init(net, coef=0.01)
    >>> float(l2init.penalty())
    0.0
    """

    def __init__(self, params: nn.Module | Iterable[Tensor], *, coef: float = 1e-2) -> None:
        super().__init__()
        self.coef = _check_coef("coef", coef)
        self._params = _trainable(params)
        for index, param in enumerate(self._params):
            self.register_buffer(f"initial_{index}", param.detach().clone())

    def initial(self) -> list[Tensor]:
        """The parameters' values at construction, in order."""
        return [self._buffers[f"initial_{i}"] for i in range(len(self._params))]  # type: ignore[misc]

    def penalty(self) -> Tensor:
        """``coef * sum (theta - theta_0)^2`` (differentiable)."""
        total = sum(
            ((p - p0).pow(2).sum() for p, p0 in zip(self._params, self.initial(), strict=True)),
            start=torch.zeros((), device=self._params[0].device, dtype=self._params[0].dtype),
        )
        return total * self.coef


# ------------------------------------------------------------ network transformations
def _module_names(net: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in net.named_modules()}


def _replace_module(net: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attribute, new)


def _activation_name(net: nn.Module, layer: HiddenLayer, names: dict[int, str], what: str) -> str:
    activation = layer.activation
    if activation is None or id(activation) not in names:
        raise ValueError(
            f"{what} replaces activation modules; hidden layer {layer.name or '?'} uses a "
            "functional activation (e.g. torch.relu): write it as a module (nn.ReLU()) or "
            "build the network with the method (cbp_rl.nets.mlp)"
        )
    return names[id(activation)]


def _check_unshared(net: nn.Module, hidden: Sequence[HiddenLayer], what: str) -> None:
    counts: dict[int, int] = {}
    for layer in hidden:
        counts[id(layer.activation)] = counts.get(id(layer.activation), 0) + 1
    names = _module_names(net)
    shared = [names.get(k, "?") for k, n in counts.items() if n > 1]
    if shared:
        raise ValueError(
            f"{what}: the activation module(s) {', '.join(shared)} serve several hidden layers; "
            "give each hidden layer its own activation module"
        )


def _widened(layer: WeightLayer, factor: int) -> WeightLayer:
    """A fresh layer of the same kind reading ``factor`` times the inputs (torch's default init)."""
    wide = copy.deepcopy(layer)
    weight = layer.weight
    shape = (weight.shape[0], weight.shape[1] * factor, *weight.shape[2:])
    wide.weight = nn.Parameter(weight.new_empty(shape))
    if isinstance(wide, nn.Linear):
        wide.in_features *= factor
    else:
        wide.in_channels *= factor
    wide.reset_parameters()
    return wide


def use_crelu(
    net: nn.Module,
    *,
    layers: Sequence[LayerSpec] | None = None,
    example_inputs: ExampleInputs | None = None,
    example_call: Callable[..., Any] | None = None,
    init: str | None = None,
    output_gain: float = 1.0,
) -> nn.Module:
    """CReLU (Abbas et al. 2023, "Loss of plasticity in continual deep reinforcement
    learning"), in place: each hidden layer's ReLU-family activation module becomes
    :class:`CReLU` and the layer reading it a fresh layer of twice the inputs, initialized by
    torch's default for that layer or, with ``init`` (:data:`cbp_rl.nets.INIT_NAMES`), as
    :func:`cbp_rl.nets.mlp` does (the ReLU gain; ``output_gain`` for the network's last weight
    layer), from the global generator. Hidden layers are the ones :class:`ContinualBackprop`
    finds.
    Returns ``net``. Functional activations and activation modules serving several hidden
    layers are refused (they cannot be swapped for this layer alone).

    Abbas et al. keep the hidden widths (so the network has more parameters); so does this.
    """
    found = find_hidden_layers(
        net, layers=layers, example_inputs=example_inputs, example_call=example_call
    )
    if init is not None:
        validate_init(init)
    _check_unshared(net, found.hidden, "use_crelu")
    names = _module_names(net)
    last = weight_layers(net)[-1][1]
    for layer in found.hidden:
        activation_name = _activation_name(net, layer, names, "use_crelu")
        _replace_module(net, activation_name, CReLU(dim=1 if layer.is_conv else -1))
        wide = _widened(layer.outgoing, 2)
        if init is not None:
            gain = output_gain if layer.outgoing is last else activation_gain("relu")
            init_layer_(wide, init, gain)  # type: ignore[arg-type]
        _replace_module(net, names[id(layer.outgoing)], wide)
    return net


def add_layer_norm(
    net: nn.Module,
    *,
    layers: Sequence[LayerSpec] | None = None,
    example_inputs: ExampleInputs | None = None,
    example_call: Callable[..., Any] | None = None,
) -> nn.Module:
    """LayerNorm before each hidden activation (Lyle et al. 2024, "Disentangling the causes of
    plasticity loss in neural networks"), in place: each hidden layer's activation module
    becomes ``Sequential(norm, activation)``, the norm ``nn.LayerNorm(units)`` (affine, eps
    1e-5, torch's defaults) after a Linear layer and ``nn.GroupNorm(1, channels)`` (a layer norm
    over channels and positions) after a conv. Hidden layers that already have a norm are left
    as they are. Returns ``net``; CBP, ReDo and the measures then find the norm as the hidden
    layer's norm.
    """
    found = find_hidden_layers(
        net, layers=layers, example_inputs=example_inputs, example_call=example_call
    )
    _check_unshared(net, found.hidden, "add_layer_norm")
    names = _module_names(net)
    for layer in found.hidden:
        if layer.norm is not None:
            continue
        activation_name = _activation_name(net, layer, names, "add_layer_norm")
        weight = layer.incoming.weight
        norm: nn.Module = (
            nn.GroupNorm(1, layer.num_units, device=weight.device, dtype=weight.dtype)
            if layer.is_conv
            else nn.LayerNorm(layer.num_units, device=weight.device, dtype=weight.dtype)
        )
        assert layer.activation is not None
        _replace_module(net, activation_name, nn.Sequential(norm, layer.activation))
    return net


# ------------------------------------------------------------------ plasticity injection
_GLOBAL_RNG = threading.Lock()
"""Held while the process-wide generator is forked and reseeded: PPO updates its networks from
two threads, and two resets at once would otherwise draw from each other's seeds."""


def _reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    """Every submodule's own ``reset_parameters()``, drawn from ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()


def _freeze(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def _copy_without_hooks(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with no hooks: copying the injection's hook on the head would
    copy the method and every head it added, doubling the work at each injection."""
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for hooks in (sub._forward_hooks, sub._forward_pre_hooks, sub._backward_hooks):
            memo[id(hooks)] = OrderedDict()
    return copy.deepcopy(module, memo)


class PlasticityInjection(_EveryNSteps):
    """Plasticity injection (Nikishin et al. 2023, "Deep reinforcement learning with plasticity
    injection"): every ``every`` calls of :meth:`step`, the output of the module ``head`` (its
    name in ``net``) becomes ``head(x) + new(x) - frozen(x)``: ``head`` frozen, ``new`` a freshly
    initialized copy of it (each submodule's ``reset_parameters``) that trains, ``frozen`` the
    same fresh copy, frozen. The output is unchanged at the moment of injection (exactly:
    ``new(x) - frozen(x)`` is 0 then). A later injection freezes the previous ``new`` too and
    adds another pair. The new head's parameters join ``opt`` as a parameter group (the first
    group's hyperparameters); they live in this module (:attr:`added`), not in the network, so
    the network's parameter names never change.

    The paper injects once, halfway through training: ``every`` = half the run does that.
    Gradients keep flowing into the layers below the head (the paper's encoder keeps
    training). ``state_dict()`` holds the added heads, the counts and the random state; to
    resume, build the method, call :meth:`restore_structure` with the saved count of
    injections, then load the network, the optimizer and this module.
    """

    injections: Tensor

    def __init__(
        self,
        net: nn.Module,
        opt: torch.optim.Optimizer | None = None,
        *,
        head: str,
        every: int,
        seed: int | None = None,
    ) -> None:
        super().__init__(every=every, seed=seed)
        if not head:
            raise ValueError("head must name a submodule (e.g. '2' or 'fc'), not the network")
        try:
            self._head = [net.get_submodule(head)]  # a list: the head is not this module's
        except AttributeError:
            names = ", ".join(name for name, _ in net.named_children())
            raise ValueError(
                f"no module {head!r} in the network to inject into; its children are {names}"
            ) from None
        self.head = head
        self.optimizer = opt
        self.added = nn.ModuleList()
        """The injected pairs, ``[new_1, frozen_1, new_2, frozen_2, ...]``."""
        self.register_buffer("injections", torch.zeros((), dtype=torch.int64))
        self._hook = self._head[0].register_forward_hook(self._add_injected)

    def _add_injected(self, _module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        for k in range(0, len(self.added), 2):
            output = output + (self.added[k](*args) - self.added[k + 1](*args))
        return output

    def _act(self) -> None:
        self.inject()

    @torch.no_grad()
    def inject(self) -> None:
        """Inject now."""
        self._add_pair(self._generator)
        self.injections += 1

    def _add_pair(self, generator: torch.Generator | None) -> None:
        head = self._head[0]
        trained = [head, *(self.added[k] for k in range(0, len(self.added), 2))]
        new = _copy_without_hooks(head)
        if generator is not None:
            _reinitialize(new, generator)
        for module in trained:
            _freeze(module)
        for param in new.parameters():
            param.requires_grad_(True)
        self.added.extend([new, _freeze(_copy_without_hooks(new))])
        if self.optimizer is not None:
            group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
            self.optimizer.add_param_group({**group, "params": list(new.parameters())})

    def restore_structure(self, injections: int) -> None:
        """Add pairs until there are ``injections`` (before loading a saved state; the weights
        come from that state)."""
        while len(self.added) // 2 < injections:
            self._add_pair(None)

    def trainable(self) -> list[Tensor]:
        """The parameters the injections added that train (the latest new head's)."""
        return [p for p in self.added.parameters() if p.requires_grad]

    @torch.no_grad()
    def folded_weight(self) -> Tensor:
        """For a Linear head: the one weight it computes, ``W + sum (W_new - W_frozen)``."""
        head = self._head[0]
        if not isinstance(head, nn.Linear):
            raise TypeError("folded_weight() folds a Linear head")
        weight = head.weight.detach().clone()
        for k in range(0, len(self.added), 2):
            weight += self.added[k].weight - self.added[k + 1].weight  # type: ignore[operator]
        return weight

    def remove(self) -> None:
        """Remove the forward hook from the head."""
        self._hook.remove()


# ------------------------------------------------------------------------------ resets
def weight_layers(net: nn.Module) -> list[tuple[str, WeightLayer]]:
    """The Linear and conv layers of ``net`` in registration order (the forward order of
    ``nn.Sequential`` chains and of most networks)."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, WEIGHT_LAYERS)]


class ResetLastLayers(_EveryNSteps):
    """Resets (Nikishin et al. 2022, "The primacy bias in deep reinforcement learning"): every
    ``every`` calls of :meth:`step`, reinitialize the last ``layers`` weight layers (in
    registration order, see :func:`weight_layers`) with their own ``reset_parameters`` drawn
    from the method's generator, and drop their optimizer state.

    The paper resets the last layer of SPR every 2e4 updates and the whole SAC networks (all
    layers) every 2e5 updates; the defaults are the last layer every 2e5 steps.
    """

    resets: Tensor

    def __init__(
        self,
        net: nn.Module,
        opt: torch.optim.Optimizer | None = None,
        *,
        every: int = 200_000,
        layers: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(every=every, seed=seed)
        found = weight_layers(net)
        if int(layers) != layers or not 1 <= layers <= len(found):
            raise ValueError(
                f"layers must be between 1 and the network's {len(found)} weight layers, "
                f"got {layers}"
            )
        self.layer_names = tuple(name for name, _ in found[len(found) - int(layers) :])
        self._layers = [m for _, m in found[len(found) - int(layers) :]]
        self.optimizer = opt
        self.register_buffer("resets", torch.zeros((), dtype=torch.int64))

    def _act(self) -> None:
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Reset the layers now."""
        for layer in self._layers:
            _reinitialize(layer, self._generator)
            if self.optimizer is not None:
                for param in layer.parameters():
                    self.optimizer.state.pop(param, None)
        self.resets += 1


class ReGraMa(ReDo):
    """ReGraMa (Liu et al. 2025, "Measure gradients not activations! Enhancing neuronal
    activity in deep reinforcement learning"): ReDo's reset with the units scored on gradient
    magnitudes. Call :meth:`step` after every ``opt.step()``, before the gradients are zeroed;
    unit ``j`` of a hidden layer scores

        g_j = G_j / mean_k G_k,   G_j = mean over the steps since the last check of
                                        mean_i |dL/dW_in[j, i]|,

    the mean absolute gradient of its incoming weights (the authors' code averages the
    incoming-weight gradients over every axis but the unit's) over the layer's mean, and every
    ``period``-th step the units with ``g_j <= threshold`` are reinitialized as ReDo does (the
    same test, :meth:`ReDo.dormant_units`). Averaging over the steps since the last check
    matters with small batches, where one example leaves many units without gradient. The
    threshold and period default to ReDo's (0.1, every 1000 steps): our choice, by analogy
    with ReDo, not values from the paper or the authors' code (not found in the public sources
    we searched); a third-party JAX port uses threshold 0.01 and period 1000.
    """

    def __init__(self, net: nn.Module, opt: torch.optim.Optimizer | None = None, **kwargs: Any):
        super().__init__(net, opt, **kwargs)
        self._recorder.remove()  # scores come from the gradients, not the activations
        for index, layer in enumerate(self.hidden_layers):
            weight = layer.incoming.weight
            self.register_buffer(f"gradient_sum_{index}", weight.new_zeros(layer.num_units))

    def gradient_sums(self) -> list[Tensor]:
        """Per hidden layer, the summed per-unit mean |incoming gradient| since the last check."""
        return [self._buffers[f"gradient_sum_{i}"] for i in range(len(self.hidden_layers))]  # type: ignore[misc]

    @torch.no_grad()
    def step(self) -> int:
        """Count a step; on every ``period``-th, reinitialize units with small gradients."""
        sums = self.gradient_sums()
        for layer, total in zip(self.hidden_layers, sums, strict=True):
            total.add_(gradient_magnitudes(layer).abs().mean(0))
        self.calls += 1
        if int(self.calls) % self.period:
            return 0
        replaced = 0
        for index, (layer, total) in enumerate(zip(self.hidden_layers, sums, strict=True)):
            units = self.dormant_units(total.unsqueeze(0))
            total.zero_()
            if len(units):
                reinit_units(layout_of(layer, self.bounds[index]), units, self._generator)
                if self.reset_optimizer and self.optimizer is not None:
                    reset_units_optimizer_state(self.optimizer, layer, units)
                self.reinitialized[index] += len(units)
                replaced += len(units)
        return replaced


def gradient_magnitudes(layer: HiddenLayer) -> Tensor:
    """The incoming weights' gradients as ``[fan_in, units]``, the shape ReDo's test reads."""
    grad = layer.incoming.weight.grad
    if grad is None:
        raise RuntimeError(
            f"hidden layer {layer.name or '?'} has no gradient: call ReGraMa.step() after "
            "backward() and before zero_grad()"
        )
    return grad.flatten(1).t()


# ------------------------------------------------------------------- Parseval, PFO
class ParsevalRegularizer(nn.Module):
    """Parseval regularization (Chung et al. 2024, "Parseval regularization for continual
    reinforcement learning"): add ``penalty()`` to the loss,

        coef * sum_l || W_l W_l^T - s I ||_F^2,

    ``W_l`` the ``[units, fan_in]`` weight of each hidden layer's incoming layer (conv kernels
    flattened), so the output layer is left out as in the paper. Defaults: the paper's and
    Plasticine's ``coef = 1e-3``, ``s = 1``. Its gradient is ``4 coef (W W^T - s I) W``.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        coef: float = 1e-3,
        scale: float = 1.0,
        layers: Sequence[LayerSpec] | None = None,
        example_inputs: ExampleInputs | None = None,
        example_call: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.coef = _check_coef("coef", coef)
        if not scale > 0:
            raise ValueError(f"scale s must be positive, got {scale}")
        self.scale = float(scale)
        found = find_hidden_layers(
            net, layers=layers, example_inputs=example_inputs, example_call=example_call
        )
        self._weights = list({id(h.incoming): h.incoming.weight for h in found.hidden}.values())

    def penalty(self) -> Tensor:
        """``coef * sum ||W W^T - s I||_F^2`` (differentiable)."""
        total = self._weights[0].new_zeros(())
        for weight in self._weights:
            rows = weight.flatten(1)
            gram = rows @ rows.t()
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            total = total + (gram - self.scale * eye).pow(2).sum()
        return total * self.coef


class ProximalFeatures(nn.Module):
    """PFO, proximal feature optimization (Moalla et al. 2024, "No representation, no trust:
    connecting representation, collapse, and trust issues in PPO"): records the pre-activations
    ``phi(s)`` of the last hidden layer (the output of its incoming layer, before any norm and
    activation) on each forward pass, and :meth:`penalty` is

        coef * mean_batch mean_features (phi(s) - phi_old(s))^2,

    ``phi_old`` those of the policy that collected the data (recorded at rollout time, e.g.
    from :meth:`features` after a no-grad forward pass). The authors' default (``feature_trust_
    use_preactivation``, last layer only, l2, "regularize") is what this computes. Their
    configuration's default coefficient is 0 (off) and their released MuJoCo runs use 10; the
    default here, 1, is our choice (a unit weight next to the PPO loss), not theirs.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        coef: float = 1.0,
        layers: Sequence[LayerSpec] | None = None,
        example_inputs: ExampleInputs | None = None,
        example_call: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.coef = _check_coef("coef", coef)
        found = find_hidden_layers(
            net, layers=layers, example_inputs=example_inputs, example_call=example_call
        )
        self.layer = found.hidden[-1]
        self._latest: Tensor | None = None
        self._handle = self.layer.incoming.register_forward_hook(self._record)

    def _record(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self._latest = output

    def features(self) -> Tensor:
        """The pre-activations of the latest forward pass (with their graph)."""
        if self._latest is None:
            raise RuntimeError("no forward pass recorded: run the network before penalty()")
        return self._latest

    def penalty(self, old_features: Tensor) -> Tensor:
        """``coef * mean (phi - phi_old)^2`` against the old policy's pre-activations."""
        new = self.features()
        if new.shape != old_features.shape:
            raise ValueError(
                f"old features {tuple(old_features.shape)} do not match the latest forward "
                f"pass's {tuple(new.shape)}: record them on the same batch"
            )
        return (new - old_features.detach()).pow(2).flatten(1).mean(1).mean() * self.coef

    def remove(self) -> None:
        """Remove the forward hook."""
        self._handle.remove()


__all__ = [
    "METHODS",
    "CReLU",
    "L2Init",
    "ParsevalRegularizer",
    "PlasticityInjection",
    "ProximalFeatures",
    "ReDo",
    "ReGraMa",
    "ResetLastLayers",
    "ShrinkAndPerturb",
    "add_layer_norm",
    "gradient_magnitudes",
    "use_crelu",
    "weight_layers",
]
