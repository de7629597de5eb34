"""load_image, ListImageDataset and verify_images on files written by the test."""

import io

import numpy as np
import pytest
from PIL import Image

from denoiserep.data.images import ListImageDataset, load_image, verify_images


def write_truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_load_image_converts_grayscale_png_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint8), mode="L").save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (3, 1)
    np.testing.assert_array_equal(np.array(img)[0], [[0, 0, 0], [100, 100, 100], [200, 200, 200]])


def test_load_image_errors_name_the_file(tmp_path):
    truncated, text = tmp_path / "cut.jpg", tmp_path / "notes.jpg"
    write_truncated_jpeg(truncated)
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(ValueError, match="corrupt or unreadable image") as info:
            load_image(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_image(tmp_path / "absent.png")


def test_list_dataset_and_verify_images(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (2, 2), colour).save(paths[-1])
    ds = ListImageDataset([(paths[0], 3), (paths[1], 5)], transform=lambda im: im.getpixel((0, 0)))
    assert len(ds) == 2 and ds.targets == [3, 5]
    assert ds[1] == ((0, 0, 255), 5)
    assert isinstance(ListImageDataset([(paths[0], 0)])[0][0], Image.Image)
    assert verify_images(ds) == 2

    write_truncated_jpeg(tmp_path / "bad.jpg")
    bad = ListImageDataset([(paths[0], 0), (str(tmp_path / "bad.jpg"), 1)])
    assert bad[0][1] == 0  # good items still read
    with pytest.raises(ValueError, match=r"item 1: corrupt or unreadable image .*bad\.jpg"):
        verify_images(bad)
    with pytest.raises(FileNotFoundError, match=r"item 0: .*gone\.png"):
        verify_images(ListImageDataset([(str(tmp_path / "gone.png"), 0)]))
    with pytest.raises(TypeError, match="ListImageDataset"):
        verify_images([1, 2])
