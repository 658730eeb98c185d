"""The online permuted-MNIST stream: per seed, a sequence of tasks, each a pixel permutation.

Every task draws, for each seed, a fixed random permutation of the 784 pixels and an order of
the examples (shuffled, each shown once; a task longer than the data set shows it again in a
fresh order per pass). Each seed has its own generator, so seed ``s`` of a batched run sees
exactly the stream of a single run with seed ``s``. A permuted image is
``x_perm[i] = x[permutation[i]]``; the first task is permuted too, as in the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from cbp_rl.run.checkpoint import restore_torch_generator, torch_generator_state
from cbp_rl.run.seeding import derive_seed

STREAMS = ("init", "data", "cbp", "dropout", "noise", "redo", "target", "probe", "method")
"""Named random streams of one seed; each gets its own generator seeded by :func:`stream_seed`."""


def stream_seed(seed: int, stream: str) -> int:
    """The 63-bit seed of one random ``stream`` of run seed ``seed``: the numbered stream
    ``STREAMS.index(stream)`` of :func:`cbp_rl.run.seeding.derive_seed`, so streams never share
    draws and a run's stream does not depend on how many seeds run beside it."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    return derive_seed(seed, STREAMS.index(stream))


def generators_for(seeds: Sequence[int], stream: str) -> list[torch.Generator]:
    """One CPU generator per seed for ``stream``."""
    return [torch.Generator().manual_seed(stream_seed(s, stream)) for s in seeds]


def generators_state(generators: Sequence[torch.Generator]) -> list[dict[str, Any]]:
    """The states of per-seed generators, for a checkpoint (:func:`load_generators`)."""
    return [torch_generator_state(g) for g in generators]


def load_generators(
    generators: Sequence[torch.Generator], saved: Sequence[Mapping[str, Any]]
) -> None:
    """Restore per-seed data generators from :func:`generators_state`, refusing another count."""
    if len(saved) != len(generators):
        raise ValueError(f"state has {len(saved)} data generators for {len(generators)} seeds")
    for generator, generator_state in zip(generators, saved, strict=True):
        restore_torch_generator(generator, generator_state)


class TaskPlan(NamedTuple):
    """One task for every seed."""

    permutations: Tensor
    """``[S, pixels]`` int64: the pixel permutation of each seed."""
    orders: Tensor
    """``[S, examples_per_task]`` int64: indices of the examples, in presentation order."""


class PermutedTasks:
    """Draws the tasks of S seeds and cuts their examples into batches.

    Args:
        images: ``[N, pixels]`` float32 images (any device).
        labels: ``[N]`` int64 labels.
        seeds: the run seeds.
        examples_per_task: examples shown per task (the permutation changes after these).
    """

    def __init__(
        self, images: Tensor, labels: Tensor, seeds: Sequence[int], examples_per_task: int
    ) -> None:
        if images.ndim != 2 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"images must be [N, pixels] with labels [N], got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if examples_per_task < 1:
            raise ValueError(f"examples_per_task must be >= 1, got {examples_per_task}")
        self.images = images
        self.labels = labels
        self.seeds = list(seeds)
        self.examples_per_task = int(examples_per_task)
        self._generators = generators_for(self.seeds, "data")

    @property
    def pixels(self) -> int:
        return int(self.images.shape[1])

    def next_task(self) -> TaskPlan:
        """Draw the next task of every seed (advances each seed's generator)."""
        permutations, orders = [], []
        for generator in self._generators:
            permutations.append(torch.randperm(self.pixels, generator=generator))
            orders.append(self._order(generator))
        device = self.images.device
        return TaskPlan(torch.stack(permutations).to(device), torch.stack(orders).to(device))

    def _order(self, generator: torch.Generator) -> Tensor:
        count = len(self.images)
        passes = -(-self.examples_per_task // count)
        order = torch.cat([torch.randperm(count, generator=generator) for _ in range(passes)])
        return order[: self.examples_per_task]

    def batch(self, plan: TaskPlan, start: int, count: int) -> tuple[Tensor, Tensor]:
        """Examples ``start .. start+count`` of the task: inputs ``[S, count, pixels]``
        (permuted) and labels ``[S, count]``."""
        index = plan.orders[:, start : start + count]
        inputs = self.images[index]
        permutation = plan.permutations.unsqueeze(1).expand(-1, index.shape[1], -1)
        return torch.gather(inputs, 2, permutation), self.labels[index]

    def state_dict(self) -> dict[str, Any]:
        return {"generators": generators_state(self._generators)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_generators(self._generators, state["generators"])


__all__ = [
    "STREAMS",
    "PermutedTasks",
    "TaskPlan",
    "generators_for",
    "generators_state",
    "load_generators",
    "stream_seed",
]
