"""The slowly-changing regression problem (formerly "bit flipping"): inputs and target network.

Per seed, as the reference code (``lop/slowly_changing_regression``, ``lop/nets/fix_ltu_net.py``)
defines it:

* **Inputs**: ``num_inputs`` bits. The first ``num_flipping_bits`` ("slow" bits) hold for
  ``flip_after`` examples, then are all drawn again (or, with ``flip_one``, one of them, chosen
  at random, flips); the other bits are drawn afresh for every example. The constant bias input
  of the paper's description is the networks' bias terms.
* **Target**: a fixed network with one hidden layer of ``num_features`` linear threshold units
  (LTUs) and a linear output; every weight and bias is -1 or +1. Unit ``i`` fires (outputs 1)
  when its input ``z_i = w_i . x + b_i`` exceeds ``tau_i = beta * (num_inputs + 1) - S_i`` with
  ``S_i = (num_inputs - sum_k w_ik + b_i) / 2``: the reference's formula, kept as written
  (for a -1 bias it is not quite the count of negative weights that the paper names).

Each seed draws its target from its own ``target`` stream and its inputs from its ``data``
stream (:func:`cbp_rl.supervised.stream.stream_seed`), so seed ``s`` of a batched run sees the
problem a single run with seed ``s`` sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cbp_rl.run.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.supervised.stream import generators_for


@dataclass(frozen=True)
class ProblemSpec:
    """The problem's sizes (the reference's defaults)."""

    num_inputs: int = 20
    num_flipping_bits: int = 15
    flip_after: int = 10_000
    flip_one: bool = False
    num_features: int = 100
    beta: float = 0.7

    def __post_init__(self) -> None:
        if self.num_inputs < 1:
            raise ValueError(f"--num-inputs must be >= 1, got {self.num_inputs}")
        if not 0 <= self.num_flipping_bits <= self.num_inputs:
            raise ValueError(
                f"--num-flipping-bits must be in [0, --num-inputs={self.num_inputs}], "
                f"got {self.num_flipping_bits}"
            )
        if self.flip_after < 1:
            raise ValueError(f"--flip-after must be >= 1, got {self.flip_after}")
        if self.num_features < 1:
            raise ValueError(f"--target-features must be >= 1, got {self.num_features}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"--beta must be in [0, 1], got {self.beta}")
        if self.flip_one and self.num_flipping_bits == 0:
            raise ValueError("--flip-one needs --num-flipping-bits >= 1")


class TargetNetwork:
    """S fixed LTU target networks, stacked: ``y = W2 . ltu(W1 x + b1) + b2``.

    Weights are stored ``[S, in, out]`` (row-vector inputs, as the engine stores them).
    """

    def __init__(self, problem: ProblemSpec, seeds: Sequence[int]) -> None:
        m, n = problem.num_inputs, problem.num_features
        hidden_w, hidden_b, out_w, out_b = [], [], [], []
        for generator in generators_for(seeds, "target"):
            # drawn in the reference's order and shapes ([out, in], then biases)
            hidden_w.append(_signs((n, m), generator).t())
            hidden_b.append(_signs((n,), generator))
            out_w.append(_signs((1, n), generator).t())
            out_b.append(_signs((1,), generator))
        self.hidden_weight = torch.stack(hidden_w)  # [S, m, n]
        self.hidden_bias = torch.stack(hidden_b).unsqueeze(1)  # [S, 1, n]
        self.output_weight = torch.stack(out_w)  # [S, n, 1]
        self.output_bias = torch.stack(out_b).unsqueeze(1)  # [S, 1, 1]
        negatives = (m - self.hidden_weight.sum(1, keepdim=True) + self.hidden_bias) / 2
        self.threshold = problem.beta * (m + 1) - negatives  # [S, 1, n]

    def features(self, inputs: Tensor) -> Tensor:
        """The LTU outputs ``[S, N, features]`` (0 or 1) for inputs ``[S, N, num_inputs]``."""
        z = torch.baddbmm(self.hidden_bias, inputs, self.hidden_weight)
        return (z > self.threshold).to(inputs.dtype)

    def __call__(self, inputs: Tensor) -> Tensor:
        """The targets ``[S, N]`` for inputs ``[S, N, num_inputs]``."""
        out = torch.baddbmm(self.output_bias, self.features(inputs), self.output_weight)
        return out.squeeze(-1)


def _signs(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(torch.float32) * 2 - 1


class SlowlyChangingInputs:
    """The input stream of S seeds: slow bits that change every ``flip_after`` examples, fast
    bits drawn for every example.

    :meth:`next` returns the next examples; the draws depend on the sizes asked for, so a run
    that resumes asks for the same sizes from the same places (the run does).
    """

    def __init__(self, problem: ProblemSpec, seeds: Sequence[int]) -> None:
        self.problem = problem
        self.seeds = list(seeds)
        self._generators = generators_for(self.seeds, "data")
        self.slow_bits = torch.zeros(len(self.seeds), problem.num_flipping_bits)
        self.position = 0
        """Examples drawn so far."""

    def next(self, count: int) -> Tensor:
        """The next ``count`` inputs of every seed, ``[S, count, num_inputs]`` float32."""
        parts = []
        done = 0
        while done < count:
            offset = self.position % self.problem.flip_after
            if offset == 0:
                self._change_slow_bits()
            take = min(count - done, self.problem.flip_after - offset)
            parts.append(self._with_slow_bits(take, self._generators))
            self.position += take
            done += take
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _change_slow_bits(self) -> None:
        f = self.problem.num_flipping_bits
        if f == 0:
            return
        first = self.position == 0
        for s, generator in enumerate(self._generators):
            if first or not self.problem.flip_one:
                self.slow_bits[s] = torch.randint(0, 2, (f,), generator=generator).float()
            else:
                bit = int(torch.randint(0, f, (1,), generator=generator))
                self.slow_bits[s, bit] = 1.0 - self.slow_bits[s, bit]

    def sample_current(self, count: int, generators: Sequence[torch.Generator]) -> Tensor:
        """``count`` inputs from the current input distribution (the current slow bits, fresh
        fast bits from ``generators``, one per seed), without advancing the stream."""
        return self._with_slow_bits(count, generators)

    def _with_slow_bits(self, count: int, generators: Sequence[torch.Generator]) -> Tensor:
        fast = self.problem.num_inputs - self.problem.num_flipping_bits
        slow = self.slow_bits.unsqueeze(1).expand(-1, count, -1)
        draws = [torch.randint(0, 2, (count, fast), generator=g) for g in generators]
        return torch.cat([slow, torch.stack(draws).float()], dim=2)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generators": [torch_generator_state(g) for g in self._generators],
            "slow_bits": self.slow_bits.clone(),
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["generators"]
        if len(saved) != len(self._generators):
            raise ValueError(f"state has {len(saved)} data generators for {len(self.seeds)} seeds")
        for generator, generator_state in zip(self._generators, saved, strict=True):
            restore_torch_generator(generator, generator_state)
        self.slow_bits.copy_(state["slow_bits"])
        self.position = int(state["position"])


__all__ = ["ProblemSpec", "SlowlyChangingInputs", "TargetNetwork"]
