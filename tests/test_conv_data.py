"""The convolutional experiments' data: per-class ImageNet files and CIFAR-100 pickles."""

from __future__ import annotations

import io
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conv_data import write_cifar100, write_imagenet_classes

from cbp_rl.supervised.cifar import augment, normalize
from cbp_rl.supervised.data import ChecksumError, DataUnavailableError
from cbp_rl.supervised.imagenet import class_order
from cbp_rl.supervised.images import (
    CIFAR_ARCHIVE_MD5,
    DataFormatError,
    check_class_file,
    find_class_files,
    load_cifar100,
    load_class_images,
)


def test_channel_last_uint8_and_channel_first_float_give_the_same_pixels(tmp_path: Path) -> None:
    write_imagenet_classes(tmp_path / "last", 2, channels_last=True, dtype="uint8")
    write_imagenet_classes(tmp_path / "first", 2, dtype="uint8")
    last, first = find_class_files(tmp_path / "last"), find_class_files(tmp_path / "first")
    assert [f.channels_last for f in last] == [True, True]
    a, b = load_class_images(last[1]), load_class_images(first[1])
    assert a.shape == (700, 3, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    raw = np.load(tmp_path / "first" / "1.npy")
    np.testing.assert_array_equal(a, raw.astype(np.float32))  # values as stored, not scaled
    assert a.max() > 1.0


def test_class_files_sorted_numerically(tmp_path: Path) -> None:
    write_imagenet_classes(tmp_path, 12)
    assert [f.name for f in find_class_files(tmp_path)] == [str(i) for i in range(12)]


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((699, 3, 32, 32), np.uint8), "holds 699 images"),
        (np.zeros((700, 3, 28, 28), np.uint8), "has shape (700, 3, 28, 28)"),
        (np.zeros((700, 3, 32, 32), np.int32), "has dtype int32"),
    ],
)
def test_bad_class_file_named_with_the_fix(tmp_path: Path, array: np.ndarray, words: str) -> None:
    path = tmp_path / "7.npy"
    np.save(path, array)
    with pytest.raises(DataFormatError) as err:
        check_class_file(path)
    message = str(err.value)
    assert str(path) in message and words in message
    assert "loss-of-plasticity" in message and "Fix" in message


def test_not_an_npy_file(tmp_path: Path) -> None:
    path = tmp_path / "3.npy"
    path.write_bytes(b"not numpy")
    with pytest.raises(DataFormatError, match=r"3\.npy is not a readable \.npy"):
        check_class_file(path)


def test_missing_imagenet_says_where_the_archive_comes_from(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as err:
        find_class_files(tmp_path / "nothing")
    message = str(err.value)
    assert "lop/imagenet/README.md" in message and "--data-dir" in message
    assert "No download exists" in message


def test_class_order_is_a_seeded_repeated_permutation() -> None:
    order = class_order(3, 10, tasks=12, per_task=2)
    assert order.shape == (12, 2)
    flat = order.ravel()
    assert sorted(flat[:10].tolist()) == list(range(10))
    np.testing.assert_array_equal(flat[10:20], flat[:10])  # repeated as the reference does
    np.testing.assert_array_equal(order, class_order(3, 10, tasks=12, per_task=2))
    assert not np.array_equal(order, class_order(4, 10, tasks=12, per_task=2))
    with pytest.raises(ValueError, match="more than the 3 classes"):
        class_order(0, 3, tasks=1, per_task=4)


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar_miniature_loads(tmp_path: Path) -> None:
    write_cifar100(tmp_path, train_per_class=3, test_per_class=2)
    data = load_cifar100(tmp_path, download=False, verify=False)
    assert data.train.images.shape == (300, 3, 32, 32) and data.train.images.dtype == np.uint8
    assert data.test.labels.shape == (200,)
    assert np.bincount(data.train.labels).tolist() == [3] * 100
    assert data.class_names[7] == "class7"
    # the row layout is R, G, B planes: label % 3 marks its channel's row (label // 3) % 32
    first = int(np.flatnonzero(data.train.labels == 4)[0])
    assert (data.train.images[first, 1, 1] == 255).all()
    # found through the cifar-100-python folder itself too
    assert load_cifar100(tmp_path / "cifar-100-python", download=False, verify=False).md5


def test_cifar_md5_mismatch_names_file_and_fix(tmp_path: Path) -> None:
    write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    with pytest.raises(ChecksumError, match=r"train: md5 .* --no-verify-data"):
        load_cifar100(tmp_path, download=False)


def test_cifar_offline_error_names_the_archive(tmp_path: Path) -> None:
    def offline(url: str, target: Path, timeout: float) -> None:
        raise urllib.error.URLError("no network")

    with pytest.raises(DataUnavailableError) as err:
        load_cifar100(tmp_path, fetch=offline)
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and CIFAR_ARCHIVE_MD5 in message
    assert "download" in message and "no network" in message


def test_cifar_download_checks_the_archive_md5(tmp_path: Path) -> None:
    source = write_cifar100(tmp_path / "src", train_per_class=1, test_per_class=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")

    def fetch(url: str, target: Path, timeout: float) -> None:
        target.write_bytes(buffer.getvalue())

    with pytest.raises(DataUnavailableError, match="md5"):
        load_cifar100(tmp_path / "cache", fetch=fetch, verify=False)
    assert not (tmp_path / "cache" / "cifar-100-python").exists()


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_cifar100(tmp_path, train_per_class=1, test_per_class=1)

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (print, ("pwned",))

    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataFormatError, match=r"refusing to load builtins\.print"):
        load_cifar100(tmp_path, download=False, verify=False)


def test_cifar_unbalanced_classes_refused(tmp_path: Path) -> None:
    write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    path = tmp_path / "cifar-100-python" / "test"
    content = pickle.loads(path.read_bytes())
    content["fine_labels"][0] = (content["fine_labels"][0] + 1) % 100
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(DataFormatError, match="test: classes hold 0 to 2 images"):
        load_cifar100(tmp_path, download=False, verify=False)


def test_normalize_and_augment() -> None:
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    x = normalize(images)
    expected = (images[:, 1].float() / 255 - 0.4865) / 0.2564
    torch.testing.assert_close(x[:, 1], expected)
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # nearest-neighbour crops and rotations only move pixels (or fill with zero)
    for i in range(6):
        values = set(x[i].unique().tolist()) | {0.0}
        assert set(a[i].unique().tolist()) <= values
    assert not torch.equal(a, x)
