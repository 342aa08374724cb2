"""Data sets: shapes, scaling, the IDX reader, the missing-package message, query resolution."""

import gzip

import numpy as np
import pytest

from ecflow import datasets, networks
from ecflow.errors import InputError


def _fashion_or_skip(split=None):
    try:
        return datasets.load("fashion", split)
    except InputError as exc:
        pytest.skip(str(exc))


def _write_idx(path, array, compress):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """A Fashion-MNIST folder of 5 training and 3 test images of 2×3 pixels (train gzipped)."""
    rng = np.random.default_rng(0)
    parts = {"train": 5, "t10k": 3}
    for stem, n in parts.items():
        compress = stem == "train"
        images = rng.integers(0, 256, (n, 2, 3))
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", images, compress)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    monkeypatch.setenv(datasets.FASHION_DIR_VARIABLE, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    "name, n, d_in, shape",
    [("digits", 1797, 64, (8, 8)), ("mnist", 5000, 784, (28, 28))],
)
def test_bundled_datasets_load_scaled_into_unit_interval(name, n, d_in, shape):
    data = datasets.load(name)
    assert data.x.shape == (n, d_in) and data.x.dtype == np.float64
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert data.labels.dtype == np.int64 and set(np.unique(data.labels)) == set(range(10))
    assert data.image_shape == shape and data.n_classes == 10
    assert data.split is None and data.source
    assert not data.x.flags.writeable


def test_mnist_subset_is_balanced():
    assert np.all(np.bincount(datasets.load("mnist").labels) == 500)


def test_digits_pixels_are_sixteenths():
    x = datasets.load("digits").x
    np.testing.assert_array_equal(x * 16.0, np.round(x * 16.0))


def test_fashion_from_the_debian_package():
    data = _fashion_or_skip()
    assert data.x.shape == (70000, 784) and data.image_shape == (28, 28)
    assert data.x.max() == 1.0
    assert _fashion_or_skip("test").x.shape == (10000, 784)


def test_fashion_reads_idx_files_gzipped_or_not(fake_fashion):
    data = datasets.load("fashion")
    assert data.x.shape == (8, 6) and data.image_shape == (2, 3)
    np.testing.assert_array_equal(data.labels, [0, 1, 2, 3, 4, 0, 1, 2])
    assert datasets.load("fashion", "test").x.shape == (3, 6)
    assert np.all((data.x >= 0) & (data.x <= 1))


def test_fashion_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.FASHION_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist") as info:
        datasets.load("fashion")
    assert "\n" not in str(info.value)


def test_fashion_corrupt_idx_is_input_error(fake_fashion):
    (fake_fashion / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01junk")
    with pytest.raises(InputError, match="not an IDX file"):
        datasets.load("fashion", "test")


def test_fashion_truncated_idx_is_input_error(fake_fashion):
    path = fake_fashion / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(InputError, match="header says"):
        datasets.load("fashion", "test")


@pytest.mark.parametrize(
    "name, split, message",
    [
        ("cifar", None, "unknown data set"),
        ("digits", "train", "no split"),
        ("fashion", "val", "no split"),
    ],
)
def test_load_rejects_unknown_names_and_splits(name, split, message):
    with pytest.raises(InputError, match=message):
        datasets.load(name, split)


def test_query_inputs_from_a_dataset_is_a_writable_copy():
    x = datasets.query_inputs("digits", 64)
    assert x.shape == (1797, 64) and x.dtype == np.float64
    x[0, 0] = 5.0
    assert datasets.load("digits").x[0, 0] == 0.0


def test_query_inputs_with_a_split(fake_fashion):
    assert datasets.query_inputs("fashion:test", 6).shape == (3, 6)


def test_query_inputs_width_mismatch_names_both_widths():
    with pytest.raises(InputError, match="64 inputs per row but the teacher takes 784"):
        datasets.query_inputs("digits", 784)


def test_query_inputs_from_npy_flattens_images(tmp_path):
    images = np.random.default_rng(1).random((4, 2, 3))
    np.save(tmp_path / "q.npy", images)
    x = datasets.query_inputs(tmp_path / "q.npy", 6)
    np.testing.assert_array_equal(x, images.reshape(4, 6))


def test_query_inputs_from_pairs_and_network_files(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.random((5, 3)), rng.random((5, 2))
    networks.write_pairs(tmp_path / "p.h5", x, y)
    np.testing.assert_array_equal(datasets.query_inputs(str(tmp_path / "p.h5"), 3), x)
    net = networks.glorot_normal((3, 4, 2), ("tanh", "identity"), 0)
    networks.write_network(tmp_path / "t.h5", net, x=x, y=net.forward(x))
    np.testing.assert_array_equal(datasets.query_inputs(tmp_path / "t.h5", 3), x)
    networks.write_network(tmp_path / "bare.h5", net)
    with pytest.raises(InputError, match="no /queries"):
        datasets.query_inputs(tmp_path / "bare.h5", 3)


@pytest.mark.parametrize(
    "content, name, message",
    [
        (None, "missing.npy", "neither a data set"),
        (np.array([[1.0, np.nan]]), "nan.npy", "NaN or Inf"),
        (np.zeros((0, 2)), "empty.npy", "expected query inputs"),
        (np.zeros(2), "flat.npy", "expected query inputs"),
        (np.array([["a", "b"]]), "text.npy", "must be numbers"),
        ("1,2\n", "q.csv", "unknown query file type"),
    ],
)
def test_query_inputs_rejects_bad_files(tmp_path, content, name, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, str):
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        datasets.query_inputs(path, 2)
