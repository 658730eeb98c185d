"""The batched many-seed engine: S seeds of one MLP learner as one stacked network.

Weights are stacked ``[S, in, out]`` and inputs are row vectors ``[S, B, in]``, so a layer is
one ``baddbmm`` for all seeds and the SGD update of a batch-1 step is one in-place rank-1
``baddbmm_`` per layer: no autograd graph and no gradient tensors. The layout matters on a CPU
(the ``[S, out, in]`` / column-vector layout was five times slower in a probe).

Every learner of the thesis's chapter 4 runs here, each seed with its own random streams
(:func:`cbp_rl.supervised.stream.stream_seed`), so seed ``s`` of a batched run computes what a
single run with seed ``s`` computes:

* SGD (backprop), with coupled L2 weight decay (``l2``), or Adam (``adam``);
* shrink-and-perturb: :class:`cbp_rl.methods.ShrinkAndPerturb` itself, one per seed, on views
  of that seed's weights and biases;
* dropout on the hidden units (inverted, as ``nn.Dropout``);
* online normalization before each activation (:mod:`cbp_rl.supervised.onlinenorm`);
* ReDo (threshold and period as :class:`cbp_rl.methods.ReDo`), scoring each unit on the
  examples seen since its last check (with batch size 1 the latest forward pass alone would
  call every inactive ReLU unit dormant);
* continual backprop through :class:`cbp_rl.GenerateAndTest`, the same core as
  :class:`cbp_rl.ContinualBackprop`, on the stacked weights.

Adam keeps a step count per element when units can be reinitialized, so a replaced weight
restarts its bias correction (:class:`cbp_rl.ResettableAdam`'s semantics); otherwise it is
``torch.optim.Adam``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cbp_rl.cbp import (
    BlockUpdate,
    CBPConfig,
    GenerateAndTest,
    Replacement,
    UnitLayout,
    reinit_units,
)
from cbp_rl.methods import ShrinkAndPerturb
from cbp_rl.metrics import dormant_mask
from cbp_rl.nets import activation_gain, init_bound, make_activation, validate_init
from cbp_rl.run.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.supervised import onlinenorm
from cbp_rl.supervised.activations import get_activation
from cbp_rl.supervised.onlinenorm import NormCache, NormState, OnlineNorm1d, OnlineNormConfig
from cbp_rl.supervised.stream import generators_for, stream_seed

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("cross_entropy", "squared_error")
"""``cross_entropy`` (classification, integer labels) or ``squared_error`` (regression, one
output, float targets: ``F.mse_loss``)."""
WINDOW_EXAMPLES = 256
"""At most this many examples per window (the first layer's window products are [S, n, n])."""
DEFER_HIDDEN_ELEMENTS = 2**21
"""Hidden weights with at least this many elements (all seeds) also defer their updates; below
it they sit in cache and the extra small products would cost more than they save."""


@dataclass(frozen=True)
class NetworkSpec:
    """An MLP ``inputs -> width x depth -> outputs`` (depth 0: a linear model)."""

    inputs: int = 784
    width: int = 2000
    depth: int = 3
    outputs: int = 10
    activation: str = "relu"
    init: str = "kaiming"
    """Initial weights ``U(-b, b)`` (:func:`cbp_rl.nets.init_bound`), the activation's gain for
    hidden layers and gain 1 for the output layer; zero biases."""

    def __post_init__(self) -> None:
        for name in ("inputs", "width", "outputs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.depth) < 0:
            raise ValueError(f"depth must be >= 0 (0: a linear model), got {self.depth}")
        get_activation(self.activation)
        validate_init(self.init)

    @property
    def sizes(self) -> list[int]:
        return [self.inputs, *([self.width] * self.depth), self.outputs]


@dataclass(frozen=True)
class ReDoSpec:
    """ReDo: every ``period`` steps reinitialize units scoring at most ``threshold``."""

    threshold: float = 0.1
    period: int = 1000
    reset_optimizer: bool = False
    """Zero the Adam state of reinitialized units (as the ReDo paper; not the reference PPO)."""

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"ReDo threshold must be >= 0, got {self.threshold}")
        if int(self.period) != self.period or self.period < 1:
            raise ValueError(f"ReDo period must be a positive integer, got {self.period}")


@dataclass(frozen=True)
class LearnerSpec:
    """What learns: optimizer and the plasticity methods, each off at its neutral value."""

    step_size: float = 0.003
    optimizer: str = "sgd"
    """``sgd`` or ``adam``."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    """Coupled L2: ``grad + weight_decay * w`` for every parameter (as ``torch.optim``)."""
    noise_std: float = 0.0
    """Shrink-and-perturb noise added to every weight and bias after each step."""
    shrink: float = 1.0
    """Shrink-and-perturb's direct shrink factor (1 = shrink through ``weight_decay`` only)."""
    dropout: float = 0.0
    online_norm: OnlineNormConfig | None = None
    redo: ReDoSpec | None = None
    cbp: CBPConfig | None = None
    cbp_reset_optimizer: bool = True
    """Zero the Adam state of units CBP replaces (the reference's AdamGnT does)."""

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step size must be positive, got {self.step_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; valid optimizers are sgd, adam"
            )
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"Adam betas must be in [0, 1), got {self.betas}")
        if self.eps < 0 or self.weight_decay < 0 or self.noise_std < 0:
            raise ValueError("eps, weight_decay and noise_std must be non-negative")
        if not 0.0 < self.shrink <= 1.0:
            raise ValueError(f"shrink must be in (0, 1], got {self.shrink}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {self.dropout}")

    @property
    def perturbs(self) -> bool:
        return self.noise_std > 0 or self.shrink != 1.0

    @property
    def reinitializes(self) -> bool:
        return self.cbp is not None or self.redo is not None


class BatchedAdam:
    """Adam over stacked parameters; per-element step counts when ``per_element_steps``.

    The arithmetic is ``torch.optim.Adam``'s (or, per element, ``ResettableAdam``'s); scratch
    tensors are kept between steps, since fresh large tensors cost page faults every step.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        per_element_steps: bool,
    ) -> None:
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros_like(p) for p in params] if per_element_steps else []
        self.step_count = 0
        self._scratch = [torch.empty_like(p) for p in params]
        self._grads = [torch.empty_like(p) for p in params]

    def grad_buffer(self, index: int) -> Tensor:
        """A reusable tensor for the gradient of parameter ``index``."""
        return self._grads[index]

    def begin_step(self) -> None:
        self.step_count += 1

    def update(self, index: int, param: Tensor, grad: Tensor) -> None:
        """One Adam step of ``param`` (may overwrite ``grad``)."""
        beta1, beta2 = self.betas
        if self.weight_decay:
            grad = grad.add_(param, alpha=self.weight_decay)
        exp_avg, exp_avg_sq = self.exp_avg[index], self.exp_avg_sq[index]
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = self._scratch[index]
        if self.steps:
            step = self.steps[index].add_(1.0)
            torch.pow(beta2, step, out=denom)
            torch.div(exp_avg_sq, denom.neg_().add_(1.0), out=denom).sqrt_().add_(self.eps)
            torch.pow(beta1, step, out=grad)  # the gradient is used up: reuse it
            torch.div(exp_avg, grad.neg_().add_(1.0), out=grad)
            param.addcdiv_(grad, denom, value=-self.lr)
            return
        first = 1.0 - beta1**self.step_count
        second = 1.0 - beta2**self.step_count
        torch.sqrt(exp_avg_sq, out=denom).div_(math.sqrt(second)).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-self.lr / first)

    def reset(self, index: int, where: tuple[Any, ...]) -> None:
        """Zero the state of ``param[index][where]``."""
        for table in (self.exp_avg, self.exp_avg_sq, self.steps):
            if table:
                table[index][where] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
            "steps": self.steps,
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            _copy_into(getattr(self, name), state[name], f"adam.{name}")
        self.step_count = int(state["step_count"])


class PendingUpdates:
    """Plain-SGD updates of one layer, recorded during a window and applied at its end.

    The weight the network computes with is ``weight - lr * inputs[a:n]^T @ grads[a:n]``: the
    stored weight plus the recorded updates not applied yet (``a`` = applied, ``n`` = count).
    Forward and backward passes add the recorded part as small ``[S, B, n]``-sized products,
    so a large weight is read once or twice per step and written once per window, instead of
    read three times and written once per step. The first layer's inputs are known for the
    whole window, so the engine also computes its pre-activations for the window at once.
    The result equals step-by-step SGD up to float rounding.
    """

    def __init__(self, weight: Tensor, capacity: int, *, own_inputs: bool) -> None:
        seeds, fan_in, fan_out = weight.shape
        self.inputs: Tensor | None = None
        if own_inputs:
            self.inputs = weight.new_zeros(seeds, capacity, fan_in)
        self.own_inputs = own_inputs
        self.grads = weight.new_zeros(seeds, capacity, fan_out)
        self.count = 0
        self.applied = 0

    def begin(self, inputs: Tensor | None) -> None:
        """Start a window (the first layer passes the window's inputs)."""
        if not self.own_inputs:
            self.inputs = inputs
        self.count = self.applied = 0

    @property
    def waiting(self) -> bool:
        """Whether recorded updates are not applied to the weight yet."""
        return self.count > self.applied

    def record(self, inputs: Tensor, grads: Tensor, rows: slice) -> None:
        if self.own_inputs:
            assert self.inputs is not None
            self.inputs[:, rows].copy_(inputs)
        self.grads[:, rows].copy_(grads)
        self.count = rows.stop

    def unapplied(self) -> tuple[Tensor, Tensor]:
        assert self.inputs is not None
        span = slice(self.applied, self.count)
        return self.inputs[:, span], self.grads[:, span]

    def flush(self, weight: Tensor, step_size: float) -> None:
        """Apply the waiting updates to ``weight``."""
        if self.waiting:
            inputs, grads = self.unapplied()
            weight.baddbmm_(inputs.transpose(1, 2), grads, alpha=-step_size)
            self.applied = self.count

    def rank_one_update(self, weight: Tensor, step_size: float) -> RankOneUpdate | None:
        """The waiting update of ``weight`` for the core to apply on its pass over the weights,
        when exactly one example of one seed waits; None otherwise. It counts as applied from
        here on. (A block of several seeds' rows is not contiguous, and ATen multiplies such
        batches seed by seed: slower than applying the update whole.)"""
        if self.count - self.applied != 1 or weight.shape[0] != 1:
            return None
        inputs, grads = self.unapplied()
        self.applied = self.count
        return RankOneUpdate(weight, inputs.transpose(1, 2), grads, step_size)

    def forget_outputs(self, seed: int, units: Tensor) -> None:
        """Drop the recorded updates of units' incoming weights (they were reinitialized)."""
        self.grads[seed, : self.count, units] = 0.0

    def forget_inputs(self, seed: int, units: Tensor) -> None:
        """Drop the recorded updates of units' outgoing weights (they were zeroed)."""
        assert self.inputs is not None
        self.inputs[seed, : self.count, units] = 0.0


BLAS_PRODUCTS = 400
"""A batched product of fewer multiply-adds per matrix than this is computed by ATen's own loop
on the CPU, with another rounding than the BLAS call larger ones get."""


class RankOneUpdate:
    """``weight -= step_size * columns @ row`` (``[S, in, 1]`` times ``[S, 1, out]``): one
    product per element, so any block of the weight updated alone gets the floats the whole
    update gives it, as long as the block's product takes the same routine (see
    :data:`BLAS_PRODUCTS`). A :class:`~cbp_rl.cbp.BlockUpdate`."""

    def __init__(self, weight: Tensor, columns: Tensor, row: Tensor, step_size: float) -> None:
        self.weight, self.columns, self.row, self.step_size = weight, columns, row, step_size

    def exact_in_blocks(self, dim: int, size: int) -> bool:
        _, fan_in, fan_out = self.weight.shape
        length = self.weight.shape[dim]
        sides = {fan_in * fan_out >= BLAS_PRODUCTS}
        for count in {min(size, length), length % size or size}:
            rows = count if dim == 1 else fan_in
            sides.add(rows * (count if dim == 2 else fan_out) >= BLAS_PRODUCTS)
        return len(sides) == 1

    def apply(self, dim: int, start: int, count: int) -> None:
        columns = self.columns.narrow(dim, start, count) if dim < 2 else self.columns
        row = self.row.narrow(dim, start, count) if dim != 1 else self.row
        self.weight.narrow(dim, start, count).baddbmm_(columns, row, alpha=-self.step_size)


class BatchedReDo:
    """ReDo's state for S stacked seeds, as :class:`~cbp_rl.cbp.GenerateAndTest` is CBP's.

    Each step adds the batch's absolute hidden activations per unit; every ``period``-th step
    the units whose mean (since the last test) passes :func:`~cbp_rl.metrics.dormant_mask` are
    reinitialized, each seed from its own ``redo`` stream.
    """

    def __init__(
        self, seeds: Sequence[int], width: int, depth: int, *, device: torch.device
    ) -> None:
        self.generators = generators_for(seeds, "redo")
        self.activity = [
            torch.zeros(len(seeds), width, device=device, dtype=torch.float64) for _ in range(depth)
        ]
        """Per hidden layer, ``[S, width]``: the summed ``|h_j|`` since the last test."""
        self.examples = 0
        """Examples the activity sums hold."""
        self.calls = 0
        """Steps taken."""
        self.reinitialized = torch.zeros(len(seeds), depth, dtype=torch.int64)
        """Units reinitialized so far, ``[S, depth]``."""

    def step(
        self, hidden: Sequence[Tensor], spec: ReDoSpec, layouts: Sequence[UnitLayout]
    ) -> list[Replacement] | None:
        """Count one step of hidden activations ``[S, B, width]`` per layer; on every
        ``spec.period``-th, reinitialize the dormant units and return them (else ``None``)."""
        for activity, h in zip(self.activity, hidden, strict=True):
            activity.add_(h.abs().sum(1))
        self.examples += hidden[0].shape[1]
        self.calls += 1
        if self.calls % spec.period:
            return None
        replaced = []
        for layer, activity in enumerate(self.activity):
            for s, units in enumerate(dormant_units(activity / self.examples, spec.threshold)):
                if len(units):
                    reinit_units(layouts[layer], units, self.generators[s], s)
                    self.reinitialized[s, layer] += len(units)
                    replaced.append(Replacement(layer, s, units))
            activity.zero_()
        self.examples = 0
        return replaced

    def state_dict(self) -> dict[str, Any]:
        return {
            "activity": self.activity,
            "examples": self.examples,
            "calls": self.calls,
            "reinitialized": self.reinitialized,
            "generators": [torch_generator_state(g) for g in self.generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _copy_into(self.activity, state["activity"], "redo.activity")
        self.examples, self.calls = int(state["examples"]), int(state["calls"])
        self.reinitialized.copy_(state["reinitialized"])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            restore_torch_generator(generator, saved)


class SeedTotals:
    """What a many-seed learner counts between :meth:`take_totals` calls: correct predictions
    ``[S]``, the summed loss ``[S]`` and the examples."""

    correct: Tensor
    loss_sum: Tensor
    examples: int

    def _zero_totals(self, num_seeds: int, device: torch.device) -> None:
        self.correct = torch.zeros(num_seeds, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros(num_seeds, dtype=torch.float64, device=device)
        self.examples = 0

    def take_totals(self) -> tuple[Tensor, Tensor, int]:
        """Correct predictions ``[S]``, summed loss ``[S]`` and examples since the last call."""
        totals = (self.correct.clone(), self.loss_sum.clone(), self.examples)
        self.correct.zero_()
        self.loss_sum.zero_()
        self.examples = 0
        return totals

    def _totals_state(self) -> dict[str, Any]:
        return {"correct": self.correct, "loss_sum": self.loss_sum, "examples": self.examples}

    def _load_totals(self, totals: dict[str, Any]) -> None:
        self.correct.copy_(totals["correct"])
        self.loss_sum.copy_(totals["loss_sum"])
        self.examples = int(totals["examples"])


class BatchedLearner(SeedTotals):
    """S seeds of one learner on one stacked MLP.

    Examples:
        >>> engine = BatchedLearner(NetworkSpec(width=8, depth=2), LearnerSpec(), seeds=[0, 1])
        >>> x, y = torch.rand(2, 1, 784), torch.tensor([[3], [5]])
        >>> engine.step(x, y)
        >>> engine.weights[0].shape
        torch.Size([2, 784, 8])

    Args:
        network: the MLP.
        learner: optimizer and methods.
        seeds: run seeds, one per stacked network.
        window: plain-SGD updates of the first layer (and of large hidden layers) are
            collected over this many steps and applied as one rank-k update (see
            :class:`PendingUpdates`); the network computes with the updated weights at every
            step all the same. 1 applies every update at once.
        loss: ``cross_entropy`` (labels are class indices, ``take_totals`` counts correct
            predictions) or ``squared_error`` (one output, float targets; the summed loss is
            the summed squared error).
        device: where the tensors live.
        dtype: their floating-point type.
    """

    def __init__(
        self,
        network: NetworkSpec,
        learner: LearnerSpec,
        seeds: Sequence[int],
        *,
        window: int = 32,
        loss: str = "cross_entropy",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid losses are {', '.join(LOSSES)}")
        if loss == "squared_error" and network.outputs != 1:
            raise ValueError(f"squared_error needs one output, got {network.outputs}")
        self.loss = loss
        if not seeds:
            raise ValueError("need at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        self.network, self.learner = network, learner
        self.seeds = [int(s) for s in seeds]
        self.num_seeds = len(self.seeds)
        self.device = torch.device(device)
        self.dtype = dtype
        self.activation = get_activation(network.activation)
        self.gain = activation_gain(network.activation)
        self.weights, self.biases = self._initial_parameters()
        self.depth = network.depth
        self.norm = learner.online_norm
        self.norm_states: list[NormState] = []
        self.gammas: list[Tensor] = []
        self.betas: list[Tensor] = []
        if self.norm is not None:
            shape = (self.num_seeds, 1, network.width)
            self.norm_states = [
                onlinenorm.new_state(shape, device=self.device, dtype=dtype)
                for _ in range(self.depth)
            ]
            self.gammas = [
                torch.ones(shape, device=self.device, dtype=dtype) for _ in range(self.depth)
            ]
            self.betas = [
                torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(self.depth)
            ]
        self.adam: BatchedAdam | None = None
        if learner.optimizer == "adam":
            self.adam = BatchedAdam(
                self.parameters(),
                lr=learner.step_size,
                betas=learner.betas,
                eps=learner.eps,
                weight_decay=learner.weight_decay,
                per_element_steps=learner.reinitializes,
            )
        self.perturbers = [
            ShrinkAndPerturb(
                self._seed_views(s),
                noise_std=learner.noise_std,
                shrink=learner.shrink,
                seed=stream_seed(seed, "noise"),
            )
            for s, seed in enumerate(self.seeds)
            if learner.perturbs
        ]
        self.dropout_generators = generators_for(self.seeds, "dropout")
        self.layouts = self._unit_layouts()
        self.cbp: GenerateAndTest | None = None
        if learner.cbp is not None:
            self.cbp = GenerateAndTest(
                [network.width] * self.depth,
                learner.cbp,
                seeds=[stream_seed(s, "cbp") for s in self.seeds],
                num_seeds=self.num_seeds,
                device=self.device,
                dtype=dtype,
            )
        self.redo = BatchedReDo(self.seeds, network.width, self.depth, device=self.device)
        self._zero_totals(self.num_seeds, self.device)
        self._minus_one: dict[int, Tensor] = {}
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer, got {window}")
        self.window = int(window)
        self.cbp_calls = 0
        self.pending: dict[int, PendingUpdates] = {}
        self._pending_cache: dict[tuple[int, int], PendingUpdates] = {}
        self._z0: Tensor | None = None
        self._gram: Tensor | None = None

    # ---------------------------------------------------------------------- construction
    def _initial_parameters(self) -> tuple[list[Tensor], list[Tensor]]:
        sizes = self.network.sizes
        weights = [
            torch.empty(self.num_seeds, a, b, dtype=self.dtype)
            for a, b in itertools.pairwise(sizes)
        ]
        biases = [torch.zeros(self.num_seeds, 1, b, dtype=self.dtype) for b in sizes[1:]]
        for s, generator in enumerate(generators_for(self.seeds, "init")):
            for index, weight in enumerate(weights):
                fan_in, fan_out = sizes[index], sizes[index + 1]
                gain = self.gain if index < len(weights) - 1 else 1.0
                bound = init_bound(self.network.init, fan_in, fan_out, gain)
                # drawn as nn.Linear's [out, in], as cbp_rl.nets.init_layer_ draws them
                drawn = torch.empty(fan_out, fan_in, dtype=self.dtype)
                drawn.uniform_(-bound, bound, generator=generator)
                weight[s] = drawn.t()
        return (
            [w.to(self.device) for w in weights],
            [b.to(self.device) for b in biases],
        )

    def parameters(self) -> list[Tensor]:
        """Learnable tensors: weights and biases layer by layer, then norm scales and shifts."""
        params = [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]
        return params + self.gammas + self.betas

    def _seed_views(self, seed_index: int) -> list[Tensor]:
        """Weights and biases of one seed as parameters sharing the stacked storage."""
        views = [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]
        return [nn.Parameter(t[seed_index], requires_grad=True) for t in views]

    def _unit_layouts(self) -> list[UnitLayout]:
        S = self.num_seeds
        layouts = []
        for layer in range(self.depth):
            resets: list[tuple[Tensor, float]] = []
            if self.norm is not None:
                state = self.norm_states[layer]
                resets = [
                    (self.gammas[layer].view(S, -1), 1.0),
                    (self.betas[layer].view(S, -1), 0.0),
                    (state.mean.view(S, -1), 0.0),
                    (state.var.view(S, -1), 1.0),
                    (state.u.view(S, -1), 0.0),
                    (state.v.view(S, -1), 0.0),
                ]
            layouts.append(
                UnitLayout(
                    in_weight=self.weights[layer],
                    in_unit_dim=2,
                    in_bias=self.biases[layer].view(S, -1),
                    out_weight=self.weights[layer + 1],
                    out_unit_dim=1,
                    bound=self._replacement_bound(layer),
                    out_bias=self.biases[layer + 1].view(S, -1),
                    norm_resets=resets,
                )
            )
        return layouts

    @property
    def reinitializes(self) -> bool:
        """Whether the learner reinitializes units (replacements are logged)."""
        return self.learner.reinitializes

    def _replacement_bound(self, layer: int) -> float:
        init = self.learner.cbp.init if self.learner.cbp is not None else self.network.init
        sizes = self.network.sizes
        return init_bound(init, sizes[layer], sizes[layer + 1], self.gain)

    # ---------------------------------------------------------------------- the step
    def step(self, inputs: Tensor, labels: Tensor) -> None:
        """One online step on ``inputs`` ``[S, B, in]`` and ``labels`` ``[S, B]``."""
        self.train(inputs, labels, batch_size=inputs.shape[1])

    def train(self, inputs: Tensor, labels: Tensor, batch_size: int = 1) -> None:
        """Online steps on ``inputs`` ``[S, N, in]`` and ``labels`` ``[S, N]``, ``batch_size``
        examples per step, in order.

        Each step predicts, counts correct predictions and the loss (before the update),
        updates by backprop, then applies shrink-and-perturb, CBP and ReDo, in that order.
        Steps are taken in windows of ``window`` steps from the first one; call with windows
        that start at the same places to get the same floats (a resumed run does).
        """
        count = inputs.shape[1]
        if count % batch_size or labels.shape != inputs.shape[:2]:
            raise ValueError(
                f"need [S, N, in] inputs and [S, N] labels with N a multiple of the batch size "
                f"{batch_size}; got {tuple(inputs.shape)} and {tuple(labels.shape)}"
            )
        span = self.window_steps(batch_size) * batch_size
        with torch.no_grad():
            for start in range(0, count, span):
                stop = min(count, start + span)
                self._window(inputs[:, start:stop], labels[:, start:stop], batch_size)

    def window_steps(self, batch_size: int) -> int:
        """Steps per window for this batch size (windows hold at most 256 examples)."""
        return max(1, min(self.window, WINDOW_EXAMPLES // batch_size))

    def _window(self, inputs: Tensor, labels: Tensor, batch: int) -> None:
        steps = inputs.shape[1] // batch
        self.pending = self._deferred_layers(batch) if steps > 1 else {}
        for layer, pending in self.pending.items():
            pending.begin(inputs if layer == 0 else None)
        if 0 in self.pending:
            self._z0 = torch.bmm(inputs, self.weights[0])
            self._gram = torch.bmm(inputs, inputs.transpose(1, 2))
        for k in range(steps):
            rows = slice(k * batch, (k + 1) * batch)
            self._step(inputs[:, rows], labels[:, rows], rows)
        self._flush()
        self.pending = {}
        self._z0 = self._gram = None

    def _deferred_layers(self, batch: int) -> dict[int, PendingUpdates]:
        """The layers whose updates wait for the window's end (plain SGD only)."""
        learner = self.learner
        if (
            learner.optimizer != "sgd"
            or learner.weight_decay
            or learner.perturbs
            or (learner.cbp is not None and learner.cbp.bias_compensation)
        ):
            return {}
        capacity = self.window_steps(batch) * batch
        layers = {}
        for layer, weight in enumerate(self.weights[:-1]):
            if layer == 0 or weight.numel() >= DEFER_HIDDEN_ELEMENTS:
                key = (layer, capacity)
                if key not in self._pending_cache:
                    self._pending_cache[key] = PendingUpdates(
                        weight, capacity, own_inputs=layer > 0
                    )
                layers[layer] = self._pending_cache[key]
        return layers

    def _flush(self) -> None:
        """Apply every recorded update to the weights."""
        for layer, pending in self.pending.items():
            pending.flush(self.weights[layer], self.learner.step_size)

    def _step(self, inputs: Tensor, labels: Tensor, rows: slice) -> None:
        batch = inputs.shape[1]
        learner = self.learner
        act = self.activation
        lr = learner.step_size
        pending = self.pending
        masks = self._dropout_masks(batch) if learner.dropout else None
        layer_inputs = [inputs]
        hidden: list[Tensor] = []
        pre: list[Tensor | None] = []
        caches: list[NormCache] = []
        h = inputs
        for layer in range(self.depth):
            pend = pending.get(layer)
            if layer == 0 and pend is not None:
                assert self._z0 is not None and self._gram is not None
                z = self._z0[:, rows] + self.biases[0]
                if rows.start:
                    z.baddbmm_(
                        self._gram[:, rows, : rows.start], pend.grads[:, : rows.start], alpha=-lr
                    )
            else:
                z = torch.baddbmm(self.biases[layer], h, self.weights[layer])
                if pend is not None and pend.waiting:
                    recorded, grads = pend.unapplied()
                    z.baddbmm_(torch.bmm(h, recorded.transpose(1, 2)), grads, alpha=-lr)
            if self.norm is not None:
                z, cache = onlinenorm.forward_train(
                    z, self.norm_states[layer], self.gammas[layer], self.betas[layer], self.norm
                )
                caches.append(cache)
            pre.append(z if act.needs_input else None)
            h = act.forward(z)
            hidden.append(h)
            if masks is not None:
                h = h * masks[:, layer]
            layer_inputs.append(h)
        logits = torch.baddbmm(self.biases[-1], h, self.weights[-1])
        grad = self._loss_gradient(logits, labels)
        if self.adam is not None:
            self.adam.begin_step()
        for layer in range(self.depth, -1, -1):
            pend = pending.get(layer)
            below = None
            if layer:
                below = torch.bmm(grad, self.weights[layer].transpose(1, 2))
                if pend is not None and pend.waiting:
                    recorded, grads = pend.unapplied()
                    below.baddbmm_(torch.bmm(grad, grads.transpose(1, 2)), recorded, alpha=-lr)
            if pend is not None:
                pend.record(layer_inputs[layer], grad, rows)
                self.biases[layer].add_(
                    grad if batch == 1 else grad.sum(1, keepdim=True), alpha=-lr
                )
            else:
                self._update_layer(layer, layer_inputs[layer], grad)
            if below is None:
                break
            k = layer - 1
            if masks is not None:
                below.mul_(masks[:, k])
            grad = act.backward(below, pre[k], hidden[k])
            if self.norm is not None:
                grad = self._norm_backward(k, grad, caches[k])
        self.examples += batch
        for perturber in self.perturbers:
            perturber.step()
        if self.cbp is not None:
            self._cbp_step(hidden)
        if learner.redo is not None:
            replaced = self.redo.step(hidden, learner.redo, self.layouts)
            if replaced is not None:
                self._after_reinit(replaced, reset=learner.redo.reset_optimizer)

    def _cbp_step(self, hidden: list[Tensor]) -> None:
        assert self.cbp is not None
        updates: dict[int, BlockUpdate] = {}
        if self.cbp.magnitudes_due():  # the core reads the weights' magnitudes at this call
            lr = self.learner.step_size
            for layer, pending in self.pending.items():
                weight = self.weights[layer]
                update = pending.rank_one_update(weight, lr)
                if update is None:
                    pending.flush(weight, lr)
                else:  # applied on the core's pass over the weight
                    updates[id(weight)] = update
        self.cbp_calls += 1
        replaced = self.cbp.generate_and_test(hidden, self.layouts, updates)
        self._after_reinit(replaced, reset=self.learner.cbp_reset_optimizer)

    def _after_reinit(self, replaced: Sequence[Replacement], *, reset: bool) -> None:
        """Keep recorded updates and the optimizer state consistent with reinitialized units."""
        if not replaced:
            return
        for event in replaced:
            s, layer, units = event.seed, event.layer, event.units
            incoming = self.pending.get(layer)
            if incoming is not None:
                incoming.forget_outputs(s, units)
                if layer == 0:
                    assert self._z0 is not None and incoming.inputs is not None
                    self._z0[s][:, units] = incoming.inputs[s] @ self.weights[0][s][:, units]
            outgoing = self.pending.get(layer + 1)
            if outgoing is not None:
                outgoing.forget_inputs(s, units)
        if self.adam is not None and reset:
            for event in replaced:
                s, units, layer = event.seed, event.units, event.layer
                self.adam.reset(2 * layer, (s, slice(None), units))
                self.adam.reset(2 * layer + 1, (s, 0, units))
                self.adam.reset(2 * (layer + 1), (s, units, slice(None)))

    def _loss_gradient(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Count correct predictions and the cross-entropy; return d(mean loss)/d(logits)."""
        if self.loss == "squared_error":
            return self._squared_error_gradient(logits, labels)
        batch = labels.shape[1]
        target = labels.unsqueeze(-1)
        log_probs = torch.log_softmax(logits, -1)
        self.loss_sum.sub_(log_probs.gather(-1, target).sum((1, 2)))
        self.correct.add_((logits.argmax(-1) == labels).sum(-1))
        grad = log_probs.exp_()
        minus_one = self._minus_one.get(batch)
        if minus_one is None:
            minus_one = torch.full_like(target, -1, dtype=grad.dtype)
            self._minus_one[batch] = minus_one
        grad.scatter_add_(-1, target, minus_one)
        return grad.div_(batch) if batch > 1 else grad

    def _squared_error_gradient(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Sum the squared errors; return d(mean squared error)/d(outputs), ``F.mse_loss``'s."""
        batch = targets.shape[1]
        error = outputs.sub_(targets.unsqueeze(-1))  # [S, B, 1]; the outputs are used up
        self.loss_sum.add_(error.square().sum((1, 2)))
        return error.mul_(2.0 / batch)

    def _update_layer(self, layer: int, layer_input: Tensor, grad: Tensor) -> None:
        weight, bias = self.weights[layer], self.biases[layer]
        learner = self.learner
        if self.adam is not None:
            weight_grad = self.adam.grad_buffer(2 * layer)
            torch.bmm(layer_input.transpose(1, 2), grad, out=weight_grad)
            self.adam.update(2 * layer, weight, weight_grad)
            self.adam.update(2 * layer + 1, bias, grad.sum(1, keepdim=True))
            return
        lr, decay = learner.step_size, learner.weight_decay
        keep = 1.0 - lr * decay
        weight.baddbmm_(layer_input.transpose(1, 2), grad, beta=keep, alpha=-lr)
        if decay:
            bias.mul_(keep)
        bias.add_(grad if grad.shape[1] == 1 else grad.sum(1, keepdim=True), alpha=-lr)

    def _norm_backward(self, layer: int, grad: Tensor, cache: NormCache) -> Tensor:
        assert self.norm is not None
        gamma, beta = self.gammas[layer], self.betas[layer]
        grad, grad_gamma, grad_beta = onlinenorm.backward(
            grad, cache, self.norm_states[layer], gamma, self.norm
        )
        if self.adam is not None:
            offset = 2 * (self.depth + 1)
            self.adam.update(offset + layer, gamma, grad_gamma)
            self.adam.update(offset + self.depth + layer, beta, grad_beta)
        else:
            lr, decay = self.learner.step_size, self.learner.weight_decay
            for param, param_grad in ((gamma, grad_gamma), (beta, grad_beta)):
                if decay:
                    param.mul_(1.0 - lr * decay)
                param.add_(param_grad, alpha=-lr)
        return grad

    def _dropout_masks(self, batch: int) -> Tensor:
        """``[S, depth, B, width]`` keep-masks scaled by ``1 / (1 - p)``, one draw per seed."""
        p = self.learner.dropout
        shape = (self.depth, batch, self.network.width)
        draws = torch.stack([torch.rand(shape, generator=g) for g in self.dropout_generators])
        return (draws >= p).to(device=self.device, dtype=self.dtype).mul_(1.0 / (1.0 - p))

    # ---------------------------------------------------------------------- reinitialization
    def replacements(self) -> Tensor:
        """Units reinitialized so far by CBP and ReDo, ``[S, depth]`` (int64, CPU)."""
        total = self.redo.reinitialized.clone()
        if self.cbp is not None:
            total += self.cbp.replacements.cpu()
        return total

    # ---------------------------------------------------------------------- evaluation
    def hidden_activations(self, inputs: Tensor, seeds: slice = slice(None)) -> list[Tensor]:
        """Each hidden layer's activations ``[S, M, width]`` on ``inputs`` ``[S, M, in]``, in
        evaluation mode (no dropout; online normalization with its current statistics).
        ``seeds`` selects a range of the stacked seeds (``inputs`` then holds only those)."""
        with torch.no_grad():
            return self._evaluate(inputs, seeds)[0]

    def predict(self, inputs: Tensor, seeds: slice = slice(None)) -> Tensor:
        """Logits ``[S, M, outputs]`` in evaluation mode."""
        with torch.no_grad():
            return self._evaluate(inputs, seeds)[1]

    def _evaluate(self, inputs: Tensor, seeds: slice) -> tuple[list[Tensor], Tensor]:
        hidden = []
        h = inputs
        for layer in range(self.depth):
            z = torch.baddbmm(self.biases[layer][seeds], h, self.weights[layer][seeds])
            if self.norm is not None:
                state = NormState(*(t[seeds] for t in self.norm_states[layer]))
                gamma, beta = self.gammas[layer][seeds], self.betas[layer][seeds]
                z = onlinenorm.forward_eval(z, state, gamma, beta, self.norm)
            h = self.activation.forward(z)
            hidden.append(h)
        return hidden, torch.baddbmm(self.biases[-1][seeds], h, self.weights[-1][seeds])

    def to_module(self, seed_index: int) -> nn.Sequential:
        """One seed's network as a plain PyTorch ``nn.Sequential`` (copies of the tensors)."""
        layers: list[nn.Module] = []
        sizes = self.network.sizes
        for layer in range(self.depth + 1):
            linear = nn.Linear(sizes[layer], sizes[layer + 1])
            with torch.no_grad():
                linear.weight.copy_(self.weights[layer][seed_index].t())
                linear.bias.copy_(self.biases[layer][seed_index, 0])
            layers.append(linear)
            if layer == self.depth:
                break
            if self.norm is not None:
                norm = OnlineNorm1d(sizes[layer + 1], self.norm)
                state = self.norm_states[layer]
                with torch.no_grad():
                    norm.weight.copy_(self.gammas[layer][seed_index, 0])
                    norm.bias.copy_(self.betas[layer][seed_index, 0])
                    for buffer, value in zip(norm.state(), state, strict=True):
                        buffer.copy_(value[seed_index])
                layers.append(norm)
            layers.append(make_activation(self.network.activation))
            if self.learner.dropout:
                layers.append(nn.Dropout(self.learner.dropout))
        return nn.Sequential(*layers).to(self.device)

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything the engine needs to continue exactly (tensors and plain values)."""
        if self.pending:
            raise RuntimeError("state_dict() inside a window: call it between train() calls")
        state: dict[str, Any] = {
            "seeds": list(self.seeds),
            "cbp_calls": self.cbp_calls,
            "weights": self.weights,
            "biases": self.biases,
            "gammas": self.gammas,
            "betas": self.betas,
            "norm_states": [list(s) for s in self.norm_states],
            "dropout_generators": [torch_generator_state(g) for g in self.dropout_generators],
            "perturbers": [p.state_dict() for p in self.perturbers],
            "redo": self.redo.state_dict(),
            "totals": self._totals_state(),
        }
        if self.adam is not None:
            state["adam"] = self.adam.state_dict()
        if self.cbp is not None:
            state["cbp"] = self.cbp.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into this engine's tensors (in place)."""
        if list(state["seeds"]) != self.seeds:
            raise ValueError(f"state is for seeds {state['seeds']}, this engine has {self.seeds}")
        self.cbp_calls = int(state["cbp_calls"])
        _copy_into(self.weights, state["weights"], "weights")
        _copy_into(self.biases, state["biases"], "biases")
        _copy_into(self.gammas, state["gammas"], "gammas")
        _copy_into(self.betas, state["betas"], "betas")
        for mine, saved in zip(self.norm_states, state["norm_states"], strict=True):
            _copy_into(list(mine), saved, "norm_states")
        for generator, saved in zip(
            self.dropout_generators, state["dropout_generators"], strict=True
        ):
            restore_torch_generator(generator, saved)
        for perturber, saved in zip(self.perturbers, state["perturbers"], strict=True):
            perturber.load_state_dict(saved)
        self.redo.load_state_dict(state["redo"])
        self._load_totals(state["totals"])
        if self.adam is not None:
            self.adam.load_state_dict(state["adam"])
        if self.cbp is not None:
            self.cbp.load_state_dict(state["cbp"])


def dormant_units(activity: Tensor, threshold: float) -> list[Tensor]:
    """ReDo's test per seed: units with ``a_j / mean_k a_k <= threshold`` (all when the mean
    is 0), from the mean absolute activations ``activity`` ``[S, units]``."""
    return [torch.nonzero(row).flatten() for row in dormant_mask(activity, threshold)]


def _copy_into(targets: Sequence[Tensor], sources: Sequence[Tensor], name: str) -> None:
    if len(targets) != len(sources):
        raise ValueError(f"state has {len(sources)} {name} tensors, expected {len(targets)}")
    for target, source in zip(targets, sources, strict=True):
        if target.shape != source.shape:
            raise ValueError(
                f"{name}: state tensor {tuple(source.shape)} does not fit {tuple(target.shape)}"
            )
        target.copy_(source)


__all__ = [
    "BatchedAdam",
    "BatchedLearner",
    "BatchedReDo",
    "LearnerSpec",
    "NetworkSpec",
    "ReDoSpec",
    "SeedTotals",
    "dormant_units",
]
