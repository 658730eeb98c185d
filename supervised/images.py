"""The two image datasets of the convolutional experiments: find, check, load.

* **Downsampled ImageNet, one file per class** (continual ImageNet, Dohare et al. 2024): a
  directory of ``<class>.npy`` files, each holding that class's 700 32x32 RGB images, the first
  600 for training and the last 100 for testing. The reference repository links the archive
  (about 1000 class files) from its ``lop/imagenet/README.md`` (a Google Drive file, made from
  the 32x32 downsampled ImageNet of Chrabaszcz et al. 2017); it is not downloadable here.
  Every file is checked (shape, dtype, image count) from its ``.npy`` header before a run
  starts; each task then loads only its own classes. Images may be stored channel-first
  ``[700, 3, 32, 32]`` or channel-last ``[700, 32, 32, 3]``, as uint8 or float; the network
  gets channel-first float32 with the stored values unchanged (the reference casts the arrays
  to float and feeds them as they are: no scaling to [0, 1], no normalization, no
  augmentation).
* **CIFAR-100, the python version** (class-incremental CIFAR): the ``cifar-100-python``
  directory of the official archive (``train``, ``test`` and ``meta`` pickles), as the
  reference reads it and as torchvision keeps it under its ``root``. Found in ``--data-dir``
  (the directory itself, or its ``cifar-100-python`` subfolder), ``$CBP_RL_DATA_DIR`` or the
  cache ``~/.cache/cbp_rl/cifar-100``, downloaded there (md5-checked) when missing and a
  network exists. The pickles are read with an unpickler that builds only dicts, lists, strings
  and numpy arrays.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbp_rl.supervised.data import (
    DATA_DIR_ENV,
    ChecksumError,
    DataUnavailableError,
    default_cache_dir,
)

IMAGES_PER_CLASS = 700
TRAIN_IMAGES_PER_CLASS = 600
IMAGE_SHAPE = (3, 32, 32)
IMAGENET_SOURCE = (
    "the reference's per-class archive, linked from lop/imagenet/README.md of "
    "github.com/shibhansh/loss-of-plasticity (extract it so that DIR/<class>.npy exist)"
)


class DataFormatError(ValueError):
    """A data file exists but does not hold what the experiment needs; the message says why."""


# --------------------------------------------------------------------------- ImageNet


@dataclass(frozen=True)
class ClassFile:
    """One checked ``<class>.npy`` file."""

    name: str
    path: Path
    channels_last: bool


def _class_key(path: Path) -> tuple[int, int | str]:
    stem = path.stem
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def check_class_file(path: Path) -> ClassFile:
    """Check one class file's header: ``[700, 3, 32, 32]`` or ``[700, 32, 32, 3]``, uint8 or
    float. Raises :class:`DataFormatError` naming the file and the fix."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataFormatError(
            f"{path} is not a readable .npy array ({err}). Fix: replace it with the class file "
            f"from {IMAGENET_SOURCE}"
        ) from err
    shape, dtype = tuple(array.shape), array.dtype
    del array
    last = (IMAGES_PER_CLASS, *IMAGE_SHAPE[1:], IMAGE_SHAPE[0])
    first = (IMAGES_PER_CLASS, *IMAGE_SHAPE)
    problem = None
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        problem = f"has dtype {dtype}, expected uint8 or a float type"
    elif len(shape) != 4 or shape[1:] not in (first[1:], last[1:]):
        problem = f"has shape {shape}, expected {first} (channel-first) or {last} (channel-last)"
    elif shape[0] != IMAGES_PER_CLASS:
        problem = (
            f"holds {shape[0]} images, expected {IMAGES_PER_CLASS} "
            f"({TRAIN_IMAGES_PER_CLASS} train, then {IMAGES_PER_CLASS - TRAIN_IMAGES_PER_CLASS} "
            "test)"
        )
    if problem is not None:
        raise DataFormatError(
            f"{path} {problem}. Fix: use the per-class files of {IMAGENET_SOURCE}, or write "
            f"each class as a {first} array"
        )
    return ClassFile(path.stem, path, channels_last=shape[1:] == last[1:])


def find_class_files(data_dir: str | os.PathLike[str] | None) -> list[ClassFile]:
    """All ``<class>.npy`` files of the ImageNet directory, checked, in class order (numeric
    names by value, then the others by name)."""
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        data_dir = Path(env) / "imagenet32" if env else default_cache_dir("imagenet32")
    directory = Path(data_dir)
    if (directory / "classes").is_dir() and not any(directory.glob("*.npy")):
        directory = directory / "classes"  # the reference's data/classes/ layout
    paths = sorted(directory.glob("*.npy"), key=_class_key) if directory.is_dir() else []
    if len(paths) < 2:
        raise DataUnavailableError(
            f"no per-class ImageNet files in {directory} (found {len(paths)} <class>.npy; a "
            f"task needs at least 2 classes). Fix: pass --data-dir DIR (or set "
            f"{DATA_DIR_ENV}=PARENT with PARENT/imagenet32/) for a directory of <class>.npy files "
            f"with {IMAGES_PER_CLASS} 32x32 RGB images each: {IMAGENET_SOURCE}. No download "
            "exists for it."
        )
    return [check_class_file(path) for path in paths]


def load_class_images(file: ClassFile) -> np.ndarray:
    """A class file's images as channel-first float32 ``[700, 3, 32, 32]``, values as stored."""
    array = np.load(file.path, allow_pickle=False)
    if file.channels_last:
        array = np.moveaxis(array, -1, 1)
    return np.ascontiguousarray(array, dtype=np.float32)


def identify_files(files: Sequence[ClassFile]) -> dict[str, Any]:
    """What identifies a directory of class files in a checkpoint: names and sizes."""
    return {
        "classes": [f.name for f in files],
        "bytes": sum(f.path.stat().st_size for f in files),
    }


# --------------------------------------------------------------------------- CIFAR-100

CIFAR_FOLDER = "cifar-100-python"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR_ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR_FILE_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
CIFAR_CLASSES = 100


@dataclass(frozen=True)
class CifarSplit:
    """One split of CIFAR-100: images channel-first uint8 and fine labels."""

    images: np.ndarray
    """``[N, 3, 32, 32]`` uint8 (the pickle's rows are R, G and B planes of 32x32)."""
    labels: np.ndarray
    """``[N]`` int64 fine labels in ``0..99``."""


@dataclass(frozen=True)
class CifarData:
    train: CifarSplit
    test: CifarSplit
    class_names: tuple[str, ...]
    directory: Path
    md5: dict[str, str]
    """md5 of each file read (identifies the data in checkpoints)."""


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _DataUnpickler(pickle.Unpickler):
    """Builds only plain containers and numpy arrays: a data file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(path: Path, data: bytes) -> dict[str, Any]:
    try:
        value = _DataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataFormatError(
            f"{path} is not a CIFAR-100 python pickle ({err}). Fix: replace it with the file "
            f"from {CIFAR_URL}"
        ) from err
    if not isinstance(value, dict):
        raise DataFormatError(f"{path} holds a {type(value).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in value.items()}


def _split_of(path: Path, content: dict[str, Any]) -> CifarSplit:
    fix = f"Fix: replace {path.name} with the one of {CIFAR_URL}"
    if "data" not in content or "fine_labels" not in content:
        raise DataFormatError(f"{path} has no 'data' / 'fine_labels' entries. {fix}")
    data = np.asarray(content["data"])
    labels = np.asarray(content["fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]. {fix}"
        )
    if labels.shape != (data.shape[0],):
        raise DataFormatError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images. {fix}")
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR_CLASSES):
        raise DataFormatError(f"{path}: labels outside 0..{CIFAR_CLASSES - 1}. {fix}")
    counts = np.bincount(labels, minlength=CIFAR_CLASSES)
    if counts.min() == 0 or counts.min() != counts.max():
        raise DataFormatError(
            f"{path}: classes hold {counts.min()} to {counts.max()} images; every one of the "
            f"{CIFAR_CLASSES} classes needs the same number. {fix}"
        )
    return CifarSplit(data.reshape(-1, *IMAGE_SHAPE), labels)


def cifar_search_dirs(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Where ``cifar-100-python`` is looked for (the directory itself, then its subfolder)."""
    if data_dir is not None:
        base = Path(data_dir)
    elif os.environ.get(DATA_DIR_ENV):
        base = Path(os.environ[DATA_DIR_ENV])
    else:
        base = default_cache_dir("cifar-100")
    return [base / CIFAR_FOLDER, base]


def _found(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CIFAR_FILE_MD5)


Fetch = Callable[[str, Path, float], None]


def _urlopen_to(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out)


def download_cifar100(base: Path, *, timeout: float = 60.0, fetch: Fetch = _urlopen_to) -> Path:
    """Download and unpack the official archive into ``base/cifar-100-python`` (md5-checked)."""
    base.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=base, prefix=".cifar-100-python.", suffix=".tar.gz")
    os.close(fd)
    archive = Path(name)
    try:
        fetch(CIFAR_URL, archive, timeout)
        digest = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
        if digest != CIFAR_ARCHIVE_MD5:
            raise ChecksumError(f"{CIFAR_URL}: md5 {digest}, expected {CIFAR_ARCHIVE_MD5}")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(base, filter="data")
    finally:
        archive.unlink(missing_ok=True)
    return base / CIFAR_FOLDER


def load_cifar100(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    fetch: Fetch = _urlopen_to,
) -> CifarData:
    """Find (or download), check and load CIFAR-100's train and test splits.

    ``verify`` checks every file against the official md5 (turn it off for a home-made
    miniature in the same format); the structure (uint8 ``[N, 3072]`` data, one fine label per
    image, the same number of images in each of the 100 classes) is always checked.
    """
    dirs = cifar_search_dirs(data_dir)
    directory = next((d for d in dirs if _found(d)), None)
    download_error = ""
    if directory is None and download:
        try:
            directory = download_cifar100(dirs[1], fetch=fetch)
        except (urllib.error.URLError, OSError, ChecksumError, tarfile.TarError) as err:
            download_error = f"\nand the download from {CIFAR_URL} failed (offline?): {err}"
    if directory is None:
        where = " or ".join(str(d) for d in dirs)
        raise DataUnavailableError(
            f"no CIFAR-100 files (train, test, meta) in {where}{download_error}\n"
            f"Fix: download {CIFAR_URL} (md5 {CIFAR_ARCHIVE_MD5}), extract it and pass "
            f"--data-dir DIR (or set {DATA_DIR_ENV}=DIR) for the directory holding "
            f"{CIFAR_FOLDER}/"
        )
    contents, digests = {}, {}
    for name, expected in CIFAR_FILE_MD5.items():
        path = directory / name
        data = path.read_bytes()
        digests[name] = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if verify and digests[name] != expected:
            raise ChecksumError(
                f"{path}: md5 {digests[name]}, expected {expected} (the official file). Fix: "
                f"download it again from {CIFAR_URL}, or pass --no-verify-data for a copy "
                "you made yourself in the same format"
            )
        contents[name] = _unpickle(path, data)
    names = tuple(str(n) for n in contents["meta"].get("fine_label_names", ()))
    if len(names) != CIFAR_CLASSES:
        raise DataFormatError(
            f"{directory / 'meta'} names {len(names)} fine classes, expected {CIFAR_CLASSES}"
        )
    train = _split_of(directory / "train", contents["train"])
    test = _split_of(directory / "test", contents["test"])
    return CifarData(train, test, names, directory, digests)


__all__ = [
    "CIFAR_CLASSES",
    "CIFAR_URL",
    "IMAGENET_SOURCE",
    "CifarData",
    "CifarSplit",
    "ClassFile",
    "DataFormatError",
    "check_class_file",
    "download_cifar100",
    "find_class_files",
    "identify_files",
    "load_cifar100",
    "load_class_images",
]
