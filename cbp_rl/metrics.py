"""Plasticity measures: dead and dormant units, ranks, weight magnitude and change, grad norms.

Activations are ``[M, units, P]`` tensors (see :func:`cbp_rl.units.as_unit_activations`): M
examples, P positions per unit (1 for an MLP; H*W for a conv layer, whose units are channels).
``[M, units]`` is accepted wherever activations are, as ``P = 1``.

Unit measures, on the activations ``h`` of one hidden layer:

- dead unit fraction: the fraction of units with ``h_j = 0`` on every example and every position
  (Dohare et al. 2024; 2000 examples at the start of each task in permuted MNIST).
- inactive unit fraction: the fraction of units non-zero on less than a threshold (0.01) of the
  examples and positions (the "dormant units" of the reference's class-incremental CIFAR).
- dormant ratio (ReDo, Sokar et al. 2023): ``score_j = a_j / mean_k a_k`` with
  ``a_j = mean_{M,P} |h_j|``; the fraction of units with ``score_j <= tau``. Every unit counts
  as dormant when the layer's mean ``mean_k a_k`` is 0. ``tau = 0`` counts units whose output is
  0 on every example; the usual values are 0.0, 0.025 and 0.1.

Rank measures, on the activation matrix ``A`` of one layer, ``[M * P, units]`` (each position is
an example of its channel), from its singular values ``s`` computed in float64:

- effective rank (Roy & Vetterli 2007): ``exp(-sum_k p_k ln p_k)`` with ``p = s / sum(s)``
  (``0 ln 0 = 0``). 0 for an all-zero matrix.
- approximate rank: the smallest ``k`` whose ``k`` largest singular values keep at least
  ``threshold`` (0.99) of ``sum(s)``. 0 for an all-zero matrix.
- stable rank: ``sum(s^2) / max(s)^2 = ||A||_F^2 / ||A||_2^2``. 0 for an all-zero matrix.

Weight measures, on the ``weight`` of each ``nn.Linear`` / ``nn.Conv2d`` layer (biases excluded):

- mean absolute weight: ``mean |W|`` per layer; overall, ``sum |W| / number of weights`` over all
  layers (each weight counts once, so larger layers weigh more).
- weight change since a snapshot: ``mean |W - W_old|`` per layer and overall, and the summed
  ``sum |W - W_old|`` over all layers (what the reference PPO logs per update).
- gradient norm: ``sqrt(sum g^2)`` of the ``.grad`` of each weight and over all of them; a
  parameter without a ``.grad`` counts as a zero gradient.

Policy measure:

- action saturation: the fraction of action components with ``a <= low + tol`` or
  ``a >= high - tol``.

:class:`PlasticityProbe` computes the unit, rank and weight measures of a network on a probe batch
and returns them as flat keys (``dead_units/0``, ``effective_rank/mean``, ...; see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cbp_rl.discovery import ExampleInputs, find_hidden_layers
from cbp_rl.units import (
    WEIGHT_LAYERS,
    HiddenLayer,
    LayerSpec,
    probe_activations,
)

WeightSource = nn.Module | Tensor | Iterable[nn.Module | Tensor]
"""A network (its Linear/Conv2d weights), one tensor, or an iterable of modules and tensors."""

MEASURES: tuple[str, ...] = (
    "dead_units",
    "dormant",
    "effective_rank",
    "rank99",
    "stable_rank",
    "weight_magnitude",
    "weight_change",
    "grad_norm",
)
"""The measures :class:`PlasticityProbe` can compute, each the prefix of its keys."""

_RANK_MEASURES = ("effective_rank", "rank99", "stable_rank")
_UNIT_MEASURES = ("dead_units", "dormant", *_RANK_MEASURES)


# --- unit measures -------------------------------------------------------------------------------


def _as_units_3d(activations: Tensor) -> Tensor:
    if activations.dim() == 2:
        activations = activations.unsqueeze(-1)
    if activations.dim() != 3:
        raise ValueError(
            f"activations must be [M, units] or [M, units, P], got shape {tuple(activations.shape)}"
        )
    if activations.numel() == 0:
        raise ValueError(f"activations are empty: shape {tuple(activations.shape)}")
    return activations


def dead_unit_fraction(activations: Tensor) -> float:
    """Fraction of units whose output is exactly 0 on every example and position.

    ``activations`` is ``[M, units]`` or ``[M, units, P]``; dead ``j`` means ``h[:, j, :] == 0``.
    """
    acts = _as_units_3d(activations)
    alive = (acts != 0).any(dim=2).any(dim=0)
    return float((~alive).sum().item()) / acts.shape[1]


def inactive_unit_fraction(activations: Tensor, threshold: float = 0.01) -> float:
    """Fraction of units that are non-zero on less than ``threshold`` of the examples and
    positions: the "dormant units" of the reference's class-incremental CIFAR analysis
    (threshold 0.01). ``threshold = 0`` counts no unit; a dead unit always counts when > 0."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    acts = _as_units_3d(activations)
    active = (acts != 0).to(torch.float64).mean(dim=(0, 2))
    return float((active < threshold).sum().item()) / acts.shape[1]


def unit_mean_abs(activations: Tensor) -> Tensor:
    """``a_j = mean_{M,P} |h_j|`` in float64, one entry per unit (``[units]``)."""
    return _as_units_3d(activations).abs().to(torch.float64).mean(dim=(0, 2))


def dormant_mask(activity: Tensor, tau: float) -> Tensor:
    """ReDo's test (Sokar et al. 2023): which units have ``a_j / mean_k a_k <= tau``.

    ``activity`` holds each unit's mean absolute activation ``a_j`` along its last dimension
    (``[units]``, or ``[seeds, units]`` for a batch of layers, each tested on its own mean).
    When a layer's mean ``mean_k a_k`` is 0 every unit of it is dormant.
    """
    layer_mean = activity.mean(-1, keepdim=True)
    return (activity / layer_mean <= tau) | (layer_mean == 0)


def dormant_ratio(activations: Tensor, tau: float = 0.0) -> float:
    """ReDo dormant ratio: the fraction of units with ``a_j / mean_k a_k <= tau``
    (:func:`dormant_mask`), ``a_j = mean_{M,P} |h_j|``."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    per_unit = unit_mean_abs(activations)
    return float(dormant_mask(per_unit, tau).sum().item()) / per_unit.numel()


# --- rank measures -------------------------------------------------------------------------------


def activation_matrix(activations: Tensor) -> Tensor:
    """``[M, units, P]`` (or ``[M, units]``) activations as the ``[M * P, units]`` matrix.

    Each position of a conv channel is an example of that channel.
    """
    acts = _as_units_3d(activations)
    return acts.transpose(1, 2).reshape(-1, acts.shape[1])


def singular_values(matrix: Tensor) -> Tensor:
    """The singular values of a 2-D ``matrix``, computed in float64, in descending order."""
    if matrix.dim() != 2:
        raise ValueError(
            f"expected a 2-D matrix [examples, units], got shape {tuple(matrix.shape)}; "
            "use activation_matrix() for [M, units, P] activations"
        )
    if matrix.numel() == 0:
        raise ValueError(f"matrix is empty: shape {tuple(matrix.shape)}")
    return torch.linalg.svdvals(matrix.detach().to(torch.float64))


def effective_rank_from_singular_values(s: Tensor) -> float:
    """``exp(-sum p ln p)`` with ``p = s / sum(s)``; 0 when every ``s`` is 0."""
    total = s.sum()
    if total.item() == 0.0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()).item())


def approximate_rank_from_singular_values(s: Tensor, threshold: float = 0.99) -> int:
    """The fewest largest singular values keeping ``>= threshold`` of ``sum(s)``; 0 if all 0."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    kept = torch.sort(s, descending=True).values.cumsum(0)
    total = kept[-1]
    if total.item() == 0.0:
        return 0
    short = int((kept < threshold * total).sum().item())
    return min(short + 1, s.numel())


def stable_rank_from_singular_values(s: Tensor) -> float:
    """``sum(s^2) / max(s)^2``; 0 when every ``s`` is 0."""
    largest = s.max()
    if largest.item() == 0.0:
        return 0.0
    return float(((s / largest) ** 2).sum().item())


def effective_rank(matrix: Tensor) -> float:
    """Effective rank of a ``[examples, units]`` matrix (Roy & Vetterli 2007).

    ``exp(H(p))``, ``H(p) = -sum_k p_k ln p_k``, ``p = s / sum(s)`` over the singular values ``s``.
    Between 1 and the rank of the matrix; 0 for an all-zero matrix.
    """
    return effective_rank_from_singular_values(singular_values(matrix))


def approximate_rank(matrix: Tensor, threshold: float = 0.99) -> int:
    """The smallest ``k`` whose ``k`` largest singular values keep ``>= threshold`` of their sum.

    ``min {k : sum_{i<=k} s_i >= threshold * sum_i s_i}`` with ``s`` sorted descending (the
    singular values themselves, not their squares). 0 for an all-zero matrix.
    """
    return approximate_rank_from_singular_values(singular_values(matrix), threshold)


def stable_rank(matrix: Tensor) -> float:
    """Stable rank ``sum(s^2) / max(s)^2 = ||A||_F^2 / ||A||_2^2``; 0 for an all-zero matrix."""
    return stable_rank_from_singular_values(singular_values(matrix))


# --- weight measures -----------------------------------------------------------------------------


def named_weights(module: nn.Module) -> dict[str, Tensor]:
    """The ``weight`` of every Linear/Conv2d in ``module``, by parameter name (biases excluded).

    In the order of ``module.named_modules()`` (registration order); a shared layer appears once.
    """
    found: dict[str, Tensor] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, WEIGHT_LAYERS):
            found[f"{name}.weight" if name else "weight"] = sub.weight
    return found


def weight_tensors(source: WeightSource) -> list[Tensor]:
    """The weights of ``source``: a module's Linear/Conv2d weights (no biases), a tensor as is.

    An iterable may mix modules and tensors; tensors (for example ``net.parameters()``, biases
    included) are taken as given.
    """
    if isinstance(source, nn.Module):
        return list(named_weights(source).values())
    if isinstance(source, Tensor):
        return [source]
    tensors: list[Tensor] = []
    for item in source:
        tensors.extend(weight_tensors(item))
    return tensors


def mean_abs_weight_per_layer(source: WeightSource) -> list[float]:
    """``mean |W|`` of each weight of ``source`` (see :func:`weight_tensors`), in its order."""
    return [
        float(w.detach().abs().sum(dtype=torch.float64).item()) / w.numel()
        for w in weight_tensors(source)
    ]


def mean_abs_weight(source: WeightSource) -> float:
    """``sum |W| / number of weights`` over all weights of ``source`` (biases excluded for modules).

    Every weight counts once, so a layer contributes in proportion to its size.
    """
    weights = weight_tensors(source)
    count = sum(w.numel() for w in weights)
    if count == 0:
        raise ValueError("no weights to measure: expected Linear/Conv2d layers or tensors")
    total = sum(float(w.detach().abs().sum(dtype=torch.float64).item()) for w in weights)
    return total / count


@dataclass(frozen=True)
class WeightChange:
    """The change of the weights since a snapshot."""

    per_layer: dict[str, float]
    """``mean |W - W_old|`` of each weight, by parameter name."""
    mean: float
    """``sum |W - W_old| / number of weights`` over all weights."""
    total: float
    """``sum |W - W_old|`` over all weights."""


def weight_change(snapshot: Mapping[str, Tensor], module: nn.Module) -> WeightChange:
    """Change of ``module``'s Linear/Conv2d weights since ``snapshot`` (name -> old weight).

    Compares the weights named in ``snapshot`` (names as in :func:`named_weights`).
    """
    current = named_weights(module)
    missing = [name for name in snapshot if name not in current]
    if missing:
        raise ValueError(f"snapshot names weights the module does not have: {', '.join(missing)}")
    per_layer: dict[str, float] = {}
    total, count = 0.0, 0
    for name, old in snapshot.items():
        new = current[name].detach()
        if old.shape != new.shape:
            raise ValueError(
                f"weight {name}: snapshot shape {tuple(old.shape)} != current {tuple(new.shape)}"
            )
        layer_sum = float((new - old.to(new.device)).abs().sum(dtype=torch.float64).item())
        per_layer[name] = layer_sum / new.numel()
        total += layer_sum
        count += new.numel()
    return WeightChange(per_layer, total / count if count else 0.0, total)


class WeightSnapshot:
    """Copies of a module's Linear/Conv2d weights, to measure how far they move.

    ``snap = WeightSnapshot(net); snap.take(); ...update...; snap.change_since()``.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.weights: dict[str, Tensor] = {}

    @property
    def taken(self) -> bool:
        """Whether a snapshot has been taken (or loaded)."""
        return bool(self.weights)

    @torch.no_grad()
    def take(self) -> None:
        """Copy the current weights, replacing the previous snapshot."""
        self.weights = {name: w.detach().clone() for name, w in named_weights(self.module).items()}

    def change_since(self) -> WeightChange:
        """The change of the weights since the last :meth:`take`."""
        if not self.taken:
            raise RuntimeError("no snapshot yet: call take() first")
        return weight_change(self.weights, self.module)

    def state_dict(self) -> dict[str, Tensor]:
        """The snapshot weights by parameter name (empty before the first :meth:`take`)."""
        return dict(self.weights)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a snapshot from :meth:`state_dict`; names and shapes must match the module."""
        if not state:
            self.weights = {}
            return
        current = named_weights(self.module)
        if set(state) != set(current):
            raise ValueError(
                f"snapshot weights {sorted(state)} do not match the module's {sorted(current)}"
            )
        for name, tensor in state.items():
            if tensor.shape != current[name].shape:
                raise ValueError(
                    f"weight {name}: snapshot shape {tuple(tensor.shape)} != module "
                    f"{tuple(current[name].shape)}"
                )
        self.weights = {
            name: state[name].detach().to(current[name].device, current[name].dtype).clone()
            for name in current
        }


def grad_norm(params: Tensor | Iterable[Tensor]) -> float:
    """Total L2 norm ``sqrt(sum g^2)`` of the gradients; parameters without ``.grad`` skipped."""
    tensors = [params] if isinstance(params, Tensor) else list(params)
    squares = sum(
        float(p.grad.detach().to(torch.float64).square().sum().item())
        for p in tensors
        if p.grad is not None
    )
    return squares**0.5


def grad_norm_per_layer(source: WeightSource) -> list[float]:
    """L2 norm of the ``.grad`` of each weight of ``source`` (see :func:`weight_tensors`).

    A weight without ``.grad`` gives 0 (PyTorch treats a missing gradient as zero).
    """
    return [grad_norm(w) for w in weight_tensors(source)]


# --- policy measures -----------------------------------------------------------------------------


def action_saturation(
    actions: Tensor, low: float | Tensor, high: float | Tensor, tol: float = 1e-6
) -> float:
    """Fraction of action components with ``a <= low + tol`` or ``a >= high - tol``.

    ``low`` and ``high`` broadcast against ``actions`` (floats or per-dimension tensors). For
    squashed or clipped policies, the share of actions at (or, unclipped, beyond) the bounds.
    """
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if actions.numel() == 0:
        raise ValueError("actions are empty")
    low_t = torch.as_tensor(low, dtype=actions.dtype, device=actions.device)
    high_t = torch.as_tensor(high, dtype=actions.dtype, device=actions.device)
    if bool((low_t > high_t).any()):
        raise ValueError("low must not exceed high")
    saturated = (actions <= low_t + tol) | (actions >= high_t - tol)
    return float(saturated.sum().item()) / saturated.numel()


# --- the probe -----------------------------------------------------------------------------------


class PlasticityProbe:
    """The plasticity measures of a network on a probe batch, as flat ``dict[str, float]`` keys.

    Hidden layer ``i = 0, 1, ...`` (found as :class:`~cbp_rl.ContinualBackprop` finds them:
    from the forward pass on ``example_inputs`` (run through ``example_call`` if given, which
    :meth:`measure` then also uses), in a plain ``nn.Sequential`` chain, or as given in
    ``layers``) gives, for each selected measure:

    - ``dead_units/{i}``, ``dead_units/mean`` (over layers), ``dead_units/all`` (over all units)
    - ``dormant/{i}``, ``dormant/mean``, ``dormant/all``: ReDo ratio with ``dormant_tau``
    - ``effective_rank/{i}``, ``rank99/{i}`` (approximate rank, threshold 0.99),
      ``stable_rank/{i}``, each with ``/mean`` over layers
    - ``weight_magnitude/{i}``: mean ``|W|`` of the layer's incoming weight;
      ``weight_magnitude/out`` of the last hidden layer's outgoing (output) weight;
      ``weight_magnitude/all`` over every Linear/Conv2d weight of the network (biases excluded)
    - ``weight_change/{i}``, ``/out``, ``/all``: mean ``|W - W_prev|`` since the previous
      :meth:`measure` (0 the first time), and ``weight_change/sum``: ``sum |W - W_prev|``
    - ``grad_norm/{i}``, ``/out``, ``/all``: L2 norm of the current ``.grad`` of those weights
      (a missing ``.grad`` counts as 0)

    The probe runs in eval mode under ``torch.no_grad`` and restores each module's mode, so the
    network, its gradients, its buffers and the RNG state are left as they were. Callers add their
    own prefix (``plasticity/policy/``). The ranks need one SVD per layer, the costly part on
    large layers: leave them out of ``measures`` when time matters.
    """

    def __init__(
        self,
        net: nn.Module,
        layers: Sequence[LayerSpec] | None = None,
        *,
        dormant_tau: float = 0.0,
        measures: Collection[str] | None = None,
        example_inputs: ExampleInputs | None = None,
        example_call: Callable[..., Any] | None = None,
    ) -> None:
        if dormant_tau < 0:
            raise ValueError(f"dormant_tau must be >= 0, got {dormant_tau}")
        if isinstance(measures, str):
            measures = (measures,)
        chosen = set(MEASURES if measures is None else measures)
        unknown = sorted(chosen.difference(MEASURES))
        if unknown:
            raise ValueError(
                f"unknown measures {unknown}; valid measures are {', '.join(MEASURES)}"
            )
        self.net = net
        found = find_hidden_layers(
            net, layers=layers, example_inputs=example_inputs, example_call=example_call
        )
        self.layers: list[HiddenLayer] = list(found.hidden)
        self.call = example_call
        self.dormant_tau = dormant_tau
        self.measures: frozenset[str] = frozenset(chosen)
        names = {id(w): name for name, w in named_weights(net).items()}
        watched = [layer.incoming.weight for layer in self.layers]
        watched.append(self.layers[-1].outgoing.weight)
        if any(id(w) not in names for w in watched):
            raise ValueError("the given hidden layers are not all layers of the network")
        self._weight_names = [names[id(w)] for w in watched]
        self._snapshot = WeightSnapshot(net)

    def _layer_keys(self) -> list[str]:
        return [str(i) for i in range(len(self.layers))] + ["out"]

    def measure(self, inputs: Tensor) -> dict[str, float]:
        """Run ``inputs`` through the network and return the selected measures by key."""
        result: dict[str, float] = {}
        if self.measures.intersection(_UNIT_MEASURES):
            result.update(self._unit_measures(self._activations(inputs)))
        if "weight_magnitude" in self.measures:
            result.update(self._weight_magnitudes())
        if "weight_change" in self.measures:
            result.update(self._weight_changes())
        if "grad_norm" in self.measures:
            result.update(self._grad_norms())
        return result

    def _activations(self, inputs: Tensor) -> list[Tensor]:
        modes = [(module, module.training) for module in self.net.modules()]
        self.net.eval()
        try:
            return probe_activations(self.net, inputs, self.layers, self.call)
        finally:
            for module, mode in modes:
                module.training = mode

    def _unit_measures(self, activations: list[Tensor]) -> dict[str, float]:
        per_layer: dict[str, list[float]] = {name: [] for name in _UNIT_MEASURES}
        units = [acts.shape[1] for acts in activations]
        for acts in activations:
            if "dead_units" in self.measures:
                per_layer["dead_units"].append(dead_unit_fraction(acts))
            if "dormant" in self.measures:
                per_layer["dormant"].append(dormant_ratio(acts, self.dormant_tau))
            if self.measures.intersection(_RANK_MEASURES):
                s = singular_values(activation_matrix(acts))
                if "effective_rank" in self.measures:
                    per_layer["effective_rank"].append(effective_rank_from_singular_values(s))
                if "rank99" in self.measures:
                    per_layer["rank99"].append(float(approximate_rank_from_singular_values(s)))
                if "stable_rank" in self.measures:
                    per_layer["stable_rank"].append(stable_rank_from_singular_values(s))
        result: dict[str, float] = {}
        for name, values in per_layer.items():
            if not values:
                continue
            result.update({f"{name}/{i}": value for i, value in enumerate(values)})
            result[f"{name}/mean"] = sum(values) / len(values)
            if name in ("dead_units", "dormant"):
                weighted = sum(v * n for v, n in zip(values, units, strict=True))
                result[f"{name}/all"] = weighted / sum(units)
        return result

    def _weight_magnitudes(self) -> dict[str, float]:
        weights = named_weights(self.net)
        values = mean_abs_weight_per_layer([weights[name] for name in self._weight_names])
        result = {
            f"weight_magnitude/{key}": v for key, v in zip(self._layer_keys(), values, strict=True)
        }
        result["weight_magnitude/all"] = mean_abs_weight(self.net)
        return result

    def _weight_changes(self) -> dict[str, float]:
        keys = self._layer_keys()
        if self._snapshot.taken:
            change = self._snapshot.change_since()
            values = [change.per_layer[name] for name in self._weight_names]
            mean, total = change.mean, change.total
        else:
            values, mean, total = [0.0] * len(keys), 0.0, 0.0
        self._snapshot.take()
        result = {f"weight_change/{key}": v for key, v in zip(keys, values, strict=True)}
        result["weight_change/all"] = mean
        result["weight_change/sum"] = total
        return result

    def _grad_norms(self) -> dict[str, float]:
        weights = named_weights(self.net)
        values = grad_norm_per_layer([weights[name] for name in self._weight_names])
        result = {f"grad_norm/{key}": v for key, v in zip(self._layer_keys(), values, strict=True)}
        result["grad_norm/all"] = grad_norm(weights.values())
        return result

    def state_dict(self) -> dict[str, Tensor]:
        """The weight snapshot of the last :meth:`measure`, by parameter name (tensors only)."""
        return self._snapshot.state_dict()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the snapshot from :meth:`state_dict`, so weight change resumes exactly."""
        self._snapshot.load_state_dict(state)
