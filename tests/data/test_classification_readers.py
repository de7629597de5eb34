"""Classification readers on tiny fixtures written in each dataset's real on-disk format."""

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from denoiserep.classification.datasets import (
    DATASET_NAMES,
    FASHION_MNIST_ROOT,
    build_classification_data,
    read_cifar10,
    read_cifar100,
    read_cub200,
    read_digits,
    read_fashion_mnist,
    read_flowers102,
    read_imagefolder,
    read_oxford_pet,
)
from denoiserep.data.images import verify_images


def identity(img):
    return img


def as_array(dataset, index):
    """The raw pixels of one item: datasets built with `identity` yield PIL images."""
    img, label = dataset[index]
    return np.array(img), label


def write_image(path, value, fmt=None):
    """A 4x4 image whose red channel is `value`, so each file is recognisable."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), (value, 7, 9)).save(path, fmt)


def write_corrupt_jpeg(path):
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    with open(path, "wb") as f:
        f.write(buf.getvalue()[:300])


def red(dataset, index):
    """Red channel of an item's top-left pixel and its label."""
    pixels, label = as_array(dataset, index)
    return int(pixels[0, 0, 0]), label


# ----------------------------------------------------------------------------- digits


def test_digits_real_stratified_deterministic_split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = read_digits(train_transform=identity, test_transform=identity)
    assert (len(data.train), len(data.test)) == (1437, 360)
    assert (data.num_classes, data.in_chans, data.img_size) == (10, 1, 8)
    assert data.classes == [str(i) for i in range(10)]
    # stratified: every class keeps its 20% share of the test set, to within one image
    per_class = np.bincount(digits.target, minlength=10)
    test_counts = np.bincount(data.test.labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * per_class) <= 1)
    # values are the sklearn pixels / 16, all images accounted for exactly once
    both = np.concatenate([data.train.images, data.test.images])
    assert both.min() == 0.0 and both.max() == 1.0
    assert both.sum() == pytest.approx(digits.images.sum() / 16)
    img, label = data.test[0]
    assert img.mode == "F" and isinstance(label, int)
    matches = np.flatnonzero(
        np.all(digits.images / 16 == np.array(img)[None], axis=(1, 2)) & (digits.target == label)
    )
    assert len(matches) >= 1
    # same seed -> same split, other seed -> another split
    again, other = read_digits(), read_digits(seed=1)
    np.testing.assert_array_equal(again.test.images, data.test.images)
    assert not np.array_equal(other.test.images, data.test.images)


def test_digits_default_transform_normalises():
    data = build_classification_data("digits")
    raw = read_digits(train_transform=identity)
    x, label = data.train[5]
    pixels, raw_label = as_array(raw.train, 5)
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and label == raw_label
    expected = (torch.from_numpy(pixels) - 0.3053) / 0.3760
    torch.testing.assert_close(x[0], expected)
    with pytest.raises(ValueError, match="takes no root"):
        build_classification_data("digits", root="/tmp")


# ----------------------------------------------------------------------------- Fashion-MNIST


def idx(array: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}i", *array.shape)
        + (array.astype(np.uint8).tobytes())
    )


def write_fashion(folder, train_labels, test_labels, compress=False):
    os.makedirs(folder, exist_ok=True)
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        n = len(labels)
        images = (np.arange(n)[:, None, None] * 10 + np.zeros((1, 3, 2), np.int64)) % 256
        for kind, array in (("images-idx3", images), ("labels-idx1", np.array(labels))):
            data = idx(array)
            name = f"{prefix}-{kind}-ubyte"
            if compress:
                data, name = gzip.compress(data), name + ".gz"
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


def test_fashion_mnist_debian_layout(tmp_path):
    write_fashion(tmp_path, [0, 1, 2, 9, 1, 0], [9, 0, 5], compress=True)
    data = read_fashion_mnist(tmp_path, train_transform=identity, test_transform=identity)
    assert (len(data.train), len(data.test), data.num_classes) == (6, 3, 10)
    assert (data.in_chans, data.img_size) == (1, 3)
    assert data.classes[9] == "Ankle boot"
    pixels, label = as_array(data.train, 3)
    assert pixels.shape == (3, 2) and np.all(pixels == 30) and label == 9
    x, label = read_fashion_mnist(tmp_path).test[2]
    assert label == 5
    torch.testing.assert_close(x, torch.full((1, 3, 2), (20 / 255 - 0.2860) / 0.3530))


def test_fashion_mnist_torchvision_layout_subset_and_limits(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", [0, 1, 2, 9, 1, 0], [9, 0, 5, 1])
    data = build_classification_data(
        "fashion-mnist", root=tmp_path, subset=[9, 0], max_train=2, train_transform=identity
    )
    assert data.classes == ["Ankle boot", "T-shirt/top"] and data.num_classes == 2
    # train labels 0,9,0 at indices 0,3,5 -> first two kept, relabelled 9->0, 0->1
    assert data.train.targets == [1, 0]
    assert int(as_array(data.train, 1)[0][0, 0]) == 30
    assert data.test.targets == [0, 1]
    with pytest.raises(ValueError, match=r"subset class ids \[10\]"):
        read_fashion_mnist(tmp_path, subset=[10])


def test_fashion_mnist_errors(tmp_path):
    write_fashion(tmp_path, [0, 1], [2])
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        read_fashion_mnist(tmp_path)
    with open(tmp_path / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(idx(np.array([2, 3])))  # 2 labels for 1 image
    with pytest.raises(ValueError, match="expected 1 labels"):
        read_fashion_mnist(tmp_path)
    with open(tmp_path / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(idx(np.array([10])))
    with pytest.raises(ValueError, match="label 10 at index 0 out of range 0..9"):
        read_fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_ROOT), reason="dataset-fashion-mnist not installed"
)
def test_fashion_mnist_real_files():
    data = build_classification_data("fashion_mnist", max_test=100)
    assert (len(data.train), len(data.test)) == (60000, 100)
    assert data.img_size == 28 and data.in_chans == 1
    assert np.bincount(data.train.labels).tolist() == [6000] * 10
    x, label = data.train[0]
    assert x.shape == (1, 28, 28) and 0 <= label < 10


# ----------------------------------------------------------------------------- CIFAR


def cifar_rows(n, seed):
    """n images in CIFAR's row layout: 1024 red, 1024 green, 1024 blue values."""
    rows = np.zeros((n, 3072), np.uint8)
    for i in range(n):
        rows[i, :1024], rows[i, 1024:2048], rows[i, 2048:] = seed + i, 100, 200
        rows[i, 1] = 250  # red of pixel (row 0, column 1)
    return rows


def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(folder):
    for b in range(1, 6):
        dump(
            os.path.join(folder, f"data_batch_{b}"),
            {
                "batch_label": f"training batch {b} of 5",
                "labels": [b, 0],
                "data": cifar_rows(2, 10 * b),
                "filenames": [f"img_{b}_{i}.png" for i in range(2)],
            },
        )
    dump(os.path.join(folder, "test_batch"), {"labels": [3, 9, 9], "data": cifar_rows(3, 1)})
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    dump(os.path.join(folder, "batches.meta"), {"label_names": names, "num_vis": 3072})


def test_cifar10_pickles(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    data = read_cifar10(tmp_path, train_transform=identity, test_transform=identity)
    assert (len(data.train), len(data.test), data.num_classes) == (10, 3, 10)
    assert (data.in_chans, data.img_size) == (3, 32)
    assert data.classes[3] == "cat"
    assert data.train.targets == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]
    pixels, label = as_array(data.train, 5)  # batch 3, image 1: red = 31
    assert pixels.shape == (32, 32, 3) and label == 0
    assert pixels[0, 0].tolist() == [31, 100, 200]
    assert pixels[0, 1].tolist() == [250, 100, 200]
    assert pixels[1, 0].tolist() == [31, 100, 200]
    x, label = build_classification_data("cifar10", tmp_path / "cifar-10-batches-py").test[1]
    assert label == 9 and x.shape == (3, 32, 32)
    torch.testing.assert_close(x[2, 5, 5], torch.tensor((200 / 255 - 0.4465) / 0.2616))
    small = read_cifar10(tmp_path, subset=[0, 9], max_test=1)
    assert small.train.targets == [0] * 5 and small.test.targets == [1]


def test_cifar10_missing_and_corrupt_batches(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="test_batch: not a readable CIFAR pickle"):
        read_cifar10(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        read_cifar10(tmp_path)


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    fine = [f"class{i}" for i in range(100)]
    dump(folder / "meta", {"fine_label_names": fine, "coarse_label_names": ["c"] * 20})
    dump(
        folder / "train",
        {"fine_labels": [99, 5], "coarse_labels": [1, 2], "data": cifar_rows(2, 0)},
    )
    dump(folder / "test", {"fine_labels": [42], "coarse_labels": [3], "data": cifar_rows(1, 0)})
    data = read_cifar100(tmp_path)
    assert (len(data.train), len(data.test), data.num_classes) == (2, 1, 100)
    assert data.train.targets == [99, 5] and data.classes[42] == "class42"
    dump(folder / "test", {"fine_labels": [100], "coarse_labels": [3], "data": cifar_rows(1, 0)})
    with pytest.raises(ValueError, match="label 100 at index 0 out of range 0..99"):
        read_cifar100(folder)
    dump(folder / "test", {"coarse_labels": [3], "data": cifar_rows(1, 0)})
    with pytest.raises(ValueError, match=r"missing keys \['fine_labels'\]"):
        read_cifar100(folder)


# ----------------------------------------------------------------------------- image folders


def test_imagefolder(tmp_path):
    for split, files in (("train", {"dog": [1, 2], "cat": [3]}), ("val", {"cat": [4], "dog": [5]})):
        for cls, values in files.items():
            for v in values:
                write_image(str(tmp_path / split / cls / f"{v}.JPEG"), v * 10, "JPEG")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    data = read_imagefolder(tmp_path, train_transform=identity, img_size=16)
    assert data.classes == ["cat", "dog"] and (data.num_classes, data.in_chans) == (2, 3)
    assert [label for _, label in data.train.items] == [0, 1, 1]
    assert abs(red(data.train, 1)[0] - 10) <= 2  # JPEG is lossy
    x, label = data.test[1]
    assert x.shape == (3, 16, 16) and label == 1
    assert verify_images(data.train) == 3

    write_corrupt_jpeg(tmp_path / "train" / "dog" / "0.JPEG")
    data = read_imagefolder(tmp_path)
    with pytest.raises(ValueError, match=r"corrupt or unreadable image .*dog/0\.JPEG"):
        data.train[1]
    with pytest.raises(ValueError, match=r"item 1: .*dog/0\.JPEG"):
        verify_images(data.train)


def test_imagefolder_split_errors(tmp_path):
    write_image(str(tmp_path / "train" / "cat" / "1.png"), 1)
    with pytest.raises(FileNotFoundError, match="split folder not found: .*val"):
        read_imagefolder(tmp_path)
    os.makedirs(tmp_path / "val" / "cat")
    with pytest.raises(ValueError, match=r"split folder has no images \(.*\): .*val"):
        read_imagefolder(tmp_path)
    os.makedirs(tmp_path / "train" / "dog")
    with pytest.raises(FileNotFoundError, match=r"train: Found no valid file for the classes dog"):
        read_imagefolder(tmp_path)
    write_image(str(tmp_path / "train" / "dog" / "1.png"), 1)
    write_image(str(tmp_path / "val" / "cow" / "1.png"), 1)
    with pytest.raises(ValueError, match=r"classes \['cow'\] are not in"):
        read_imagefolder(tmp_path)


def write_cub(root):
    rows = [(1, "001.Albatross/a_1.jpg", 1, 1), (2, "001.Albatross/a_2.jpg", 1, 0)]
    rows += [(3, "002.Auklet/b_3.jpg", 2, 1), (4, "002.Auklet/b_4.jpg", 2, 0)]
    for image_id, rel, _, _ in rows:
        write_image(str(root / "images" / rel), image_id * 10, "JPEG")
    (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (root / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, _, _, s in rows))
    (root / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")


def test_cub200(tmp_path):
    root = tmp_path / "CUB_200_2011"
    write_cub(root)
    data = read_cub200(tmp_path, train_transform=identity)
    assert data.classes == ["001.Albatross", "002.Auklet"] and data.num_classes == 2
    assert [os.path.basename(p) for p, _ in data.train.items] == ["a_1.jpg", "b_3.jpg"]
    assert [label for _, label in data.test.items] == [0, 1]
    assert abs(red(data.train, 1)[0] - 30) <= 2 and red(data.train, 1)[1] == 1
    assert data.test[0][0].shape == (3, 224, 224)

    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 3\n4 2\n")
    with pytest.raises(ValueError, match="image 3 has class 3, expected 1..2"):
        read_cub200(root)
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n")
    with pytest.raises(
        ValueError, match=r"image_class_labels.txt: image ids disagree .*\(e.g. 4\)"
    ):
        read_cub200(root)
    write_cub(root)
    os.remove(root / "images" / "002.Auklet" / "b_4.jpg")
    with pytest.raises(FileNotFoundError, match="listed in .*images.txt is missing.*b_4.jpg"):
        read_cub200(root)
    os.remove(root / "train_test_split.txt")
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        read_cub200(root)


def write_pet(root, test_lines="Abyssinian_5 1 1 1\namerican_bulldog_7 2 2 1\n"):
    os.makedirs(root / "annotations", exist_ok=True)
    trainval = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
    trainval += "Abyssinian_1 1 1 1\namerican_bulldog_2 2 2 1\nAbyssinian_3 1 1 1\n"
    (root / "annotations" / "trainval.txt").write_text(trainval)
    (root / "annotations" / "test.txt").write_text(test_lines)
    for name, value in (("Abyssinian_1", 1), ("american_bulldog_2", 2), ("Abyssinian_3", 3)):
        write_image(str(root / "images" / f"{name}.jpg"), value * 10, "JPEG")
    write_image(str(root / "images" / "Abyssinian_5.jpg"), 50, "JPEG")
    write_image(str(root / "images" / "american_bulldog_7.jpg"), 70, "JPEG")


def test_oxford_pet(tmp_path):
    root = tmp_path / "oxford-iiit-pet"
    write_pet(root)
    data = read_oxford_pet(tmp_path, test_transform=identity)
    assert data.classes == ["Abyssinian", "american_bulldog"] and data.num_classes == 2
    assert data.train.targets == [0, 1, 0] and data.test.targets == [0, 1]
    assert abs(red(data.test, 1)[0] - 70) <= 2

    write_pet(root, "Abyssinian_5 38 1 1\n")
    with pytest.raises(ValueError, match=r"test.txt:1: class id 38 out of range 1..37"):
        read_oxford_pet(root)
    write_pet(root, "american_bulldog_7 1 2 1\n")
    with pytest.raises(ValueError, match="class id 1 is 'Abyssinian'"):
        read_oxford_pet(root)
    write_pet(root, "Abyssinian_5 4 1 1\n")
    with pytest.raises(ValueError, match=r"class ids \[3\] never appear"):
        read_oxford_pet(root)
    write_pet(root, "Abyssinian_9 1 1 1\n")
    with pytest.raises(
        FileNotFoundError, match="listed in .*test.txt is missing.*Abyssinian_9.jpg"
    ):
        read_oxford_pet(root)
    os.remove(root / "annotations" / "test.txt")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        read_oxford_pet(root)


def write_flowers(root, tstid=(5, 6)):
    labels = [1, 2, 1, 2, 3, 3]
    for i, _ in enumerate(labels, start=1):
        write_image(str(root / "jpg" / f"image_{i:05d}.jpg"), i * 10, "JPEG")
    # MATLAB stores these as 1 x N double row vectors
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.float64)})
    ids = {"trnid": [[1, 2]], "valid": [[3, 4]], "tstid": [list(tstid)]}
    scipy.io.savemat(root / "setid.mat", {k: np.array(v, dtype=np.float64) for k, v in ids.items()})


def test_flowers102(tmp_path):
    root = tmp_path / "flowers-102"
    write_flowers(root)
    data = read_flowers102(tmp_path, train_transform=identity)
    assert data.classes == ["1", "2", "3"] and data.num_classes == 3
    assert data.train.targets == [0, 1] and data.test.targets == [2, 2]
    assert abs(red(data.train, 1)[0] - 20) <= 2
    with_val = build_classification_data("flowers102", root, include_val=True)
    assert [os.path.basename(p) for p, _ in with_val.train.items] == [
        f"image_0000{i}.jpg" for i in range(1, 5)
    ]
    assert with_val.train.targets == [0, 1, 0, 1]

    write_flowers(root, tstid=(5, 7))
    with pytest.raises(ValueError, match="tstid lists image 7, but .*labels images 1..6"):
        read_flowers102(root)
    write_flowers(root)
    os.remove(root / "jpg" / "image_00006.jpg")
    with pytest.raises(FileNotFoundError, match="listed in .*setid.mat is missing.*image_00006"):
        read_flowers102(root)
    scipy.io.savemat(root / "setid.mat", {"trnid": np.array([[1]])})
    with pytest.raises(ValueError, match="missing variable 'valid'|missing variable 'tstid'"):
        read_flowers102(root, include_val=True)
    os.remove(root / "setid.mat")
    with pytest.raises(FileNotFoundError, match="setid.mat"):
        read_flowers102(root)


# ----------------------------------------------------------------------------- registry


def test_registry_errors():
    assert set(DATASET_NAMES) == {
        "digits", "fashion_mnist", "cifar10", "cifar100",
        "imagefolder", "cub200", "oxford_pet", "flowers102",
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid names: digits, "):
        build_classification_data("mnist")
    with pytest.raises(ValueError, match="'cub200' needs root"):
        build_classification_data("cub200")


class _Payload:
    """Unpickling it calls ``open(marker, 'w')``: what a crafted dataset file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "payload-ran"
    dump(tmp_path / "test_batch", {"labels": [1], "data": _Payload(marker)})
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR pickle: it names \S*open,"):
        read_cifar10(tmp_path)
    assert not marker.exists()
