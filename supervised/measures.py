"""The thesis's correlates of plasticity, measured at the start of each task on a probe batch.

For every seed and hidden layer, on the activations of (by default) 2,000 examples of the new
task, with :mod:`cbp_rl.metrics`:

* ``dead_units``: fraction of units whose output is 0 on every probe example;
* ``effective_rank``: ``exp(entropy(s / sum(s)))`` over the activation matrix's singular values;
* ``rank99``: the fewest singular values keeping 99% of their sum;
* ``weight_magnitude``: mean ``|W|`` of each layer's incoming weights and of the output layer
  (the last entry), and ``weight_magnitude_all`` over every weight of the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from cbp_rl.metrics import (
    approximate_rank_from_singular_values,
    dead_unit_fraction,
    effective_rank_from_singular_values,
    mean_abs_weight,
    mean_abs_weight_per_layer,
    singular_values,
)

UNIT_MEASURES = ("dead_units", "effective_rank", "rank99")
"""Measures with one value per hidden layer."""


def unit_measures(hidden: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """Dead-unit fraction, effective rank and 99% rank, each ``[S, layers]``.

    ``hidden[l]`` is layer ``l``'s activations ``[S, M, units]`` on M probe examples.
    """
    seeds, layers = hidden[0].shape[0], len(hidden)
    out = {name: np.zeros((seeds, layers)) for name in UNIT_MEASURES}
    for layer, activations in enumerate(hidden):
        for s in range(seeds):
            matrix = activations[s]
            values = singular_values(matrix)
            out["dead_units"][s, layer] = dead_unit_fraction(matrix)
            out["effective_rank"][s, layer] = effective_rank_from_singular_values(values)
            out["rank99"][s, layer] = approximate_rank_from_singular_values(values, 0.99)
    return out


def weight_measures(weights: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """``weight_magnitude`` ``[S, layers + 1]`` (incoming weights of each hidden layer, then the
    output layer) and ``weight_magnitude_all`` ``[S]``, from stacked ``[S, in, out]`` weights."""
    seeds = weights[0].shape[0]
    per_layer = np.zeros((seeds, len(weights)))
    overall = np.zeros(seeds)
    for s in range(seeds):
        mine = [w[s] for w in weights]
        per_layer[s] = mean_abs_weight_per_layer(mine)
        overall[s] = mean_abs_weight(mine)
    return {"weight_magnitude": per_layer, "weight_magnitude_all": overall}


__all__ = ["UNIT_MEASURES", "unit_measures", "weight_measures"]
