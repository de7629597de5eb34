"""Our readers beside torchvision's: where torchvision cannot read what ours reads (the reasons
in docs/development.md), and the `download` option that hands the fetching to torchvision.

No network: torchvision's classes run on local fixture files, and the download tests replace
them with fakes that write the fixtures.
"""

import os
import pathlib
import urllib.error

import numpy as np
import pytest
import torchvision.datasets
from torchvision.datasets.mnist import read_label_file

from denoiserep.data.classification import (
    build_classification_data,
    read_cifar10,
    read_fashion_mnist,
    read_flowers102,
    read_oxford_pet,
)
from denoiserep.data.classification.download import TORCHVISION_DATASETS, fetch
from denoiserep.data.idx import read_idx
from tests.data.test_classification_readers import (
    dump,
    write_cifar10,
    write_fashion,
    write_flowers,
    write_pet,
)


def test_torchvision_cifar10_reads_only_the_byte_exact_official_batches(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(RuntimeError, match="not found or corrupted"):  # md5 of every batch
        torchvision.datasets.CIFAR10(tmp_path)
    assert len(read_cifar10(tmp_path).train) == 10


def test_torchvision_fashion_mnist_does_not_read_gzip_or_the_debian_layout(tmp_path):
    write_fashion(tmp_path, [0, 1, 2], [9], compress=True)  # Debian: *.gz in the folder itself
    write_fashion(tmp_path / "FashionMNIST" / "raw", [0, 1, 2], [9], compress=True)
    with pytest.raises(RuntimeError, match="Dataset not found"):
        torchvision.datasets.FashionMNIST(tmp_path)
    with pytest.raises(AssertionError):  # an assert, gone under python -O, names no file
        read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte.gz"))
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist() == [9]
    assert len(read_fashion_mnist(tmp_path).train) == 3


def test_torchvision_flowers102_reads_only_the_byte_exact_official_mat_files(tmp_path):
    write_flowers(tmp_path / "flowers-102")
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        torchvision.datasets.Flowers102(tmp_path)
    assert read_flowers102(tmp_path).test.targets == [2, 2]


def test_torchvision_pet_names_classes_per_split_and_checks_no_listed_image(tmp_path):
    root = tmp_path / "oxford-iiit-pet"
    write_pet(root, "Abyssinian_5 1 1 1\n")  # the test split holds one of the two breeds
    lines = (root / "annotations" / "trainval.txt").read_text().splitlines()
    (root / "annotations" / "trainval.txt").write_text(
        "".join(f"{line}\n" for line in lines if not line.startswith("#"))
    )
    train = torchvision.datasets.OxfordIIITPet(tmp_path, "trainval")
    test = torchvision.datasets.OxfordIIITPet(tmp_path, "test")
    assert train.classes == ["Abyssinian", "American Bulldog"] and test.classes == ["Abyssinian"]
    ours = read_oxford_pet(tmp_path)
    assert ours.classes == ["Abyssinian", "american_bulldog"]  # one list for both splits

    os.remove(root / "images" / "Abyssinian_5.jpg")
    assert len(torchvision.datasets.OxfordIIITPet(tmp_path, "test")) == 1  # fails at [0] only
    with pytest.raises(FileNotFoundError, match="Abyssinian_5.jpg"):
        read_oxford_pet(tmp_path)


# ----------------------------------------------------------------------------- download option


def _write_pet_official(base):
    write_pet(base)
    for split in ("trainval.txt", "test.txt"):
        path = base / "annotations" / split
        lines = path.read_text().splitlines()
        path.write_text("".join(f"{line}\n" for line in lines if not line.startswith("#")))


# name -> (what torchvision's downloader would leave under root, how many train images)
FIXTURES = {
    "cifar10": (lambda root: write_cifar10(root / "cifar-10-batches-py"), 10),
    "fashion_mnist": (lambda root: write_fashion(root / "FashionMNIST" / "raw", [0, 1], [2]), 2),
    "flowers102": (lambda root: write_flowers(root / "flowers-102"), 2),
    "oxford_pet": (lambda root: _write_pet_official(root / "oxford-iiit-pet"), 3),
}


def _write_cifar100(root):
    folder = root / "cifar-100-python"
    dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    rows = np.zeros((1, 3072), np.uint8)
    dump(folder / "train", {"fine_labels": [7], "data": rows})
    dump(folder / "test", {"fine_labels": [8], "data": rows})


FIXTURES["cifar100"] = (_write_cifar100, 1)


def fake_downloader(calls, write):
    """A torchvision dataset class that, with download=True, writes the fixture files."""

    class Fake:
        def __init__(self, root, download=False, **kwargs):
            calls.append((root, download))
            if download:
                write(pathlib.Path(root))

    return Fake


@pytest.mark.parametrize("name", sorted(TORCHVISION_DATASETS))
def test_download_fetches_with_torchvision_then_our_reader_reads(tmp_path, monkeypatch, name):
    write, n_train = FIXTURES[name]
    calls = []
    monkeypatch.setattr(
        torchvision.datasets, TORCHVISION_DATASETS[name], fake_downloader(calls, write)
    )
    data = build_classification_data(name, tmp_path, download=True)
    assert calls == [(str(tmp_path), True)] and len(data.train) == n_train
    calls.clear()
    assert len(build_classification_data(name, tmp_path).train) == n_train
    assert calls == []  # without the option torchvision is never called


def test_a_failed_download_is_one_line_naming_the_dataset_and_folder(tmp_path, monkeypatch):
    class Offline:
        def __init__(self, root, download=False):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution\nmore")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(RuntimeError) as info:
        read_cifar10(tmp_path, download=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download cifar10 into {tmp_path} with torchvision")
    assert "URLError" in message and "name resolution" in message
    with pytest.raises(ValueError, match="no torchvision downloader for 'cub200'"):
        fetch("cub200", tmp_path)
