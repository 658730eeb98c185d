"""Shared fixtures: where the real MNIST test set lives (``shared/data/mnist`` beside the project).

The directory is ``$CBP_RL_MNIST_DIR`` if set, else the first ``shared/data/mnist`` found in
the project's parent directories (``../shared/data/mnist`` for a checkout next to ``shared``,
``../../shared/data/mnist`` for a worktree one level deeper). The digits are read with the
project's own loader, which checks their md5.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cbp_rl.supervised.data import load_images

ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def mnist_directory() -> Path:
    """``$CBP_RL_MNIST_DIR``, else the nearest ``shared/data/mnist`` above the project."""
    if "CBP_RL_MNIST_DIR" in os.environ:
        return Path(os.environ["CBP_RL_MNIST_DIR"])
    for parent in ROOT.parents:
        candidate = parent / "shared" / "data" / "mnist"
        if (candidate / MNIST_FILES[0]).exists():
            return candidate
    return ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    directory = mnist_directory()
    if not all((directory / name).exists() for name in MNIST_FILES):
        pytest.fail(
            f"the MNIST test set is not in {directory}: put t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz there or set CBP_RL_MNIST_DIR"
        )
    return directory


@pytest.fixture(scope="session")
def mnist_digits(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real test digits: images ``[10000, 784]`` in [0, 1], labels ``[10000]``."""
    digits = load_images("mnist", mnist_dir, split="test", download=False)
    return digits.images, digits.labels


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test with one torch thread (restored afterwards).

    Batch-1 training is a long chain of small ops; with two OpenMP threads on a machine whose
    other core is busy, each op waits for the descheduled thread and a test can run 100x
    slower. ``pytestmark = pytest.mark.usefixtures("single_thread")`` opts a module in.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
