"""read_idx on hand-written IDX bytes, plain and gzip."""

import gzip
import struct

import numpy as np
import pytest

from denoiserep.data.idx import read_idx


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """Header (00 00 code ndim, big-endian int32 sizes) followed by big-endian data."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_reads_uint8_images_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    plain, packed = tmp_path / "images-idx3-ubyte", tmp_path / "images-idx3-ubyte.gz"
    plain.write_bytes(idx_bytes(images, 0x08))
    packed.write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    for path in (plain, packed):
        out = read_idx(path)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, images)


def test_decodes_big_endian_values_by_hand(tmp_path):
    # int16 vector [-2, 300]: 0xFFFE, 0x012C
    path = tmp_path / "v"
    path.write_bytes(b"\x00\x00\x0b\x01" + b"\x00\x00\x00\x02" + b"\xff\xfe\x01\x2c")
    out = read_idx(path)
    assert out.dtype == np.int16 and out.dtype.isnative
    assert out.tolist() == [-2, 300]
    # float32 scalar-per-row matrix (2, 1): 1.5 = 0x3FC00000, -0.25 = 0xBE800000
    path.write_bytes(b"\x00\x00\x0d\x02" + struct.pack(">2i", 2, 1) + b"\x3f\xc0\0\0\xbe\x80\0\0")
    np.testing.assert_array_equal(read_idx(path), np.array([[1.5], [-0.25]], dtype=np.float32))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "dtype code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x08", "size mismatch"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x07\x08", "size mismatch"),
        (b"\x00\x00", "too short"),
    ],
)
def test_rejects_corrupt_files_naming_them(tmp_path, data, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_rejects_truncated_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(np.zeros((50, 50), np.uint8), 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")
