"""The MNIST / Fashion-MNIST loader on the real shared files, its checks and its errors."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbp_rl.supervised import data as data_module
from cbp_rl.supervised.command import main
from cbp_rl.supervised.data import (
    DATA_DIR_ENV,
    DATASETS,
    ChecksumError,
    DataUnavailableError,
    download_split,
    load_images,
    parse_idx,
    read_idx,
)

# per-digit counts of the 10,000 MNIST test labels (LeCun's published split)
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

pytestmark = pytest.mark.usefixtures("single_thread")


def test_loads_the_shared_test_set(mnist_dir: Path) -> None:
    digits = load_images("mnist", mnist_dir, download=False)
    assert digits.split == "test" and digits.dataset == "mnist"
    assert digits.images.shape == (10000, 784) and digits.images.dtype == np.float32
    assert digits.images.min() == 0.0 and digits.images.max() == 1.0
    assert digits.labels.dtype == np.int64
    assert digits.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(digits.labels).tolist() == TEST_COUNTS
    assert digits.md5 == DATASETS["mnist"].files["test"][0].raw_md5
    assert "test set" in digits.note and "60,000" in digits.note
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (10000, 28, 28)
    np.testing.assert_array_equal(digits.images[0], raw[0].reshape(-1) / np.float32(255))


def _copy_split(source: Path, target: Path, *, compress: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if compress:
            shutil.copy(source / f"{name}.gz", target / f"{name}.gz")
        else:
            with gzip.open(source / f"{name}.gz") as f:
                (target / name).write_bytes(f.read())


def test_raw_files_and_the_environment_variable(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_split(mnist_dir, tmp_path / "mnist", compress=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))  # a parent holding mnist/ works too
    digits = load_images("mnist", download=False)
    assert digits.directory == tmp_path / "mnist"
    assert np.bincount(digits.labels).tolist() == TEST_COUNTS


def test_checksum_catches_a_changed_file(mnist_dir: Path, tmp_path: Path) -> None:
    _copy_split(mnist_dir, tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    content = bytearray(path.read_bytes())
    content[5000] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(ChecksumError, match="md5"):
        load_images("mnist", tmp_path, download=False)
    images = load_images("mnist", tmp_path, download=False, verify=False)
    assert images.images.shape == (10000, 784)


def test_idx_parser_rejects_broken_files() -> None:
    with pytest.raises(ChecksumError, match="magic"):
        parse_idx(b"\x01\x02\x03\x04")
    header = bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big")
    assert parse_idx(header + bytes(range(5))).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ChecksumError, match="truncated"):
        parse_idx(header + bytes(3))


def test_offline_error_names_the_data_dir_flag(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as caught:
        load_images("mnist", tmp_path, download=True, mirrors=["http://127.0.0.1:9/"])
    message = str(caught.value)
    assert "--data-dir" in message and DATA_DIR_ENV in message
    assert "t10k-images-idx3-ubyte" in message and "127.0.0.1" in message
    with pytest.raises(DataUnavailableError, match="--data-dir"):
        load_images("mnist", tmp_path, download=False)


def test_download_checks_md5_and_tries_the_next_mirror(mnist_dir: Path, tmp_path: Path) -> None:
    """The download path with file:// mirrors: a bad mirror is skipped, the good one kept."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (bad / name).write_bytes(b"not the file")
    mirrors = [bad.as_uri() + "/", mnist_dir.resolve().as_uri() + "/"]
    target = tmp_path / "downloaded"
    images_path, _ = download_split(DATASETS["mnist"], "test", target, mirrors=mirrors)
    assert images_path == target / "t10k-images-idx3-ubyte.gz"
    assert sorted(os.listdir(target)) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    digits = load_images("mnist", target, split="test", download=False)
    assert np.bincount(digits.labels).tolist() == TEST_COUNTS
    with pytest.raises(DataUnavailableError, match="md5"):
        download_split(DATASETS["mnist"], "test", tmp_path / "none", mirrors=mirrors[:1])


def test_auto_split_prefers_the_training_files(tmp_path: Path) -> None:
    """With train files present (here tiny fakes, checksums off) they are used."""
    for name, array in (
        ("train-images-idx3-ubyte", np.full((3, 28, 28), 255, np.uint8)),
        ("train-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8)),
    ):
        _write_idx(tmp_path / name, array)
    digits = load_images("mnist", tmp_path, download=False, verify=False)
    assert digits.split == "train" and digits.labels.tolist() == [1, 2, 3]
    assert digits.images.shape == (3, 784) and digits.images.max() == 1.0


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
        f.write(header + array.tobytes())


def test_fashion_mnist_is_found_in_the_debian_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DATASETS["fashion-mnist"].system_dirs == (Path("/usr/share/datasets/fashion-mnist"),)
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    system.mkdir()
    _write_idx(system / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    _write_idx(system / "t10k-labels-idx1-ubyte", np.array([4, 9], np.uint8))
    info = dataclasses.replace(DATASETS["fashion-mnist"], system_dirs=(system,))
    monkeypatch.setitem(data_module.DATASETS, "fashion-mnist", info)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    digits = load_images("fashion-mnist", download=False, verify=False)
    assert digits.directory == system and digits.labels.tolist() == [4, 9]


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_images("cifar", download=False)


def test_command_reports_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--data-dir", str(tmp_path), "--no-download", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err
