"""Continual backpropagation: selective reinitialization of low-utility hidden units.

One implementation serves every user: :class:`GenerateAndTest` is the generate-and-test core
over plain tensors, with an optional leading seed dimension (the batched many-seed engine of the
permuted-MNIST suite uses it directly); :class:`ContinualBackprop` puts it on an ``nn.Module``,
finding the hidden units, recording their activations and resetting optimizer state.

The algorithm follows the reference code of Dohare et al. (Nature 2024), step for step:

1. every unit ages by one;
2. ``mean_act <- eta * mean_act + (1 - eta) * batch_mean(h)``, ``f_hat = mean_act / (1 - eta^age)``;
3. the instantaneous utility ``y`` (see :data:`UTILITY_NAMES`) enters
   ``util <- eta * util + (1 - eta) * y``; units are ranked by ``util / (1 - eta^age)``;
4. units older than the maturity threshold are eligible; ``rr * n_eligible`` units are replaced
   (accumulated across steps, or one unit with that probability when below one);
5. a replaced unit gets fresh incoming weights ``U(-bound, bound)``, zero bias, zero outgoing
   weights (so the network's output does not change), and zero utility, mean and age; its norm
   entries go back to their initial values.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, NamedTuple, Protocol, get_args

import numpy as np
import torch
from torch import Tensor, nn

from cbp_rl.discovery import ExampleInputs, find_hidden_layers
from cbp_rl.nets import INIT_NAMES, fan_in_out, init_bound, validate_init
from cbp_rl.optim import RESETTABLE_OPTIMIZERS, ResettableAdam, reset_unit_state
from cbp_rl.units import (
    BATCH_NORMS,
    ActivationRecorder,
    HiddenLayer,
    LayerSpec,
    LeftOut,
    units_first,
)

UtilityName = Literal[
    "contribution",
    "adaptable_contribution",
    "zero_contribution",
    "weight",
    "adaptation",
    "feature_by_input",
    "random",
]
UTILITY_NAMES: tuple[str, ...] = get_args(UtilityName)
_NEEDS_DEVIATION = {"adaptable_contribution", "zero_contribution", "feature_by_input"}
_NEEDS_OUT_MAGNITUDE = {"contribution", "adaptable_contribution", "zero_contribution", "weight"}
_NEEDS_IN_MAGNITUDE = {"adaptable_contribution", "adaptation", "feature_by_input"}


@dataclass(frozen=True)
class CBPConfig:
    """Hyperparameters of continual backpropagation, validated on construction."""

    replacement_rate: float = 1e-4
    """Fraction of eligible units replaced per step (rr)."""
    maturity_threshold: int = 100
    """Units are eligible for replacement once their age exceeds this many steps (mt)."""
    decay_rate: float = 0.99
    """Decay of the running averages of utility and mean activation (eta)."""
    utility: str = "contribution"
    """Utility measure; one of :data:`UTILITY_NAMES`."""
    init: str = "kaiming"
    """Distribution of new incoming weights: kaiming, lecun, xavier or default."""
    accumulate: bool = False
    """Accumulate fractional replacements over steps (True), or replace with probability (False)."""
    bias_compensation: bool = False
    """Add a replaced unit's mean contribution to the next layer's bias. The reference code meant
    to do this but, as written, adds zero; False reproduces it."""
    magnitude_every: int = 1
    """Steps between recomputations of the weight-magnitude terms of the utility (1 = exact):
    they are recomputed at the first step and then at every ``magnitude_every``-th step."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.replacement_rate <= 1.0:
            raise ValueError(f"replacement_rate must be in [0, 1], got {self.replacement_rate}")
        if int(self.maturity_threshold) != self.maturity_threshold or self.maturity_threshold < 0:
            raise ValueError(
                f"maturity_threshold must be a non-negative integer, got {self.maturity_threshold}"
            )
        if not 0.0 <= self.decay_rate < 1.0:
            raise ValueError(f"decay_rate must be in [0, 1), got {self.decay_rate}")
        if self.utility not in UTILITY_NAMES:
            raise ValueError(
                f"unknown utility {self.utility!r}; valid utilities are {', '.join(UTILITY_NAMES)}"
            )
        validate_init(self.init)
        if int(self.magnitude_every) != self.magnitude_every or self.magnitude_every < 1:
            raise ValueError(
                f"magnitude_every must be an integer >= 1 (1 = exact), got {self.magnitude_every}"
            )


def make_config(config: CBPConfig | None = None, **overrides: Any) -> CBPConfig:
    """``config`` (default :class:`CBPConfig`'s defaults) with ``overrides`` of its fields."""
    valid = [f.name for f in fields(CBPConfig)]
    unknown = sorted(set(overrides).difference(valid))
    if unknown:
        raise TypeError(
            f"unknown CBP hyperparameter(s) {', '.join(unknown)}; the hyperparameters are "
            f"{', '.join(valid)} (the fields of CBPConfig)"
        )
    return replace(config or CBPConfig(), **overrides)


class NormReset(NamedTuple):
    """A norm's per-unit tensor and the value a replaced unit's entry goes back to."""

    tensor: Tensor
    value: float


@dataclass
class UnitLayout:
    """Where one hidden layer's units live in its parameter tensors.

    Dimensions are counted including the leading seed dimension when there is one. ``in_weight``
    holds each unit's incoming weights along ``in_unit_dim``; ``out_weight`` its outgoing weights
    along ``out_unit_dim``, with the outgoing layer's output dimension first among the others.
    """

    in_weight: Tensor
    in_unit_dim: int
    in_bias: Tensor | None
    out_weight: Tensor
    out_unit_dim: int
    bound: float
    out_bias: Tensor | None = None
    norm_resets: Sequence[NormReset | tuple[Tensor, float]] = field(default_factory=tuple)
    out_view: tuple[int, ...] | None = None
    """Shape to view ``out_weight`` as (a Linear read through a Flatten: ``[out, units, H*W]``)."""
    nonnegative: bool = False
    """The recorded activations are never negative (ReLU, sigmoid, ...): ``|h| = h``."""

    def outgoing(self) -> Tensor:
        """The outgoing weight, viewed with one dimension per unit."""
        return self.out_weight if self.out_view is None else self.out_weight.view(self.out_view)


class BlockUpdate(Protocol):
    """An update of a weight not applied yet, which can be applied a block at a time."""

    def exact_in_blocks(self, dim: int, size: int) -> bool:
        """Whether applying it in blocks of ``size`` along ``dim`` gives the floats of applying
        it whole."""

    def apply(self, dim: int, start: int, count: int) -> None:
        """Apply it to the block ``weight.narrow(dim, start, count)``."""


def _apply_whole(updates: dict[int, BlockUpdate], layouts: Sequence[UnitLayout]) -> None:
    """Apply (and drop) the updates of ``updates`` still waiting, each to its whole weight."""
    if not updates:
        return
    weights = {id(w): w for layout in layouts for w in (layout.in_weight, layout.out_weight)}
    for key, update in updates.items():
        update.apply(0, 0, weights[key].shape[0])
    updates.clear()


class Replacement(NamedTuple):
    """Units replaced in one layer (of one seed) by one generate-and-test step."""

    layer: int
    seed: int
    units: Tensor


def _draw_incoming(layout: UnitLayout, lead: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` fresh incoming weight vectors ``U(-bound, bound)``, drawn on the CPU."""
    shape = layout.in_weight.shape
    rest = [n for d, n in enumerate(shape) if d >= lead and d != layout.in_unit_dim]
    return torch.empty((count, *rest), dtype=layout.in_weight.dtype).uniform_(
        -layout.bound, layout.bound, generator=generator
    )


def _seeded(tensor: Tensor, unit_dim: int, lead: int) -> Tensor:
    """``tensor`` as ``[seeds, units, ...]`` (a view; one seed when there is no seed dim)."""
    moved = units_first(tensor, unit_dim, lead)
    return moved if lead else moved.unsqueeze(0)


def _reinit(
    layout: UnitLayout,
    lead: int,
    seeds: Tensor,
    units: Tensor,
    fresh: Tensor,
    mean_activation: Tensor | None,
) -> None:
    """Reinitialize units ``(seeds[i], units[i])``: fresh incoming weights, zero bias, zero
    outgoing weights (after adding their mean contribution to the next bias, if given), norm
    entries back to their initial values. One set of index operations for all of them."""
    _seeded(layout.in_weight, layout.in_unit_dim, lead)[seeds, units] = fresh.to(
        layout.in_weight.device
    )
    if layout.in_bias is not None:
        _seeded(layout.in_bias, lead, lead)[seeds, units] = 0.0
    outgoing = _seeded(layout.outgoing(), layout.out_unit_dim, lead)
    if mean_activation is not None and layout.out_bias is not None:
        shape = (len(units),) + (1,) * (outgoing.ndim - 2)
        removed = outgoing[seeds, units] * mean_activation.view(shape)  # [K, out, ...]
        removed = removed.flatten(2).sum(2) if removed.ndim > 2 else removed
        out_bias = layout.out_bias if lead else layout.out_bias.unsqueeze(0)
        out_bias.index_add_(0, seeds, removed)
    outgoing[seeds, units] = 0.0
    for tensor, value in layout.norm_resets:
        _seeded(tensor, lead, lead)[seeds, units] = value


@torch.no_grad()
def reinit_units(
    layout: UnitLayout,
    units: Tensor,
    generator: torch.Generator,
    seed_index: int | None = None,
    mean_activation: Tensor | None = None,
) -> Tensor:
    """Give ``units`` (of seed ``seed_index`` when the layout has a seed dimension) fresh
    incoming weights, zero bias and zero outgoing weights, and reset their norm entries.

    New weights are drawn on the CPU from ``generator`` (the same draws on any device). With
    ``mean_activation`` (the units' bias-corrected mean activation), their mean contribution is
    first added to the outgoing layer's bias. Returns the new incoming weights.
    """
    lead = 0 if seed_index is None else 1
    fresh = _draw_incoming(layout, lead, len(units), generator)
    seeds = torch.full_like(units, seed_index or 0)
    _reinit(layout, lead, seeds, units, fresh, mean_activation)
    return fresh


class GenerateAndTest(nn.Module):
    """The generate-and-test core: unit statistics and replacement, over plain tensors.

    ``layer_sizes`` gives the number of units per hidden layer. With ``num_seeds`` set, every
    statistic has a leading seed dimension and each seed has its own random generator, so seed
    ``s`` of a batched run makes the same decisions as a single run seeded ``seeds[s]``.
    State (``utility``, ``mean_activation``, ``age``, ``bias_correction`` = 1 - eta^age,
    ``accumulated``, ``replacements``, ``steps``, cached magnitudes) lives in buffers, the
    generators in the extra state, so ``state_dict()`` holds all of it.
    """

    utility: Tensor
    mean_activation: Tensor
    age: Tensor
    bias_correction: Tensor
    accumulated: Tensor
    replacements: Tensor
    steps: Tensor
    in_magnitude: Tensor
    out_magnitude: Tensor

    def __init__(
        self,
        layer_sizes: Sequence[int],
        config: CBPConfig,
        *,
        seeds: Sequence[int] | int | None = None,
        num_seeds: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not layer_sizes or any(n <= 0 for n in layer_sizes):
            raise ValueError(f"layer_sizes must be positive unit counts, got {list(layer_sizes)}")
        self.config = config
        self.layer_sizes = tuple(int(n) for n in layer_sizes)
        self.lead = 0 if num_seeds is None else 1
        self.num_seeds = 1 if num_seeds is None else int(num_seeds)
        seed_list = _seed_list(seeds, self.num_seeds)
        offsets = np.cumsum((0, *self.layer_sizes))
        self._slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(offsets)]
        lead_shape = () if num_seeds is None else (self.num_seeds,)
        units = (*lead_shape, int(offsets[-1]))
        per_layer = (*lead_shape, len(self.layer_sizes))
        self.register_buffer("utility", torch.zeros(units, device=device, dtype=dtype))
        self.register_buffer("mean_activation", torch.zeros(units, device=device, dtype=dtype))
        self.register_buffer("age", torch.zeros(units, dtype=torch.int64, device=device))
        # 1 - eta ** age, kept by bc <- eta * bc + (1 - eta), one lerp towards 1 per step
        self.register_buffer("bias_correction", torch.zeros(units, device=device, dtype=dtype))
        self.register_buffer("in_magnitude", torch.zeros(units, device=device, dtype=dtype))
        self.register_buffer("out_magnitude", torch.zeros(units, device=device, dtype=dtype))
        self.register_buffer("accumulated", torch.zeros(per_layer, dtype=torch.float64))
        self.register_buffer("replacements", torch.zeros(per_layer, dtype=torch.int64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._generators = [torch.Generator().manual_seed(s) for s in seed_list]
        self._uniform = _BufferedUniform(self._generators, len(self.layer_sizes))
        self._check_finite = False
        """Raise on NaN/inf activations (costs a host sync per step; off for the batched core)."""
        self._book = _HostBook(self.num_seeds, len(self.layer_sizes))
        self._magnitudes: _MagnitudePlan | None = None
        self.register_buffer("_one", torch.ones((), dtype=torch.int64, device=device), False)
        self.register_buffer("_one_float", torch.ones((), device=device, dtype=dtype), False)
        self.register_state_dict_pre_hook(_sync_before_save)
        self.register_load_state_dict_post_hook(_mark_stale_after_load)

    # ----------------------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        self._uniform.sync(range(self.num_seeds))
        return {"generators": [g.get_state() for g in self._generators]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = state["generators"]
        if len(saved) != len(self._generators):
            raise ValueError(
                f"state has {len(saved)} generator states for {len(self._generators)} seeds"
            )
        self._uniform.discard()
        for generator, generator_state in zip(self._generators, saved, strict=True):
            generator.set_state(generator_state)

    def _sync_host_to_buffers(self) -> None:
        if not self._book.stale:
            self.steps.fill_(self._book.steps)
            self.accumulated.copy_(
                torch.from_numpy(self._book.accumulated).view_as(self.accumulated)
            )

    def _host(self) -> _HostBook:
        """The host-side bookkeeping, rebuilt from the buffers after a load."""
        book = self._book
        if book.stale:
            book.rebuild(
                self.steps,
                self.accumulated,
                self.replacements,
                self.age,
                self._slices,
                self.config.maturity_threshold,
            )
        return book

    def magnitudes_due(self) -> bool:
        """Whether the next step reads the weights' magnitudes (the weights must be current)."""
        return self.config.utility in _NEEDS_IN_MAGNITUDE | _NEEDS_OUT_MAGNITUDE and (
            _magnitudes_due(self._host().steps + 1, self.config.magnitude_every)
        )

    @property
    def step_count(self) -> int:
        """Generate-and-test steps taken so far."""
        return self._host().steps

    def replacement_counts(self) -> list[int]:
        """Units replaced so far in each layer (summed over seeds)."""
        return [int(n) for n in self._host().replacements.sum(0)]

    # ------------------------------------------------------------------------ the step
    def generate_and_test(
        self,
        activations: Sequence[Tensor],
        layouts: Sequence[UnitLayout],
        weight_updates: Mapping[int, BlockUpdate] | None = None,
    ) -> list[Replacement]:
        """One generate-and-test step on the activations of the latest forward pass.

        ``activations[l]`` is ``[*seeds, M, units]``, or ``[*seeds, M, units, P]`` where a unit
        has P positions (a conv channel); M is the number of examples.
        ``weight_updates`` (keyed by ``id(weight)``) are updates of weights not applied yet:
        each is applied once, before anything reads that weight, a block at a time inside the
        pass that reads the weights' magnitudes when this step reads them (the block still in
        cache), else whole. Updates the statistics, replaces units in place and returns what
        it replaced.
        """
        if len(activations) != len(self.layer_sizes) or len(layouts) != len(self.layer_sizes):
            raise ValueError(
                f"expected {len(self.layer_sizes)} activation tensors and layouts, got "
                f"{len(activations)} and {len(layouts)}"
            )
        updates = dict(weight_updates or {})
        if self.config.replacement_rate == 0.0:
            _apply_whole(updates, layouts)
            return []  # the reference skips the whole step, statistics included
        with torch.no_grad():
            return self._generate_and_test(activations, layouts, updates)

    def _generate_and_test(
        self,
        activations: Sequence[Tensor],
        layouts: Sequence[UnitLayout],
        updates: dict[int, BlockUpdate],
    ) -> list[Replacement]:
        buffers = self._buffers
        utility = buffers["utility"]
        assert utility is not None
        per_unit = _PerUnitReducer(activations, self.lead, utility.dtype)
        if self._check_finite:
            if per_unit.examples == 0:  # other layers' empty batches give NaN means below
                self._raise_bad_activations(activations)
            batch_mean = per_unit.mean()
            if not math.isfinite(batch_mean.sum().item()):  # one op, one sync
                self._raise_bad_activations(activations)
        else:
            batch_mean = per_unit.mean()
        book = self._host()
        book.steps += 1
        age, correction = buffers["age"], buffers["bias_correction"]
        one, one_float = buffers["_one"], buffers["_one_float"]
        assert age is not None and correction is not None
        assert one is not None and one_float is not None
        age.add_(one)  # tensor operands: cheaper than wrapping a Python scalar
        correction.lerp_(one_float, 1.0 - self.config.decay_rate)
        self._update_utility(per_unit, batch_mean, layouts, updates)
        _apply_whole(updates, layouts)
        return self._replace_units(layouts)

    def _raise_bad_activations(self, activations: Sequence[Tensor]) -> None:
        empty = [str(i) for i, h in enumerate(activations) if h.shape[self.lead] == 0]
        if empty:
            raise ValueError(
                f"empty activations (a batch of 0 examples) in hidden layer(s) "
                f"{', '.join(empty)}: run the forward pass on at least one example before step()"
            )
        bad = [str(i) for i, h in enumerate(activations) if not bool(torch.isfinite(h).all())]
        where = ", ".join(bad) or "all (their sum overflows)"
        raise ValueError(
            f"non-finite activations (NaN or inf) in hidden layer(s) {where} at step "
            f"{self._host().steps + 1}: the network diverged before this step. Lower the step "
            "size or clip gradients; CBP cannot rank units on NaN"
        )

    def _update_utility(
        self,
        per_unit: _PerUnitReducer,
        batch_mean: Tensor,
        layouts: Sequence[UnitLayout],
        updates: dict[int, BlockUpdate],
    ) -> None:
        cfg = self.config
        weight = 1.0 - cfg.decay_rate
        buffers = self._buffers  # direct access: this is the hot path
        mean_activation, utility = buffers["mean_activation"], buffers["utility"]
        assert mean_activation is not None and utility is not None
        mean_activation.lerp_(batch_mean, weight)
        kind = cfg.utility
        if kind == "random":
            return
        if kind in _NEEDS_DEVIATION:
            correction = buffers["bias_correction"]
            assert correction is not None
            f_hat = mean_activation / correction
            spread = per_unit.mean_abs_deviation(f_hat, self._slices)
        elif kind == "contribution":
            nonnegative = all(layout.nonnegative for layout in layouts)
            spread = batch_mean.clone() if nonnegative else per_unit.mean_abs()
        if _magnitudes_due(self._book.steps, cfg.magnitude_every):
            self._magnitude_plan(layouts).run(updates)
        in_magnitude, out_magnitude = buffers["in_magnitude"], buffers["out_magnitude"]
        assert in_magnitude is not None and out_magnitude is not None
        if kind == "contribution" or kind == "zero_contribution":
            instant = spread.mul_(out_magnitude)
        elif kind == "adaptable_contribution":
            instant = spread.mul_(out_magnitude).div_(in_magnitude)
        elif kind == "feature_by_input":
            instant = spread.div_(in_magnitude)
        elif kind == "weight":
            instant = out_magnitude
        else:  # adaptation
            instant = in_magnitude.reciprocal()
        utility.lerp_(instant, weight)

    def _magnitude_plan(self, layouts: Sequence[UnitLayout]) -> _MagnitudePlan:
        """The cached plan computing weight magnitudes, rebuilt when a tensor object changes."""
        tensors = [self.in_magnitude, self.out_magnitude]
        for layout in layouts:
            tensors += [layout.in_weight, layout.out_weight]
        key = tuple(map(id, tensors))
        if self._magnitudes is None or self._magnitudes.key != key:
            self._magnitudes = _MagnitudePlan(self, layouts, key)
        return self._magnitudes

    def _replace_units(self, layouts: Sequence[UnitLayout]) -> list[Replacement]:
        done = []
        for layer, seeds, counts in self._book.plan(self.config, self._uniform):
            self._uniform.sync(seeds)  # the generators serve the new weights next
            done += self._replace_layer(layouts[layer], layer, seeds, counts)
        return done

    def _as_seeded(self, tensor: Tensor) -> Tensor:
        return tensor if self.lead else tensor.unsqueeze(0)

    def _select(self, layer: int, seeds: Tensor, counts: Sequence[int]) -> Tensor:
        """For each seed in ``seeds``, its ``count`` eligible units of lowest bias-corrected
        utility, lowest first, as ``[len(seeds), max(counts)]``."""
        span = self._slices[layer]
        age = self._as_seeded(self.age)[seeds, span]
        if self.config.utility == "random":
            draws = [
                torch.rand(age.shape[1], generator=self._generators[s]) for s in seeds.tolist()
            ]
            score = torch.stack(draws).to(age.device)
        else:
            correction = self._as_seeded(self.bias_correction)[seeds, span]
            score = self._as_seeded(self.utility)[seeds, span] / correction
        score.masked_fill_(age <= self.config.maturity_threshold, math.inf)
        return torch.topk(score, max(counts), dim=1, largest=False, sorted=True).indices

    def _replace_layer(
        self, layout: UnitLayout, layer: int, seed_list: list[int], counts: list[int]
    ) -> list[Replacement]:
        """Replace ``counts[i]`` units of seed ``seed_list[i]`` in one layer."""
        device = self.age.device
        seeds_of_layer = torch.tensor(seed_list, device=device)
        ranked = self._select(layer, seeds_of_layer, counts)
        chosen = [ranked[i, :count] for i, count in enumerate(counts)]
        units = torch.cat(chosen) if len(chosen) > 1 else chosen[0]
        seeds = torch.repeat_interleave(seeds_of_layer, torch.tensor(counts, device=device))
        positions = units + self._slices[layer].start
        mean_activation = None
        if self.config.bias_compensation:
            mean = self._as_seeded(self.mean_activation)[seeds, positions]
            mean_activation = mean / self._as_seeded(self.bias_correction)[seeds, positions]
        draws = [
            _draw_incoming(layout, self.lead, count, self._generators[seed])
            for seed, count in zip(seed_list, counts, strict=True)
        ]
        fresh = torch.cat(draws) if len(draws) > 1 else draws[0]
        _reinit(layout, self.lead, seeds, units, fresh, mean_activation)
        for buffer in (
            self.utility,
            self.mean_activation,
            self.age,
            self.bias_correction,
            self.out_magnitude,
        ):
            self._as_seeded(buffer)[seeds, positions] = 0
        if self.config.magnitude_every > 1 and self.config.utility in _NEEDS_IN_MAGNITUDE:
            self._as_seeded(self.in_magnitude)[seeds, positions] = (
                fresh.abs().flatten(1).mean(1).to(self.in_magnitude)
            )
        self._book.replaced(seed_list, layer, counts, self.config.maturity_threshold)
        self._as_seeded(self.replacements)[:, layer].index_add_(
            0, seeds_of_layer, torch.tensor(counts, device=self.replacements.device)
        )
        return [
            Replacement(layer, seed, picked) for seed, picked in zip(seed_list, chosen, strict=True)
        ]


class _Maturing(NamedTuple):
    """Units of one layer that become eligible at ``step``."""

    step: int
    seeds: list[int]
    layer: int
    counts: list[int]


class LayerPlan(NamedTuple):
    """How many units (``counts[i]`` of seed ``seeds[i]``) to replace in ``layer`` this step."""

    layer: int
    seeds: list[int]
    counts: list[int]


class _HostBook:
    """Host-side bookkeeping of the replacement decisions, in numpy arrays ``[seeds, layers]``.

    Which units are eligible follows from their ages: a unit replaced at step ``r`` becomes
    eligible at step ``r + mt + 1``. Counting that on the host means deciding how many units to
    replace needs no device round trip and no per-step tensor op. Accumulators are float64, as
    the reference's Python floats. The buffers stay the source of truth after a load.
    """

    def __init__(self, num_seeds: int, num_layers: int) -> None:
        self.steps = 0
        self.accumulated = np.zeros((num_seeds, num_layers))
        self.replacements = np.zeros((num_seeds, num_layers), np.int64)
        self.eligible = np.zeros((num_seeds, num_layers), np.int64)
        self.maturing: deque[_Maturing] = deque()
        self.expected: np.ndarray | None = None
        """``replacement_rate * eligible``, kept until eligibility changes (see ``_expect``)."""
        self.certain = np.zeros((num_seeds, num_layers), np.int64)
        self.any_certain = False
        self.draw_seeds = np.zeros(0, np.int64)
        """Seeds that draw this step (probabilistic replacement)."""
        self.draw_chances = np.zeros((0, num_layers))
        """``[draw_seeds, layers]``: the probability of replacing one unit, -1 where none."""
        self.stale = True

    def rebuild(
        self,
        steps: Tensor,
        accumulated: Tensor,
        replacements: Tensor,
        age: Tensor,
        spans: Sequence[slice],
        maturity_threshold: int,
    ) -> None:
        seeds = len(self.eligible)
        self.steps = int(steps.item())
        self.accumulated = accumulated.detach().cpu().double().numpy().reshape(seeds, -1).copy()
        self.replacements = replacements.detach().cpu().numpy().reshape(seeds, -1).copy()
        ages = age.detach().cpu().numpy().reshape(seeds, -1)
        pending = []
        for layer, span in enumerate(spans):
            for seed in range(seeds):
                layer_ages = ages[seed, span]
                self.eligible[seed, layer] = int((layer_ages > maturity_threshold).sum())
                young, counts = np.unique(
                    layer_ages[layer_ages <= maturity_threshold], return_counts=True
                )
                for unit_age, count in zip(young.tolist(), counts.tolist(), strict=True):
                    ready = self.steps + maturity_threshold + 1 - unit_age
                    pending.append(_Maturing(ready, [seed], layer, [count]))
        self.maturing = deque(sorted(pending))
        self.expected = None
        self.stale = False

    def plan(self, config: CBPConfig, uniform: _BufferedUniform) -> list[LayerPlan]:
        """The units to replace at this step, layer by layer."""
        maturing, eligible = self.maturing, self.eligible
        while maturing and maturing[0].step <= self.steps:
            _, seeds, layer, counts = maturing.popleft()
            eligible[seeds, layer] += counts
            self.expected = None
        if self.expected is None:
            self._expect(config.replacement_rate)
        expected = self.expected
        assert expected is not None
        if config.accumulate:
            # nothing eligible adds 0.0: no accrual then, as in the reference
            self.accumulated += expected
            if self.accumulated.max() < 1.0:
                return []
            chosen = np.floor(self.accumulated)
            self.accumulated -= chosen
            plan = np.minimum(chosen.astype(np.int64), eligible)
        else:
            plan = self.certain
            if len(self.draw_seeds):  # one unit with probability rr * n_eligible < 1
                hits = uniform.next(self.draw_seeds) <= self.draw_chances
                if hits.any():
                    rows, layers = np.nonzero(hits)
                    plan = plan.copy()
                    plan[self.draw_seeds[rows], layers] = 1
            if plan is self.certain and not self.any_certain:
                return []
        return [
            LayerPlan(layer, replacing.tolist(), plan[replacing, layer].tolist())
            for layer in range(plan.shape[1])
            if len(replacing := np.flatnonzero(plan[:, layer]))
        ]

    def _expect(self, rate: float) -> None:
        """What eligibility implies until it changes: expected counts and, for probabilistic
        replacement, the counts replaced for sure and where a draw decides."""
        eligible = self.eligible
        self.expected = rate * eligible
        self.certain = np.minimum(np.floor(self.expected).astype(np.int64), eligible)
        self.any_certain = bool(self.certain.any())
        below = (self.expected < 1.0) & (eligible > 0)
        self.draw_seeds = np.flatnonzero(below.any(1))
        rows = self.draw_seeds
        self.draw_chances = np.where(below[rows], self.expected[rows], -1.0)

    def replaced(
        self, seeds: list[int], layer: int, counts: list[int], maturity_threshold: int
    ) -> None:
        self.eligible[seeds, layer] -= counts
        self.expected = None
        self.maturing.append(_Maturing(self.steps + maturity_threshold + 1, seeds, layer, counts))
        self.replacements[seeds, layer] += counts


class _BufferedUniform:
    """Each seed's uniform draws for probabilistic replacement, one row of ``width`` values per
    step, taken from its generator in blocks: the same numbers in the same order as one
    ``torch.rand(width, generator)`` per step (the CPU generator fills a tensor serially), at a
    fraction of the cost. Before a generator serves anything else, :meth:`sync` puts it where
    the unbuffered calls would have left it, so every other draw is unchanged too."""

    BLOCK = 1024

    def __init__(self, generators: Sequence[torch.Generator], width: int) -> None:
        self.generators, self.width = generators, width
        self.values = np.zeros((len(generators), self.BLOCK, width), np.float32)
        self.cursor = np.full(len(generators), self.BLOCK)
        """Rows used of each seed's block (``BLOCK``: no block held)."""
        self.snapshots: list[Tensor | None] = [None] * len(generators)
        """Each generator's state before its block was drawn."""

    def next(self, seeds: np.ndarray) -> np.ndarray:
        """The next row of draws of each of ``seeds``, ``[len(seeds), width]``."""
        for s in seeds[self.cursor[seeds] >= self.BLOCK].tolist():
            generator = self.generators[s]
            self.snapshots[s] = generator.get_state()
            block = torch.rand(self.BLOCK * self.width, generator=generator)
            self.values[s] = block.view(self.BLOCK, self.width).numpy()
            self.cursor[s] = 0
        rows = self.values[seeds, self.cursor[seeds]]
        self.cursor[seeds] += 1
        return rows

    def sync(self, seeds: Iterable[int]) -> None:
        """Rewind the generators of ``seeds`` to just past the draws used; drop their blocks."""
        for s in seeds:
            used, snapshot = int(self.cursor[s]), self.snapshots[s]
            if used < self.BLOCK and snapshot is not None:
                generator = self.generators[s]
                generator.set_state(snapshot)
                if used:
                    torch.rand(used * self.width, generator=generator)
            self.cursor[s], self.snapshots[s] = self.BLOCK, None

    def discard(self) -> None:
        """Drop every block without touching the generators (their states are being set)."""
        self.cursor[:] = self.BLOCK
        self.snapshots = [None] * len(self.generators)


class _PerUnitReducer:
    """Per-unit batch statistics of the activations, over all layers at once where possible.

    Activations are ``[*seeds, M, units]`` (dense layers) or ``[*seeds, M, units, P]``. When
    all are dense with the same M, they are concatenated once (``[*seeds, units]`` for a
    single example, else ``[*seeds, M, units]``) and each statistic is one op over all layers.
    """

    def __init__(self, activations: Sequence[Tensor], lead: int, dtype: torch.dtype) -> None:
        if any(h.dtype != dtype for h in activations):  # e.g. recorded under autocast
            activations = [h.to(dtype) for h in activations]
        self.activations = activations
        self.reduce = (lead, lead + 2)
        self.examples = examples = activations[0].shape[lead]
        self.single = examples == 1
        self.flat: Tensor | None = None
        if all(h.ndim == lead + 2 and h.shape[lead] == examples for h in activations):
            self.flat = torch.cat(list(activations), dim=-1)
            if self.single:
                self.flat = self.flat.squeeze(-2)

    @property
    def layers(self) -> list[Tensor]:
        """Per-layer activations as ``[*seeds, M, units, P]`` (the path without ``flat``)."""
        lead = self.reduce[0]
        return [h if h.ndim == lead + 3 else h.unsqueeze(-1) for h in self.activations]

    def mean(self) -> Tensor:
        if self.flat is None:
            return torch.cat([h.mean(self.reduce) for h in self.layers], dim=-1)
        return self.flat if self.single else _mean_over_examples(self.flat)

    def mean_abs(self) -> Tensor:
        if self.flat is None:
            return torch.cat([h.abs().mean(self.reduce) for h in self.layers], dim=-1)
        return self.flat.abs() if self.single else _mean_over_examples(self.flat.abs())

    def mean_abs_deviation(self, center: Tensor, spans: Sequence[slice]) -> Tensor:
        """``mean |h - center|`` per unit; ``center`` is ``[*seeds, units]``."""
        if self.flat is None:
            return torch.cat(
                [
                    h.sub(center[..., span].unsqueeze(-2).unsqueeze(-1)).abs_().mean(self.reduce)
                    for h, span in zip(self.layers, spans, strict=True)
                ],
                dim=-1,
            )
        if self.single:
            return self.flat.sub(center).abs_()
        return _mean_over_examples(self.flat.sub(center.unsqueeze(-2)).abs_())


_AVERAGING_ROWS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _mean_over_examples(values: Tensor) -> Tensor:
    """Mean over dimension -2 of ``[*seeds, M, units]``, as a product with a row of ``1/M``:
    on the CPU several times faster than a reduction over a non-contiguous dimension."""
    examples = values.shape[-2]
    key = (examples, values.dtype, values.device)
    row = _AVERAGING_ROWS.get(key)
    if row is None:
        row = _AVERAGING_ROWS.setdefault(
            key, torch.full((1, examples), 1.0 / examples, dtype=values.dtype, device=values.device)
        )
    return torch.matmul(row, values).squeeze(-2)


class _MagnitudePlan:
    """Mean absolute incoming and outgoing weight of every unit, as a fixed list of tensor ops.

    Each weight tensor is made absolute once per refresh and serves both the layer it feeds (its
    rows) and the layer it reads from (its columns); an update waiting for a weight is applied
    on the same pass, block by block. Large tensors go in blocks of about
    :data:`_BLOCK_BYTES` (:class:`_BlockedAbsolute`), so each block's absolute values are reduced
    while still in cache and the weights are read from memory once. One multiply per magnitude
    buffer turns the sums into means.
    """

    def __init__(self, core: GenerateAndTest, layouts: Sequence[UnitLayout], key: tuple) -> None:
        self.key = key
        self.keep = list(key)  # holding the tensors keeps their ids unique
        self.weights: dict[int, _BlockedAbsolute] = {}
        self.scales: list[_Scale] = []
        utility, lead = core.config.utility, core.lead
        for magnitude, needed, pick in (
            (core.in_magnitude, _NEEDS_IN_MAGNITUDE, _incoming_view),
            (core.out_magnitude, _NEEDS_OUT_MAGNITUDE, _outgoing_view),
        ):
            if utility not in needed:
                continue
            inverse_counts = torch.empty_like(magnitude)
            for layout, span in zip(layouts, core._slices, strict=True):
                base, viewed, unit_dim = pick(layout)
                dims = [d for d in range(lead, viewed.ndim) if d != unit_dim]
                blocked = self.weights.setdefault(id(base), _BlockedAbsolute(base))
                blocked.add_use(viewed.shape, dims, magnitude[..., span])
                inverse_counts[..., span] = 1.0 / math.prod(viewed.shape[d] for d in dims)
            self.scales.append(_Scale(magnitude, inverse_counts))

    def run(self, updates: dict[int, BlockUpdate]) -> None:
        """Refresh the magnitudes, applying (and dropping) the waiting updates of the weights
        read on the way, block by block."""
        for key, blocked in self.weights.items():
            blocked.reduce(updates.pop(key, None))
        for magnitude, inverse_counts in self.scales:
            magnitude.mul_(inverse_counts)


class _Scale(NamedTuple):
    """A magnitude buffer of sums, and the ``1 / count`` that turns it into means."""

    magnitude: Tensor
    inverse_counts: Tensor


_BLOCK_BYTES = 2 << 20


class _UseSpec(NamedTuple):
    """One sum of ``|weight|``: over ``dims`` of the weight viewed as ``shape``, into ``out``."""

    shape: tuple[int, ...]
    dims: list[int]
    out: Tensor


class _Use(NamedTuple):
    """A :class:`_UseSpec` with the position of the block dimension in ``out`` (None: summed)."""

    shape: tuple[int, ...]
    dims: list[int]
    out: Tensor
    position: int | None


class _BlockPlan(NamedTuple):
    """Blocks of ``size`` along ``dim``, a scratch block, and the sums to take of each."""

    dim: int
    size: int
    scratch: Tensor
    uses: list[_Use]


class _BlockedAbsolute:
    """Sums of ``|weight|`` over some dimensions, computed a cache-sized block at a time.

    Blocks run along the weight's largest dimension (dimension 0 when a use reshapes the weight,
    as a Linear read through a Flatten does; reshapes keep dimension 0). Sums over the block
    dimension accumulate across blocks; sums keeping it fill the matching slice of their output.
    """

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.uses: list[_UseSpec] = []
        self.plan: _BlockPlan | None = None

    def add_use(self, viewed_shape: torch.Size, dims: list[int], out: Tensor) -> None:
        self.uses.append(_UseSpec(tuple(viewed_shape), dims, out))

    def _make_plan(self) -> _BlockPlan:
        weight = self.weight
        reshaped = any(shape != tuple(weight.shape) for shape, _, _ in self.uses)
        dim = 0 if reshaped else max(range(weight.ndim), key=lambda d: weight.shape[d])
        row_bytes = weight.numel() // weight.shape[dim] * weight.element_size()
        size = max(1, min(weight.shape[dim], _BLOCK_BYTES // max(1, row_bytes)))
        scratch = torch.empty_like(
            weight.narrow(dim, 0, size), memory_format=torch.contiguous_format
        )
        uses = []
        for shape, dims, out in self.uses:
            kept = [d for d in range(len(shape)) if d not in dims]
            uses.append(_Use(shape, dims, out, kept.index(dim) if dim in kept else None))
        return _BlockPlan(dim, size, scratch, uses)

    def reduce(self, update: BlockUpdate | None = None) -> None:
        """Take the sums; with ``update``, first apply it to each block (then in cache)."""
        if self.plan is None:
            self.plan = self._make_plan()
        dim, size, scratch, uses = self.plan
        weight = self.weight
        length = weight.shape[dim]
        if update is not None and not update.exact_in_blocks(dim, size):
            update.apply(0, 0, weight.shape[0])
            update = None
        for start in range(0, length, size):
            count = min(size, length - start)
            block = scratch if count == size else scratch.narrow(dim, 0, count)
            if update is not None:
                update.apply(dim, start, count)
            torch.abs(weight.narrow(dim, start, count), out=block)
            for shape, dims, out, position in uses:
                viewed = block if shape == tuple(weight.shape) else block.view(count, *shape[1:])
                if position is not None:
                    if count == length:
                        torch.sum(viewed, dim=dims, out=out)
                    else:
                        out.narrow(position, start, count).copy_(viewed.sum(dim=dims))
                elif start == 0:
                    torch.sum(viewed, dim=dims, out=out)
                else:
                    out.add_(viewed.sum(dim=dims))


def _incoming_view(layout: UnitLayout) -> tuple[Tensor, Tensor, int]:
    return layout.in_weight, layout.in_weight, layout.in_unit_dim


def _outgoing_view(layout: UnitLayout) -> tuple[Tensor, Tensor, int]:
    return layout.out_weight, layout.outgoing(), layout.out_unit_dim


def _magnitudes_due(step: int, every: int) -> bool:
    """Magnitudes are recomputed at step 1 and at every multiple of ``every``."""
    return step == 1 or step % every == 0


def _seed_list(seeds: Sequence[int] | int | None, count: int) -> list[int]:
    if seeds is None:
        base = int(torch.randint(0, 2**62, (1,)).item())
        return [base + i for i in range(count)]
    if isinstance(seeds, int):
        return [seeds + i for i in range(count)]
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} seed slots")
    return [int(s) for s in seeds]


def _sync_before_save(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    assert isinstance(module, GenerateAndTest)
    module._sync_host_to_buffers()


def _mark_stale_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, GenerateAndTest)
    module._book.stale = True


# --------------------------------------------------------------------------------- module
def layout_of(layer: HiddenLayer, bound: float) -> UnitLayout:
    """The :class:`UnitLayout` of a hidden layer of an ``nn.Module``."""
    out_viewed, out_unit_dim = layer.outgoing_weight_view()
    out_weight = layer.outgoing.weight
    out_view = None if out_viewed.shape == out_weight.shape else tuple(out_viewed.shape)
    resets: list[NormReset] = []
    norm = layer.norm
    if norm is not None:
        for name, value in (("weight", 1.0), ("bias", 0.0)):
            if isinstance(tensor := getattr(norm, name, None), Tensor):
                resets.append(NormReset(tensor, value))
        if isinstance(norm, BATCH_NORMS):
            if isinstance(norm.running_mean, Tensor):
                resets.append(NormReset(norm.running_mean, 0.0))
            if isinstance(norm.running_var, Tensor):
                resets.append(NormReset(norm.running_var, 1.0))
    return UnitLayout(
        in_weight=layer.incoming.weight,
        in_unit_dim=0,
        in_bias=layer.incoming.bias,
        out_weight=out_weight,
        out_unit_dim=out_unit_dim,
        bound=bound,
        out_bias=layer.outgoing.bias,
        norm_resets=resets,
        out_view=out_view,
        nonnegative=layer.nonnegative,
    )


def reset_units_optimizer_state(
    optimizer: torch.optim.Optimizer, layer: HiddenLayer, units: Tensor
) -> None:
    """Zero the optimizer state of replaced units: incoming rows and bias, outgoing columns."""
    reset_unit_state(optimizer, layer.incoming.weight, 0, units)
    if layer.incoming.bias is not None:
        reset_unit_state(optimizer, layer.incoming.bias, 0, units)
    out_shape = layer.outgoing_weight_view()[0].shape
    reset_unit_state(optimizer, layer.outgoing.weight, 1, units, view_shape=out_shape)


def check_optimizer_reset(
    optimizer: torch.optim.Optimizer | None, reset_optimizer_state: bool | None
) -> bool:
    """Resolve the optimizer-reset policy; ``None`` resets only a :class:`ResettableAdam`."""
    if reset_optimizer_state is None:
        return isinstance(optimizer, ResettableAdam)
    if reset_optimizer_state:
        if optimizer is None:
            raise ValueError("reset_optimizer_state=True needs the optimizer: pass it as `opt`")
        if not isinstance(optimizer, RESETTABLE_OPTIMIZERS):
            names = ", ".join(t.__name__ for t in RESETTABLE_OPTIMIZERS)
            raise ValueError(
                f"cannot reset the state of {type(optimizer).__name__}; supported: {names}"
            )
    return bool(reset_optimizer_state)


class ContinualBackprop(GenerateAndTest):
    """Continual backpropagation for the hidden layers of any network.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.01)
        >>> cbp = ContinualBackprop(net, opt, replacement_rate=1e-4, maturity_threshold=100)
        >>> loss = net(torch.randn(3, 4)).pow(2).mean()
        >>> opt.zero_grad(); loss.backward(); opt.step()
        >>> cbp.step()   # generate-and-test on the activations of that forward pass
        0

    With ``example_inputs`` the hidden layers are found from one traced forward pass, in any
    network (see :mod:`cbp_rl.discovery`); with ``auto_step=True`` CBP steps itself after every
    ``opt.step()``:

    >>> class Residual(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.inp, self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 16), nn.Linear(16, 8)
    ...         self.head = nn.Linear(8, 2)
    ...     def forward(self, x: Tensor) -> Tensor:
    ...         h = torch.relu(self.inp(x))
    ...         h = h + self.fc2(torch.nn.functional.gelu(self.fc1(h)))
    ...         return self.head(h)
    >>> net = Residual()
    >>> opt = torch.optim.Adam(net.parameters())
    >>> cbp = ContinualBackprop(net, opt, example_inputs=torch.zeros(1, 4), auto_step=True)
    >>> print(*(layer.name for layer in cbp.hidden_layers))
    fc1
    >>> print(*(item.name for item in cbp.left_out))
    inp fc2 head
    >>> net(torch.randn(3, 4)).sum().backward(); opt.step()   # CBP steps here
    >>> cbp.step_count
    1

    Without ``example_inputs``, hidden layers are found in plain ``nn.Sequential`` chains (Linear
    or conv, optional norm, an activation module, then the next Linear or conv, across a Flatten
    too); other networks are refused, naming ``example_inputs``. ``layers=[(incoming,
    activation, outgoing[, norm]), ...]`` gives them explicitly. ``residual_stream=
    "reference_chain"`` reproduces the reference's ResNet chain (its ``res_gnt.py``): every conv
    in registration order (downsample paths skipped) is a hidden layer read by the next one, the
    block outputs included; replacing a block-output unit changes the network's function at that
    moment (the identity path still carries it).

    The hyperparameters are :class:`CBPConfig`'s fields, given as ``config=`` and/or as
    keywords (``replacement_rate=1e-4``, ...). The defaults follow the reference code: no
    optimizer reset except with :class:`~cbp_rl.optim.ResettableAdam`, and the reference's no-op
    bias compensation (``bias_compensation=True`` makes it real). ``hidden_layers`` lists the
    hidden layers, ``left_out`` the weight layers that are not (with the reason).
    """

    def __init__(
        self,
        net: nn.Module,
        opt: torch.optim.Optimizer | None = None,
        *,
        config: CBPConfig | None = None,
        example_inputs: ExampleInputs | None = None,
        example_call: Callable[..., Any] | None = None,
        layers: Sequence[LayerSpec] | None = None,
        residual_stream: str = "leave_out",
        auto_step: bool = False,
        reset_optimizer_state: bool | None = None,
        seed: int | None = None,
        **hyperparameters: Any,
    ) -> None:
        config = make_config(config, **hyperparameters)
        if auto_step and opt is None:
            raise ValueError("auto_step=True steps CBP after opt.step(): pass the optimizer")
        found = find_hidden_layers(
            net,
            layers=layers,
            example_inputs=example_inputs,
            example_call=example_call,
            residual_stream=residual_stream,
        )
        hidden = found.hidden
        weight = hidden[0].incoming.weight
        super().__init__(
            [layer.num_units for layer in hidden],
            config,
            seeds=None if seed is None else [seed],
            device=weight.device,
            dtype=weight.dtype,
        )
        self.hidden_layers: tuple[HiddenLayer, ...] = hidden
        self.left_out: tuple[LeftOut, ...] = found.left_out
        self.residual_stream = residual_stream
        self.optimizer = opt
        self.reset_optimizer = check_optimizer_reset(opt, reset_optimizer_state)
        self.bounds = tuple(replacement_bound(layer, config.init) for layer in hidden)
        self._check_finite = True
        self._recorder = ActivationRecorder(hidden)
        self._layout_key: tuple[int, ...] = ()
        modules = [m for layer in hidden for m in (layer.incoming, layer.outgoing, layer.norm)]
        self._layer_modules = list({id(m): m for m in modules if m is not None}.values())
        self._layout_cache: list[UnitLayout] = []
        self._step_hook = (
            opt.register_step_post_hook(self._after_optimizer_step)
            if auto_step and opt is not None
            else None
        )

    def extra_repr(self) -> str:
        cfg = self.config
        names = ", ".join(
            f"{layer.name or i}:{layer.num_units}" for i, layer in enumerate(self.hidden_layers)
        )
        return (
            f"layers=[{names}], replacement_rate={cfg.replacement_rate}, "
            f"maturity_threshold={cfg.maturity_threshold}, decay_rate={cfg.decay_rate}, "
            f"utility={cfg.utility!r}, init={cfg.init!r}, accumulate={cfg.accumulate}"
        )

    def _after_optimizer_step(self, *_: Any) -> None:
        self.step()

    def step(self) -> int:
        """Generate-and-test on the latest forward pass; returns the number of units replaced."""
        activations = self._recorder.latest()
        self._recorder.clear()
        layouts = self._layouts()
        self._follow_device(layouts)
        replaced = self.generate_and_test(activations, layouts)
        if self.reset_optimizer and self.optimizer is not None:
            for event in replaced:
                reset_units_optimizer_state(
                    self.optimizer, self.hidden_layers[event.layer], event.units
                )
        return sum(len(event.units) for event in replaced)

    def _layouts(self) -> list[UnitLayout]:
        """The layouts, rebuilt only when a parameter or buffer object was swapped."""
        key = tuple(
            id(t)
            for module in self._layer_modules
            for table in (module._parameters, module._buffers)
            for t in table.values()
        )
        if key != self._layout_key:
            self._layout_cache = [
                layout_of(layer, bound)
                for layer, bound in zip(self.hidden_layers, self.bounds, strict=True)
            ]
            self._layout_key = key
        return self._layout_cache

    def _follow_device(self, layouts: Sequence[UnitLayout]) -> None:
        utility = self._buffers["utility"]
        if utility is not None and utility.device != layouts[0].in_weight.device:
            self.to(layouts[0].in_weight.device)

    def remove(self) -> None:
        """Detach from the network and the optimizer (the forward hooks and the step hook)."""
        self._recorder.remove()
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None


def replacement_bound(layer: HiddenLayer, init: str) -> float:
    """Half-width of the uniform distribution of a hidden layer's new incoming weights."""
    fan_in, fan_out = fan_in_out(layer.incoming)
    return init_bound(init, fan_in, fan_out, layer.gain)


__all__ = [
    "INIT_NAMES",
    "UTILITY_NAMES",
    "BlockUpdate",
    "CBPConfig",
    "ContinualBackprop",
    "GenerateAndTest",
    "LayerPlan",
    "NormReset",
    "Replacement",
    "UnitLayout",
    "layout_of",
    "make_config",
    "reinit_units",
]
