"""MNIST and Fashion-MNIST from their IDX files: find, check, download, load.

The loader reads the standard IDX files, gzip-compressed or raw, from one directory. It uses
the 60,000 training images when the training files are there (or can be downloaded) and
otherwise the 10,000-image test set, and says which it used (:attr:`ImageSet.note`). Every file
is checked against the md5 of its uncompressed content, so a Debian package's re-compressed
``.gz`` files pass while a truncated or foreign file does not; a download is also checked
against the md5 of the official archive before it is kept.

Where it looks, in order: ``data_dir`` (the ``--data-dir`` flag), else ``$CBP_RL_DATA_DIR``,
else the user cache ``~/.cache/cbp_rl/<dataset>`` plus system folders (Debian's
``dataset-fashion-mnist`` package puts Fashion-MNIST in ``/usr/share/datasets/fashion-mnist``).
A directory may hold the files itself or in a ``mnist`` / ``fashion-mnist`` subfolder.

Examples:
    With the MNIST files in ``$CBP_RL_DATA_DIR`` (or pass the folder as ``data_dir``):

    >>> digits = load_images("mnist", split="test", download=False)
    >>> digits.images.shape, digits.labels.shape, digits.split
    ((10000, 784), (10000,), 'test')
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np

DATA_DIR_ENV = "CBP_RL_DATA_DIR"
"""Environment variable naming the data directory when ``--data-dir`` is not given."""

DatasetName = Literal["mnist", "fashion-mnist"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
Split = Literal["train", "test"]


@dataclass(frozen=True)
class IdxFile:
    """One IDX file of a dataset and its checksums."""

    name: str
    """File name without ``.gz`` (``train-images-idx3-ubyte``)."""
    raw_md5: str
    """md5 of the uncompressed IDX content."""
    gz_md5: str
    """md5 of the official gzip archive (checked on download)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset comes from and what its files are."""

    name: str
    folder: str
    """Subfolder name a data directory may hold it in."""
    mirrors: tuple[str, ...]
    """Base URLs tried in order; each serves ``<file name>.gz``."""
    files: dict[str, tuple[IdxFile, IdxFile]]
    """``split -> (images, labels)``."""
    system_dirs: tuple[Path, ...] = ()
    """Folders a system package installs the files to, searched when no directory is given."""


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        folder="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        files={
            "train": (
                IdxFile(
                    "train-images-idx3-ubyte",
                    "6bbc9ace898e44ae57da46a324031adb",
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                ),
                IdxFile(
                    "train-labels-idx1-ubyte",
                    "a25bea736e30d166cdddb491f175f624",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                ),
            ),
            "test": (
                IdxFile(
                    "t10k-images-idx3-ubyte",
                    "2646ac647ad5339dbf082846283269ea",
                    "9fb629c4189551a2d022fa330f9573f3",
                ),
                IdxFile(
                    "t10k-labels-idx1-ubyte",
                    "27ae3e4e09519cfbb04c329615203637",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            ),
        },
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        folder="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        files={
            "train": (
                IdxFile(
                    "train-images-idx3-ubyte",
                    "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                IdxFile(
                    "train-labels-idx1-ubyte",
                    "9018921c3c673c538a1fc5bad174d6f9",
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
            ),
            "test": (
                IdxFile(
                    "t10k-images-idx3-ubyte",
                    "8181f5470baa50b63fa0f6fddb340f0a",
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                IdxFile(
                    "t10k-labels-idx1-ubyte",
                    "15d484375f8d13e6eb1aabb0c3f46965",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ),
        },
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    ),
}


class DataUnavailableError(FileNotFoundError):
    """The dataset's files are neither on disk nor downloadable; the message says what to do."""


class ChecksumError(ValueError):
    """A file's content does not match the dataset's md5."""


class ImageSet(NamedTuple):
    """Images and labels of one split, ready for the permuted stream."""

    images: np.ndarray
    """``[N, 784]`` float32 pixels in [0, 1], flattened row by row."""
    labels: np.ndarray
    """``[N]`` int64 class labels 0..9."""
    dataset: str
    split: str
    """``train`` (60,000 images) or ``test`` (10,000)."""
    directory: Path
    md5: str
    """md5 of the uncompressed image file (identifies the data in checkpoints)."""
    note: str
    """One line saying which files were used and why."""


# --------------------------------------------------------------------------- IDX files

_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_bytes(path: Path) -> bytes:
    """The uncompressed content of an IDX file, gzip-compressed or raw (told by its magic)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                return g.read()
        except (OSError, EOFError) as err:
            raise ChecksumError(f"{path} is a damaged gzip file ({err})") from err
    return path.read_bytes()


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """An IDX byte string as an array with the shape of its header."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ChecksumError(f"{source} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ChecksumError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ChecksumError(
            f"{source}: {len(data)} bytes, but its header {shape} needs {expected}: "
            "the file is truncated or damaged"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into an array of its declared shape and type."""
    path = Path(path)
    return parse_idx(read_bytes(path), str(path))


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- locating


def _file_in(directory: Path, idx: IdxFile) -> Path | None:
    for candidate in (directory / f"{idx.name}.gz", directory / idx.name):
        if candidate.is_file():
            return candidate
    return None


def _split_files(directory: Path, info: DatasetInfo, split: str) -> tuple[Path, Path] | None:
    images, labels = (_file_in(directory, idx) for idx in info.files[split])
    return (images, labels) if images is not None and labels is not None else None


def _expand(directory: Path, info: DatasetInfo) -> list[Path]:
    """The directory itself and its dataset subfolder."""
    return [directory, directory / info.folder]


def default_cache_dir(dataset: str) -> Path:
    """``$XDG_CACHE_HOME/cbp_rl/<dataset>`` (``~/.cache/cbp_rl/<dataset>``): where downloads go
    when no directory is given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cbp_rl" / dataset


def search_dirs(info: DatasetInfo, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The directories searched, in order (see the module docstring)."""
    if data_dir is not None:
        return _expand(Path(data_dir), info)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return _expand(Path(env), info)
    return [default_cache_dir(info.name), *info.system_dirs]


def dataset_info(dataset: str) -> DatasetInfo:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}; valid datasets are {', '.join(DATASET_NAMES)}"
        ) from None


# --------------------------------------------------------------------------- download


Fetch = Callable[[str, Path, float], None]


def _urlopen_to(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out)


def download_split(
    info: DatasetInfo,
    split: str,
    directory: Path,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    fetch: Fetch = _urlopen_to,
) -> tuple[Path, Path]:
    """Download a split's two ``.gz`` files into ``directory``, checking each archive's md5.

    Mirrors are tried in order for each file; a file is kept (renamed into place atomically)
    only when its md5 matches. Raises :class:`DataUnavailableError` listing every failure.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for idx in info.files[split]:
        target = directory / f"{idx.name}.gz"
        failures = []
        for base in mirrors if mirrors is not None else info.mirrors:
            url = base + f"{idx.name}.gz"
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{idx.name}.", suffix=".tmp")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                fetch(url, tmp, timeout)
                digest = md5_hex(tmp.read_bytes())
                if digest != idx.gz_md5:
                    failures.append(f"{url}: md5 {digest}, expected {idx.gz_md5}")
                    continue
                os.replace(tmp, target)
                break
            except (urllib.error.URLError, OSError, ValueError) as err:
                failures.append(f"{url}: {err}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise DataUnavailableError(
                f"could not download {idx.name}.gz:\n  " + "\n  ".join(failures)
            )
        paths.append(target)
    return paths[0], paths[1]


# --------------------------------------------------------------------------- loading


def _load_pair(
    images_path: Path, labels_path: Path, images_idx: IdxFile, labels_idx: IdxFile, verify: bool
) -> tuple[np.ndarray, np.ndarray, str]:
    image_bytes = read_bytes(images_path)
    label_bytes = read_bytes(labels_path)
    image_md5 = md5_hex(image_bytes)
    if verify:
        for path, data, digest, idx in (
            (images_path, image_bytes, image_md5, images_idx),
            (labels_path, label_bytes, None, labels_idx),
        ):
            actual = digest or md5_hex(data)
            if actual != idx.raw_md5:
                raise ChecksumError(
                    f"{path}: md5 of its content is {actual}, expected {idx.raw_md5} for "
                    f"{idx.name}: the file is damaged or not the official one. Delete it to "
                    "download it again, or pass verify=False (--no-verify-data) to use it anyway"
                )
    images = parse_idx(image_bytes, str(images_path))
    labels = parse_idx(label_bytes, str(labels_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ChecksumError(f"{images_path}: expected uint8 images [N, 28, 28], got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ChecksumError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
        )
    pixels = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    return pixels, labels.astype(np.int64), image_md5


def load_images(
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: Literal["auto", "train", "test"] = "auto",
    download: bool = True,
    verify: bool = True,
    mirrors: Sequence[str] | None = None,
) -> ImageSet:
    """Load MNIST or Fashion-MNIST for the permuted stream.

    ``split="auto"`` uses the 60,000 training images if they are on disk or can be
    downloaded, otherwise the 10,000 test images, and says so in :attr:`ImageSet.note`.
    ``download=False`` never touches the network. Raises :class:`DataUnavailableError` (naming
    ``--data-dir`` and ``$CBP_RL_DATA_DIR``) when no usable files are found.
    """
    info = dataset_info(dataset)
    if split not in ("auto", "train", "test"):
        raise ValueError(f"split must be auto, train or test, got {split!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        what = "is not a directory" if Path(data_dir).exists() else "does not exist"
        raise DataUnavailableError(
            f"--data-dir {data_dir} {what}: pass the directory holding the {info.name} IDX files "
            "(gzip or raw), or create it first for the download to go there"
        )
    dirs = search_dirs(info, data_dir)
    wanted: list[str] = ["train", "test"] if split == "auto" else [split]
    download_errors: list[str] = []
    for choice in wanted:
        found = next(
            ((d, pair) for d in dirs if (pair := _split_files(d, info, choice)) is not None), None
        )
        if found is None and download:
            target = dirs[0]
            try:
                found = (target, download_split(info, choice, target, mirrors=mirrors))
            except DataUnavailableError as err:
                download_errors.append(str(err))
        if found is None:
            continue
        directory, (images_path, labels_path) = found
        images, labels, md5 = _load_pair(
            images_path, labels_path, *info.files[choice], verify=verify
        )
        note = f"{info.name}: {len(images):,} {choice} images from {directory}"
        if choice == "test" and split == "auto":
            note += (
                " (the 60,000 training images are not there"
                + (" and could not be downloaded" if download else "; downloads are off")
                + ", so the test set is the stream's data)"
            )
        return ImageSet(images, labels, info.name, choice, directory, md5, note)
    raise DataUnavailableError(_missing_message(info, dirs, wanted, download, download_errors))


def _missing_message(
    info: DatasetInfo, dirs: Sequence[Path], wanted: Sequence[str], download: bool, errors: list
) -> str:
    names = ", ".join(f"{idx.name}[.gz]" for split in wanted for idx in info.files[split])
    where = ", ".join(str(d) for d in dirs)
    lines = [
        f"the {info.name} files are not here: pass --data-dir DIR (or set {DATA_DIR_ENV}=DIR) "
        f"for a directory holding the IDX files (gzip or raw), or run once with internet "
        f"access so they are downloaded from {info.mirrors[0]}",
        f"looked for {names} in {where}",
    ]
    if download:
        lines.append(f"and the download failed (offline?): {len(errors)} attempt(s), the last: ")
        lines[-1] += errors[-1].splitlines()[-1].strip() if errors else "none tried"
    return "\n".join(lines)


__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "ChecksumError",
    "DataUnavailableError",
    "DatasetInfo",
    "IdxFile",
    "ImageSet",
    "default_cache_dir",
    "download_split",
    "load_images",
    "read_idx",
    "search_dirs",
]
