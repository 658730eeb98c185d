"""Shared fixtures: where the real MNIST test set lives (``../shared/data/mnist``)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def mnist_directory() -> Path:
    """``$CBP_RL_MNIST_DIR`` or ``../shared/data/mnist`` beside the project."""
    return Path(os.environ.get("CBP_RL_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    directory = mnist_directory()
    if not (directory / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"the MNIST test set is not in {directory}: put t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz there or set CBP_RL_MNIST_DIR"
        )
    return directory


@pytest.fixture(scope="session")
def mnist_digits(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real test digits: images ``[10000, 784]`` in [0, 1], labels ``[10000]``."""
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)
