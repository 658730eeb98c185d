"""What the benchmarks measure against: the reference's per-step loop, and one read of weights.

The reference (shibhansh/loss-of-plasticity) trains one seed per process: a ``DeepFFNN``
forward that collects each hidden layer's activations, ``F.cross_entropy``, ``backward``,
``SGD.step``, then its generate-and-test step, which per hidden layer and per step ages the
units, updates the running means and the utility with ``weight.abs().mean(...)`` of the
incoming and outgoing weights, counts the eligible units with ``torch.where`` and, when units
are due, ranks them with ``topk`` and reinitializes them. This module does the same tensor
operations in the same order (written here, not copied), so its speed stands in for the
reference's on any machine; the benchmarks time it beside the engine.

:func:`read_pass` reads a set of weights once, the memory traffic of the bound printed beside
the exact step's figures (the exact utility needs one read of the weights per step).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ReferenceNet(nn.Module):
    """784-w-...-w-10 ReLU, kaiming-uniform weights, zero biases; ``predict`` returns the
    logits and the list of hidden activations, as the reference's network does."""

    def __init__(self, width: int, depth: int = 3, inputs: int = 784, outputs: int = 10) -> None:
        super().__init__()
        sizes = [inputs, *([width] * depth)]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out = nn.Linear(width, outputs)
        for layer in (*self.hidden, self.out):
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for layer in self.hidden:
            x = F.relu(layer(x))
            features.append(x)
        return self.out(x), features


class ReferenceGenerateAndTest:
    """The reference's generate-and-test step (its ``gnt.py``) on a chain of Linear layers with
    ReLU between them: per step, one Python loop over the hidden layers ages the units, updates
    the running means and the utility, and picks the units due; a second reinitializes them.

    ``utility`` is ``"adaptable_contribution"`` (permuted MNIST) or ``"contribution"`` (the
    RL configs); ``accumulate`` counts fractional replacements across steps, else a unit is
    replaced with probability ``rr * eligible`` when that is below one. ``gain`` scales the
    new weights' bound ``gain * sqrt(3 / fan_in)``: sqrt(2) is the reference's kaiming, 1 its
    lecun.
    """

    def __init__(
        self,
        layers: Sequence[nn.Linear],
        replacement_rate: float = 1e-4,
        maturity_threshold: int = 100,
        decay_rate: float = 0.99,
        utility: str = "adaptable_contribution",
        accumulate: bool = True,
        gain: float = math.sqrt(2.0),
    ) -> None:
        if utility not in ("adaptable_contribution", "contribution"):
            raise ValueError(f"utility {utility!r}: adaptable_contribution or contribution")
        self.layers = list(layers)
        self.rate, self.maturity, self.eta = replacement_rate, maturity_threshold, decay_rate
        self.utility, self.accumulate = utility, accumulate
        units = [layer.out_features for layer in self.layers[:-1]]
        self.util = [torch.zeros(n) for n in units]
        self.corrected_util = [torch.zeros(n) for n in units]
        self.ages = [torch.zeros(n) for n in units]
        self.mean_act = [torch.zeros(n) for n in units]
        self.accumulated = [0.0 for _ in units]
        self.bounds = [gain * math.sqrt(3.0 / layer.in_features) for layer in self.layers[:-1]]

    @torch.no_grad()
    def step(self, features: list[torch.Tensor]) -> None:
        chosen = [self._test(i, h) for i, h in enumerate(features)]
        for i, picked in enumerate(chosen):
            if picked is not None:
                self._generate(i, picked)

    def _test(self, i: int, h: torch.Tensor) -> torch.Tensor | None:
        """Update layer ``i``'s statistics; the units to replace, or None."""
        eta = self.eta
        self.ages[i] += 1
        self.util[i] *= eta
        correction = 1 - eta ** self.ages[i]
        self.mean_act[i] *= eta
        self.mean_act[i] -= -(1 - eta) * h.mean(dim=0)
        corrected_act = self.mean_act[i] / correction
        out_mag = self.layers[i + 1].weight.data.abs().mean(dim=0)
        in_mag = self.layers[i].weight.data.abs().mean(dim=1)
        if self.utility == "contribution":
            new_util = out_mag * h.abs().mean(dim=0)
        else:
            new_util = out_mag * (h - corrected_act).abs().mean(dim=0) / in_mag
        self.util[i] += (1 - eta) * new_util
        self.corrected_util[i] = self.util[i] / correction
        eligible = torch.where(self.ages[i] > self.maturity)[0]
        if eligible.shape[0] == 0:
            return None
        expected = self.rate * eligible.shape[0]
        self.accumulated[i] += expected
        if self.accumulate:
            count = int(self.accumulated[i])
            self.accumulated[i] -= count
        else:
            count = 1 if expected < 1 and bool(torch.rand(1) <= expected) else int(expected)
        if count == 0:
            return None
        picked = eligible[torch.topk(-self.corrected_util[i][eligible], count)[1]]
        self.util[i][picked] = 0
        self.mean_act[i][picked] = 0.0
        return picked

    def _generate(self, i: int, picked: torch.Tensor) -> None:
        """New incoming weights for units ``picked`` of layer ``i``, zero outgoing ones."""
        layer, following = self.layers[i], self.layers[i + 1]
        layer.weight.data[picked, :] *= 0.0
        layer.weight.data[picked, :] += torch.empty(len(picked), layer.in_features).uniform_(
            -self.bounds[i], self.bounds[i]
        )
        layer.bias.data[picked] *= 0
        following.bias.data += (
            following.weight.data[:, picked]
            * self.mean_act[i][picked]
            / (1 - self.eta ** self.ages[i][picked])
        ).sum(dim=1)
        following.weight.data[:, picked] = 0
        self.ages[i][picked] = 0


class ReferenceLearner:
    """One seed of the reference's online learner: batch-1 SGD (lr 0.003), with or without
    its generate-and-test step after every update."""

    def __init__(self, width: int, cbp: bool, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.net = ReferenceNet(width)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.003)
        layers = [*self.net.hidden, self.net.out]
        self.gnt = ReferenceGenerateAndTest(layers) if cbp else None

    def learn(self, x: torch.Tensor, target: torch.Tensor) -> None:
        output, features = self.net.predict(x)
        loss = F.cross_entropy(output, target)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.gnt is not None:
            self.gnt.step(features)


def read_pass(weights: Sequence[torch.Tensor]) -> Callable[[], int]:
    """One read of every weight (a sum over each, nothing written back); returns 1."""
    detached = [w.detach() for w in weights]

    def read() -> int:
        for weight in detached:
            weight.sum()
        return 1

    return read
