"""Networks: forward pass, flattening, HDF5 round trip, interop with an independent h5py
reader/writer of the spec, and rejection of every kind of invalid file."""

import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ecflow import networks
from ecflow.activations import ACTIVATIONS
from ecflow.networks import MLP, glorot_normal, read_network, read_network_file, read_pairs

from test_activations import REFERENCE

RNG = np.random.default_rng(7)


def _net(sizes=(3, 5, 4, 2), acts=("tanh", "g", "identity")):
    return glorot_normal(sizes, acts, 3)


# --- independent implementation of the spec: raw h5py and scalar math ----------------------------

def raw_write(path, weights, biases, acts, *, fmt="mlp", version=1, queries=None):
    with h5py.File(path, "w") as f:
        f.attrs["ecflow_format"] = fmt
        f.attrs["version"] = version
        for i, (w, b, a) in enumerate(zip(weights, biases, acts)):
            g = f.create_group(f"layers/{i}")
            g.attrs["activation"] = a
            g["weight"] = w
            g["bias"] = b
        if queries is not None:
            f["queries/x"], f["queries/y"] = queries


def naive_forward(weights, biases, acts, x):
    out = []
    for row in x:
        h = [float(v) for v in row]
        for w, b, a in zip(weights, biases, acts):
            h = [REFERENCE[a](sum(w[i][j] * h[j] for j in range(len(h))) + b[i])
                 for i in range(len(b))]
        out.append(h)
    return np.array(out)


def test_forward_matches_naive():
    net = _net()
    x = RNG.normal(size=(20, 3))
    ws = [l.weight.tolist() for l in net.layers]
    bs = [l.bias.tolist() for l in net.layers]
    ref = naive_forward(ws, bs, [a.name for a in net.activations], x)
    np.testing.assert_allclose(net(x), ref, rtol=1e-13, atol=1e-13)


def test_flatten_roundtrip_and_order():
    net = _net()
    theta = net.flatten()
    assert theta.shape == (net.n_params,)
    np.testing.assert_array_equal(theta[:15], net.layers[0].weight.ravel())
    np.testing.assert_array_equal(theta[15:20], net.layers[0].bias)
    net2 = net.unflatten(theta * 2)
    np.testing.assert_array_equal(net2.flatten(), theta * 2)
    with pytest.raises(ValueError, match="must have 54 entries"):
        net.unflatten(theta[:-1])


def test_hdf5_roundtrip_bit_exact(tmp_path):
    net = _net()
    x = RNG.normal(size=(10, 3))
    p = networks.write_network(tmp_path / "n.h5", net, x=x, y=net(x), attrs={"seed": 4, "note": "hi"})
    nf = read_network_file(p)
    for a, b in zip(net.layers, nf.network.layers):
        assert a.weight.tobytes() == b.weight.tobytes()
        assert a.bias.tobytes() == b.bias.tobytes()
        assert a.activation is b.activation
    assert nf.x.tobytes() == x.tobytes()
    assert nf.attrs == {"seed": 4, "note": "hi"}


def test_pairs_roundtrip(tmp_path):
    x, y = RNG.normal(size=(8, 2)), RNG.normal(size=(8, 1))
    networks.write_pairs(tmp_path / "p.h5", x, y)
    pf = read_pairs(tmp_path / "p.h5")
    assert pf.x.tobytes() == x.tobytes() and pf.y.tobytes() == y.tobytes()


def test_written_files_follow_spec_for_independent_reader(tmp_path):
    net = _net((4, 6, 3, 2), ("softplus", "relu", "identity"))
    networks.write_network(tmp_path / "n.h5", net)
    with h5py.File(tmp_path / "n.h5", "r") as f:
        assert f.attrs["ecflow_format"] == "mlp"
        assert int(f.attrs["version"]) == 1
        assert sorted(f["layers"].keys()) == ["0", "1", "2"]
        shapes = [f[f"layers/{i}/weight"].shape for i in range(3)]
        assert shapes == [(6, 4), (3, 6), (2, 3)]
        assert [f[f"layers/{i}/bias"].shape for i in range(3)] == [(6,), (3,), (2,)]
        assert f["layers/0/weight"].dtype == np.float64
        acts = [f[f"layers/{i}"].attrs["activation"] for i in range(3)]
        acts = [a.decode() if isinstance(a, bytes) else a for a in acts]
        assert acts == ["softplus", "relu", "identity"]


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("sizes", [(3, 4, 1), (2, 5, 3, 2)])
def test_reads_independently_written_files(tmp_path, act, sizes):
    rng = np.random.default_rng(11)
    ws = [rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(size=o) for o in sizes[1:]]
    acts = [act] * (len(sizes) - 2) + ["identity"]
    raw_write(tmp_path / "n.h5", ws, bs, acts)
    net = read_network(tmp_path / "n.h5")
    assert net.sizes == sizes
    x = rng.uniform(-math.sqrt(3), math.sqrt(3), size=(15, sizes[0]))
    ref = naive_forward([w.tolist() for w in ws], [b.tolist() for b in bs], acts, x)
    np.testing.assert_allclose(net(x), ref, rtol=1e-12, atol=1e-12)


# --- invalid files --------------------------------------------------------------------------------

def _good(path):
    raw_write(path, [np.ones((2, 3)), np.ones((1, 2))], [np.zeros(2), np.zeros(1)], ["tanh", "identity"])


def _mutate(path, fn):
    _good(path)
    with h5py.File(path, "a") as f:
        fn(f)


def _set(ds_path, value):
    def fn(f):
        del f[ds_path]
        f[ds_path] = value
    return fn


INVALID = {
    "missing": (None, "file not found"),
    "empty": (lambda p: open(p, "wb").close(), "file is empty"),
    "not_hdf5": (lambda p: open(p, "w").write("hello, not hdf5\n" * 10), "not a readable HDF5"),
    "truncated": (lambda p: (_good(p), os.truncate(p, os.path.getsize(p) // 2)), "HDF5"),
    "no_format": (lambda p: _mutate(p, lambda f: f.attrs.__delitem__("ecflow_format")), "missing root attribute 'ecflow_format'"),
    "wrong_format": (lambda p: _mutate(p, lambda f: f.attrs.__setitem__("ecflow_format", "keras")), "ecflow_format is 'keras'"),
    "wrong_version": (lambda p: _mutate(p, lambda f: f.attrs.__setitem__("version", 7)), "unsupported version 7"),
    "no_layers": (lambda p: _mutate(p, lambda f: f.__delitem__("layers")), "missing group /layers"),
    "gap": (lambda p: _mutate(p, lambda f: f.move("layers/1", "layers/2")), "gap in layer numbering"),
    "bad_name": (lambda p: _mutate(p, lambda f: f.move("layers/1", "layers/one")), "must hold groups named"),
    "missing_weight": (lambda p: _mutate(p, lambda f: f.__delitem__("layers/1/weight")), "missing dataset /layers/1/weight"),
    "shape_chain": (lambda p: _mutate(p, _set("layers/1/weight", np.ones((1, 3)))), "n_in = 3 but layer 0 has n_out = 2"),
    "bias_shape": (lambda p: _mutate(p, _set("layers/0/bias", np.zeros(5))), "bias has 5 entries"),
    "int_dataset": (lambda p: _mutate(p, _set("layers/0/weight", np.ones((2, 3), dtype=np.int64))), "must be a float dataset"),
    "nan": (lambda p: _mutate(p, _set("layers/0/weight", np.full((2, 3), np.nan))), "contains NaN or Inf"),
    "inf": (lambda p: _mutate(p, _set("layers/1/bias", np.array([np.inf]))), "contains NaN or Inf"),
    "unknown_activation": (lambda p: _mutate(p, lambda f: f["layers/0"].attrs.__setitem__("activation", "swish")), "unknown activation 'swish'"),
    "no_activation": (lambda p: _mutate(p, lambda f: f["layers/0"].attrs.__delitem__("activation")), "has no 'activation'"),
    "weight_1d": (lambda p: _mutate(p, _set("layers/0/weight", np.ones(3))), "must be 2-dimensional"),
    "bad_queries": (lambda p: _mutate(p, lambda f: (f.__setitem__("queries/x", np.ones((4, 3))), f.__setitem__("queries/y", np.ones((5, 1))))), "has 4 rows but /queries/y has 5"),
    "queries_dims": (lambda p: _mutate(p, lambda f: (f.__setitem__("queries/x", np.ones((4, 2))), f.__setitem__("queries/y", np.ones((4, 1))))), "but the network is 3 -> 1"),
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_network_files_rejected(tmp_path, kind):
    make, message = INVALID[kind]
    p = tmp_path / "bad.h5"
    if make is not None:
        make(p)
    with pytest.raises(ValueError, match=message):
        read_network(p)


@pytest.mark.parametrize("kind", ["no_queries", "nan_y", "int_x", "mismatch", "mlp_file"])
def test_invalid_pairs_files_rejected(tmp_path, kind):
    p = tmp_path / "p.h5"
    with h5py.File(p, "w") as f:
        f.attrs["ecflow_format"] = "pairs" if kind != "mlp_file" else "mlp"
        f.attrs["version"] = 1
        x, y = np.ones((4, 2)), np.ones((4, 1))
        if kind == "nan_y":
            y[1] = np.nan
        if kind == "int_x":
            x = x.astype(int)
        if kind == "mismatch":
            y = np.ones((3, 1))
        if kind != "no_queries":
            f["queries/x"], f["queries/y"] = x, y
    with pytest.raises(ValueError):
        read_pairs(p)


def test_layer_and_mlp_validation():
    with pytest.raises(TypeError, match="floating-point"):
        networks.Layer(np.ones((2, 2), dtype=int), np.zeros(2), "tanh")
    with pytest.raises(ValueError, match="NaN"):
        networks.Layer(np.full((2, 2), np.nan), np.zeros(2), "tanh")
    with pytest.raises(ValueError, match="n_in = 3 but layer 0 has n_out = 2"):
        MLP.from_arrays([np.ones((2, 2)), np.ones((1, 3))], [np.zeros(2), np.zeros(1)], ["tanh", "identity"])
    with pytest.raises(ValueError, match="d_in = 3"):
        _net()(np.ones((2, 4)))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with networks.atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="does not exist"):
        networks.write_network(tmp_path / "nofolder" / "x.h5", _net())


def test_job_file_roundtrip(tmp_path):
    net = _net()
    x = RNG.normal(size=(6, 3))
    networks.write_job(tmp_path / "j.h5", x, net(x), net, {"optimizer": "lm", "loss_tol": 1e-31})
    job = networks.read_job(tmp_path / "j.h5")
    assert job.settings == {"optimizer": "lm", "loss_tol": 1e-31}
    np.testing.assert_array_equal(job.init.flatten(), net.flatten())
    with pytest.raises(ValueError, match="ecflow_format is 'job', expected 'mlp'"):
        read_network(tmp_path / "j.h5")


def test_glorot_normal_statistics():
    net = glorot_normal((200, 300, 1), ("g", "identity"), 0)
    assert net.layers[0].weight.std() == pytest.approx(np.sqrt(2 / 500), rel=0.02)
    assert np.all(net.layers[0].bias == 0)
    np.testing.assert_array_equal(
        glorot_normal((3, 4, 1), ("g", "identity"), 5).flatten(),
        glorot_normal((3, 4, 1), ("g", "identity"), 5).flatten(),
    )


def test_standardise_inputs_folds_a_full_batch_norm():
    from ecflow.networks import Layer, standardise_inputs

    rng = np.random.default_rng(0)
    h = rng.normal(3.0, [0.5, 2.0, 1.0], size=(500, 3))
    h[:, 2] = 7.0  # a constant column is left unscaled
    layer = Layer(rng.normal(size=(2, 3)), rng.normal(size=2), "tanh")
    out = standardise_inputs(layer, h)
    mu, sd = h.mean(axis=0), np.where(h.std(axis=0) > 0, h.std(axis=0), 1.0)
    np.testing.assert_allclose(
        h @ out.weight.T + out.bias, ((h - mu) / sd) @ layer.weight.T + layer.bias, atol=1e-12
    )
    assert out.activation.name == "tanh"
    with pytest.raises(ValueError, match="columns"):
        standardise_inputs(layer, h[:, :2])
