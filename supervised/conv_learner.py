"""One network trained by SGD with momentum, optionally with L2, shrink-and-perturb or CBP.

The learner of the convolutional experiments (continual ImageNet, class-incremental CIFAR):
forward -> cross-entropy -> backward -> ``optimizer.step()`` -> parameter noise (shrink and
perturb) -> ``cbp.step()`` on the activations of that same forward pass, as the reference does.
Weight decay is SGD's coupled L2 (``grad + wd * w``). Every random draw comes from generators
the learner owns, so its :meth:`state_dict` makes a resumed run continue exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cbp_rl.cbp import CBPConfig, ContinualBackprop
from cbp_rl.metrics import (
    activation_matrix,
    approximate_rank_from_singular_values,
    dead_unit_fraction,
    effective_rank_from_singular_values,
    inactive_unit_fraction,
    singular_values,
    stable_rank_from_singular_values,
)
from cbp_rl.run.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.units import HiddenLayer, probe_activations


@dataclass(frozen=True)
class SGDConfig:
    """The optimizer and the per-step perturbation."""

    step_size: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    noise_std: float = 0.0
    """Gaussian noise std added to every parameter after each step (shrink and perturb)."""

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"--step-size must be > 0, got {self.step_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and self.noise_std >= 0):
            raise ValueError(
                f"--weight-decay and --noise-std must be >= 0, got {self.weight_decay} and "
                f"{self.noise_std}"
            )


class StepResult(NamedTuple):
    loss_sum: float
    correct: int
    examples: int


Head = Callable[[Tensor], Tensor]
"""Maps the network's output to the logits of the current task (e.g. a column selection)."""


@dataclass
class ConvLearner:
    """A network, its SGD optimizer and (with ``cbp``) continual backprop on it."""

    net: nn.Module
    sgd: SGDConfig
    noise_seed: int
    cbp: CBPConfig | None = None
    cbp_seed: int = 0
    cbp_options: Mapping[str, Any] = field(default_factory=dict)
    """Further keyword arguments of :class:`~cbp_rl.ContinualBackprop` (e.g. the unit
    discovery of a residual network)."""

    def __post_init__(self) -> None:
        device = next(self.net.parameters()).device
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=self.sgd.step_size,
            momentum=self.sgd.momentum,
            weight_decay=self.sgd.weight_decay,
        )
        self.noise = torch.Generator(device=device).manual_seed(self.noise_seed)
        self.continual: ContinualBackprop | None = None
        if self.cbp is not None:
            self.continual = ContinualBackprop(
                self.net,
                self.optimizer,
                config=self.cbp,
                seed=self.cbp_seed,
                **dict(self.cbp_options),
            )

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def set_step_size(self, step_size: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = step_size

    def train_step(self, inputs: Tensor, targets: Tensor, head: Head) -> StepResult:
        """One update on a minibatch; returns its summed loss and correct predictions."""
        self.net.train()
        logits = head(self.net(inputs))
        loss = F.cross_entropy(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.sgd.noise_std > 0:
            self._perturb()
        if self.continual is not None:
            self.continual.step()
        with torch.no_grad():
            correct = int((logits.argmax(1) == targets).sum())
        return StepResult(float(loss.detach()) * len(targets), correct, len(targets))

    @torch.no_grad()
    def _perturb(self) -> None:
        for param in self.net.parameters():
            noise = torch.randn(
                param.shape, generator=self.noise, device=param.device, dtype=param.dtype
            )
            param.add_(noise, alpha=self.sgd.noise_std)

    @torch.no_grad()
    def evaluate(self, inputs: Tensor, targets: Tensor, head: Head, batch_size: int) -> StepResult:
        """Summed loss and correct predictions in eval mode (BatchNorm uses running stats)."""
        was_training = self.net.training
        self.net.eval()
        loss_sum, correct = 0.0, 0
        try:
            for start in range(0, len(targets), batch_size):
                x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
                logits = head(self.net(x))
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
        finally:
            self.net.train(was_training)
        return StepResult(loss_sum, correct, len(targets))

    def replacements(self) -> list[int]:
        """Units replaced so far, per hidden layer (zeros without CBP)."""
        if self.continual is None:
            return []
        return [int(n) for n in self.continual.replacement_counts()]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "noise": torch_generator_state(self.noise),
        }
        if self.continual is not None:
            state["cbp"] = self.continual.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_torch_generator(self.noise, state["noise"])
        if self.continual is not None:
            self.continual.load_state_dict(state["cbp"])


# --------------------------------------------------------------------------- measures

LAYER_MEASURES = ("dead_units", "dormant_units", "effective_rank", "rank99", "stable_rank")
"""Measures with one value per hidden layer (ranks may be NaN where not computed)."""


def weight_layers(net: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


Collect = Callable[[Tensor], list[Tensor]]
"""Runs a batch of inputs through the network; each hidden layer's ``[M, units, P]``
activations."""


def hidden_layer_activations(net: nn.Module, layers: Sequence[HiddenLayer]) -> Collect:
    """Activations of discovered hidden layers (the inputs of their outgoing layers)."""

    def collect(inputs: Tensor) -> list[Tensor]:
        return probe_activations(net, inputs, layers)

    return collect


@torch.no_grad()
def plasticity_measures(
    net: nn.Module,
    collect: Collect,
    inputs: Tensor,
    weights: Sequence[Tensor],
    *,
    dormant_threshold: float = 0.01,
    rank_layers: Sequence[int] | None = None,
    batch_size: int = 500,
) -> dict[str, np.ndarray]:
    """The plasticity correlates of a network on probe ``inputs`` (eval mode, no gradients).

    Per hidden layer of ``collect``: ``dead_units`` (fraction zero on every probe example and
    position), ``dormant_units`` (fraction non-zero on less than ``dormant_threshold`` of them),
    ``effective_rank``, ``rank99`` (the reference's "stable rank": the singular values keeping
    99% of their sum) and ``stable_rank`` (``sum s^2 / max s^2``) of the activation matrix, for
    the layers in ``rank_layers`` (default all; NaN elsewhere and for non-finite activations).
    ``weight_magnitude``: mean ``|W|`` of each of ``weights``; ``weight_magnitude_all``: mean
    ``|p|`` over every parameter, biases and norms included (the reference's analysis).
    """
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        parts = [collect(inputs[s : s + batch_size]) for s in range(0, len(inputs), batch_size)]
    finally:
        for module, mode in modes:
            module.training = mode
    count = len(parts[0])
    out = {name: np.full(count, np.nan) for name in LAYER_MEASURES}
    ranked = range(count) if rank_layers is None else rank_layers
    for index in range(count):
        acts = torch.cat([p[index] for p in parts])
        out["dead_units"][index] = dead_unit_fraction(acts)
        out["dormant_units"][index] = inactive_unit_fraction(acts, dormant_threshold)
        if index in ranked and bool(torch.isfinite(acts).all()):
            s = singular_values(activation_matrix(acts))
            out["effective_rank"][index] = effective_rank_from_singular_values(s)
            out["rank99"][index] = approximate_rank_from_singular_values(s, 0.99)
            out["stable_rank"][index] = stable_rank_from_singular_values(s)
    out["weight_magnitude"] = np.array([float(w.abs().mean()) for w in weights])
    params = list(net.parameters())
    total = sum(float(p.abs().sum()) for p in params)
    out["weight_magnitude_all"] = np.array(total / sum(p.numel() for p in params))
    return out


__all__ = [
    "LAYER_MEASURES",
    "ConvLearner",
    "SGDConfig",
    "StepResult",
    "hidden_layer_activations",
    "plasticity_measures",
    "weight_layers",
]
