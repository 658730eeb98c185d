"""The task-start measures on hand-made activations and weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cbp_rl.supervised.measures import unit_measures, weight_measures

pytestmark = pytest.mark.usefixtures("single_thread")


def test_unit_measures_on_hand_made_activations() -> None:
    # seed 0: 4 examples x 4 units; unit 3 never fires, units 0-2 are orthogonal with equal
    # norms (singular values 2, 2, 2, 0): effective rank 3, 99% rank 3, 1/4 dead
    identity = torch.zeros(4, 4)
    identity[0, 0] = identity[1, 1] = identity[2, 2] = 2.0
    # seed 1: rank one (every example the same pattern): effective rank 1, no dead unit
    rank_one = torch.ones(4, 1) @ torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    hidden = [torch.stack([identity, rank_one]), torch.stack([rank_one, identity])]
    measures = unit_measures(hidden)
    np.testing.assert_allclose(measures["dead_units"], [[0.25, 0.0], [0.0, 0.25]])
    np.testing.assert_allclose(measures["effective_rank"], [[3.0, 1.0], [1.0, 3.0]], atol=1e-6)
    np.testing.assert_allclose(measures["rank99"], [[3, 1], [1, 3]])


def test_effective_rank_of_unequal_singular_values() -> None:
    # diagonal activations: singular values 3 and 1 -> p = (3/4, 1/4)
    acts = torch.diag(torch.tensor([3.0, 1.0])).unsqueeze(0)
    measures = unit_measures([acts])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(measures["effective_rank"][0, 0], math.exp(entropy), rel_tol=1e-9)
    assert measures["rank99"][0, 0] == 2  # 3 alone keeps only 75%


def test_weight_measures_per_layer_and_overall() -> None:
    first = torch.tensor([[[1.0, -1.0], [3.0, -3.0]]])  # [1, in=2, out=2], mean |w| = 2
    second = torch.tensor([[[0.5], [-0.5]]])  # [1, 2, 1], mean |w| = 0.5
    measures = weight_measures([first, second])
    np.testing.assert_allclose(measures["weight_magnitude"], [[2.0, 0.5]])
    # overall: (8 + 1) / 6 weights
    np.testing.assert_allclose(measures["weight_magnitude_all"], [9.0 / 6.0])
