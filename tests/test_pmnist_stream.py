"""The permuted task stream and the per-seed random streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbp_rl.supervised.stream import STREAMS, PermutedTasks, stream_seed

pytestmark = pytest.mark.usefixtures("single_thread")


def stream(seeds: list[int], per_task: int = 50, count: int = 40) -> PermutedTasks:
    images = torch.arange(count * 784, dtype=torch.float32).view(count, 784)
    labels = torch.arange(count) % 10
    return PermutedTasks(images, labels, seeds, per_task)


def test_permutation_is_a_bijection_fixed_within_a_task() -> None:
    tasks = stream([0, 1], per_task=40)
    plan = tasks.next_task()
    for permutation in plan.permutations:
        assert sorted(permutation.tolist()) == list(range(784))
    first, _ = tasks.batch(plan, 0, 10)
    later, _ = tasks.batch(plan, 20, 20)
    for s in range(2):
        for inputs, start in ((first, 0), (later, 20)):
            for i in range(inputs.shape[1]):
                index = int(plan.orders[s, start + i])
                original = tasks.images[index]
                # every example of the task is permuted by the same permutation
                assert torch.equal(inputs[s, i], original[plan.permutations[s]])
    assert not torch.equal(plan.permutations[0], plan.permutations[1])
    assert not torch.equal(tasks.next_task().permutations[0], plan.permutations[0])


def test_each_example_once_per_task_and_labels_follow() -> None:
    tasks = stream([3], per_task=40, count=40)
    plan = tasks.next_task()
    assert sorted(plan.orders[0].tolist()) == list(range(40))
    _, labels = tasks.batch(plan, 0, 40)
    assert torch.equal(labels[0], tasks.labels[plan.orders[0]])
    # a task longer than the data shows it again, in a new order
    long = stream([3], per_task=100, count=40).next_task()
    counts = np.bincount(long.orders[0].numpy(), minlength=40)
    assert counts.min() >= 2 and counts.max() <= 3
    assert not torch.equal(long.orders[0, :40], long.orders[0, 40:80])


def test_seed_streams_do_not_depend_on_the_other_seeds() -> None:
    together = stream([4, 5, 6])
    alone = stream([5])
    for _ in range(3):
        a, b = together.next_task(), alone.next_task()
        assert torch.equal(a.permutations[1], b.permutations[0])
        assert torch.equal(a.orders[1], b.orders[0])


def test_stream_state_round_trip() -> None:
    tasks = stream([0, 1])
    tasks.next_task()
    state = tasks.state_dict()
    expected = tasks.next_task()
    other = stream([0, 1])
    other.load_state_dict(state)
    got = other.next_task()
    assert torch.equal(got.permutations, expected.permutations)
    assert torch.equal(got.orders, expected.orders)


def test_derived_seeds_are_distinct_and_stable() -> None:
    values = {stream_seed(s, name) for s in range(20) for name in STREAMS}
    assert len(values) == 20 * len(STREAMS)
    assert stream_seed(7, "cbp") == stream_seed(7, "cbp")
    assert 0 <= stream_seed(7, "cbp") < 2**63
    with pytest.raises(ValueError, match="random stream"):
        stream_seed(0, "weights")
