"""Small data sets in exactly the real formats, written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

IMAGENET_FLAGS = [
    "--epochs", "2", "--train-per-class", "20", "--test-per-class", "10", "--batch-size", "10",
    "--no-progress", "--threads", "1",
]  # fmt: skip
"""A tiny ``continual-imagenet`` run on :func:`write_imagenet_classes`' files."""
CIFAR_FLAGS = [
    "--no-verify-data", "--no-download", "--first-classes", "2", "--classes-per-task", "2",
    "--total-classes", "4", "--train-per-class", "2", "--validation-per-class", "1",
    "--batch-size", "4", "--no-progress", "--threads", "1",
]  # fmt: skip
"""A tiny ``incremental-cifar`` run (2 tasks of 2 classes) on :func:`write_cifar100`'s files
with ``train_per_class=3``."""


def write_imagenet_classes(
    directory: Path,
    classes: int,
    *,
    channels_last: bool = False,
    dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """``directory/<class>.npy``: 700 32x32 RGB images per class, each class a distinct bright
    blob on noise (learnable in a few steps)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        images = rng.random((700, 3, 32, 32), dtype=np.float32) * 0.3
        row, col = divmod(c % 16, 4)
        images[:, c % 3, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 0.7
        if dtype == "uint8":
            images = np.round(images * 255).astype(np.uint8)  # type: ignore[assignment]
        if channels_last:
            images = np.moveaxis(images, 1, -1)
        np.save(directory / f"{c}.npy", images)
    return directory


def write_cifar100(directory: Path, *, train_per_class: int, test_per_class: int) -> Path:
    """A miniature ``cifar-100-python`` (``train``, ``test``, ``meta`` pickles, the official
    layout: ``data`` uint8 ``[N, 3072]`` as R, G, B planes, ``fine_labels`` a list)."""
    folder = directory / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 80, (len(labels), 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            data[i, label % 3, (label // 3) % 32, :] = 255
        content = {
            "filenames": [f"{name}_{i}.png" for i in range(len(labels))],
            "batch_label": f"{name} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": data.reshape(len(labels), -1),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    meta = {
        "fine_label_names": [f"class{i}" for i in range(100)],
        "coarse_label_names": [f"super{i}" for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return directory
