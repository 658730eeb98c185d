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
    """The reference's generate-and-test step (``adaptable_contribution``, accumulated
    replacement), one Python loop over the hidden layers per step."""

    def __init__(
        self,
        net: ReferenceNet,
        replacement_rate: float = 1e-4,
        maturity_threshold: int = 100,
        decay_rate: float = 0.99,
    ) -> None:
        self.layers = [*net.hidden, net.out]
        self.rate, self.maturity, self.eta = replacement_rate, maturity_threshold, decay_rate
        units = [layer.out_features for layer in net.hidden]
        self.util = [torch.zeros(n) for n in units]
        self.corrected_util = [torch.zeros(n) for n in units]
        self.ages = [torch.zeros(n) for n in units]
        self.mean_act = [torch.zeros(n) for n in units]
        self.accumulated = [0.0 for _ in units]
        self.bounds = [math.sqrt(2.0) * math.sqrt(3.0 / layer.in_features) for layer in net.hidden]

    @torch.no_grad()
    def step(self, features: list[torch.Tensor]) -> None:
        eta = self.eta
        chosen: list[torch.Tensor | None] = []
        for i, h in enumerate(features):
            self.ages[i] += 1
            self.util[i] *= eta
            correction = 1 - eta ** self.ages[i]
            self.mean_act[i] *= eta
            self.mean_act[i] -= -(1 - eta) * h.mean(dim=0)
            corrected_act = self.mean_act[i] / correction
            out_mag = self.layers[i + 1].weight.data.abs().mean(dim=0)
            in_mag = self.layers[i].weight.data.abs().mean(dim=1)
            new_util = out_mag * (h - corrected_act).abs().mean(dim=0) / in_mag
            self.util[i] += (1 - eta) * new_util
            self.corrected_util[i] = self.util[i] / correction
            eligible = torch.where(self.ages[i] > self.maturity)[0]
            chosen.append(None)
            if eligible.shape[0] == 0:
                continue
            self.accumulated[i] += self.rate * eligible.shape[0]
            count = int(self.accumulated[i])
            self.accumulated[i] -= count
            if count == 0:
                continue
            picked = eligible[torch.topk(-self.corrected_util[i][eligible], count)[1]]
            self.util[i][picked] = 0
            self.mean_act[i][picked] = 0.0
            chosen[i] = picked
        for i, picked in enumerate(chosen):
            if picked is None:
                continue
            layer, following = self.layers[i], self.layers[i + 1]
            layer.weight.data[picked, :] *= 0.0
            layer.weight.data[picked, :] += torch.empty(len(picked), layer.in_features).uniform_(
                -self.bounds[i], self.bounds[i]
            )
            layer.bias.data[picked] *= 0
            following.bias.data += (
                following.weight.data[:, picked]
                * self.mean_act[i][picked]
                / (1 - eta ** self.ages[i][picked])
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
        self.gnt = ReferenceGenerateAndTest(self.net) if cbp else None

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
