"""The other plasticity-preserving methods of the thesis, reusable like :class:`ContinualBackprop`.

* :class:`ReDo` (Sokar et al. 2023): every ``period`` steps, reinitialize the units whose
  normalized activation ``mean|h_j| / mean_k mean|h_k|`` is at most ``threshold``.
* :class:`ShrinkAndPerturb` (Ash & Adams 2020): after each step ``w <- shrink * w + noise``.
* L2 is coupled weight decay and the "non-stationary Adam" is Adam with betas (0.99, 0.99):
  both come from :func:`cbp_rl.optim.make_optimizer`.

Each is an ``nn.Module`` whose ``state_dict()`` holds its counters and random state.
"""

from __future__ import annotations

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
from cbp_rl.nets import validate_init
from cbp_rl.units import ActivationRecorder, LayerSpec


def _seed_or_draw(seed: int | None) -> int:
    return int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)


class _OwnGenerator(nn.Module):
    """A module drawing from a generator of its own, ``_generator``, kept in its state dict."""

    _generator: torch.Generator

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])


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


__all__ = ["ReDo", "ShrinkAndPerturb"]
