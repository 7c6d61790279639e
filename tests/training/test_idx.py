import gzip

import numpy as np
import pytest
from tests.training.synthetic_data import idx_bytes, write_idx

from training.idx import IdxError, read_idx, read_images, read_labels, read_pair


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.array([-5, 0, 70000], dtype=np.int32),
        np.linspace(-1, 1, 12).reshape(3, 4),
        np.array([[1.5, -2.25]], dtype=np.float32),
    ],
    ids=["uint8-3d", "int32-1d", "float64-2d", "float32-2d"],
)
def test_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / "file.idx", array, compress)
    result = read_idx(path)
    assert result.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(result, array)


def test_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x00" + idx_bytes(np.zeros(3, np.uint8))[2:])
    with pytest.raises(IdxError, match="bad magic number 0x01000801"):
        read_idx(path)


def test_unknown_element_type(tmp_path):
    data = bytearray(idx_bytes(np.zeros(3, np.uint8)))
    data[2] = 0x0A
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(IdxError, match="unknown element type 0x0A"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_truncated_data_says_how_much_is_missing(tmp_path, compress):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]
    (tmp_path / "cut").write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(IdxError, match=r"truncated data: shape \(10, 28, 28\) of uint8 needs 7840 bytes .* has 7740"):
        read_idx(tmp_path / "cut")


def test_truncated_header(tmp_path):
    (tmp_path / "cut").write_bytes(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:9])
    with pytest.raises(IdxError, match="truncated header: 3 dimensions need 16 bytes"):
        read_idx(tmp_path / "cut")


def test_too_short_for_a_header(tmp_path):
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(IdxError, match="too short"):
        read_idx(tmp_path / "tiny")


def test_trailing_bytes_are_refused(tmp_path):
    (tmp_path / "long").write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\x00\x00")
    with pytest.raises(IdxError, match="2 unexpected trailing bytes"):
        read_idx(tmp_path / "long")


def test_damaged_gzip_stream(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)))
    (tmp_path / "damaged.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(IdxError, match="damaged gzip stream"):
        read_idx(tmp_path / "damaged.gz")


def test_images_must_be_uint8_28x28(tmp_path):
    write_idx(tmp_path / "img", np.zeros((2, 27, 28), np.uint8))
    expected = r"expected uint8 images of shape \[N, 28, 28\], found uint8 of shape \[2, 27, 28\]"
    with pytest.raises(IdxError, match=expected):
        read_images(tmp_path / "img")
    write_idx(tmp_path / "img32", np.zeros((2, 28, 28), np.int32))
    with pytest.raises(IdxError, match="found int32"):
        read_images(tmp_path / "img32")


def test_labels_must_be_in_range(tmp_path):
    write_idx(tmp_path / "labels", np.array([0, 3, 10], np.uint8))
    with pytest.raises(IdxError, match=r"label 10 is outside 0..9"):
        read_labels(tmp_path / "labels", 10)


def test_image_and_label_counts_must_agree(tmp_path):
    write_idx(tmp_path / "img", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "lab", np.zeros(4, np.uint8))
    with pytest.raises(IdxError, match="holds 5 images but .* holds 4 labels"):
        read_pair(tmp_path / "img", tmp_path / "lab", 10)
