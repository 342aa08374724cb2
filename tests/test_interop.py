"""ONNX export and import (ecflow.interop): onnxruntime reproduces the forward pass, plain-MLP
graphs come back exactly, anything else is an InputError naming the node."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

onnxruntime = pytest.importorskip("onnxruntime")

from ecflow import interop  # noqa: E402
from ecflow.activations import ACTIVATIONS  # noqa: E402
from ecflow.errors import InputError  # noqa: E402
from ecflow.networks import MLP  # noqa: E402


def run_onnx(model, x):
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def random_mlp(activation, rng, sizes=(3, 5, 2)):
    weights = [rng.normal(size=(n_out, n_in)) * 3 for n_in, n_out in zip(sizes, sizes[1:])]
    biases = [rng.normal(size=n_out) * 2 for n_out in sizes[1:]]
    acts = [activation] * (len(sizes) - 2) + ["identity"]
    return MLP.from_arrays(weights, biases, acts)


# Large |z| reach the tails where a naive softplus overflows and a naive gelu cancels.
X = np.random.default_rng(1).uniform(-6, 6, size=(400, 3))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_double_export_equals_forward_pass_to_1e12(name):
    net = random_mlp(name, np.random.default_rng(0), sizes=(3, 6, 4, 2))
    model = interop.network_to_onnx(net)
    y = run_onnx(model, X)
    assert y.dtype == np.float64 and y.shape == (400, 2)
    np.testing.assert_allclose(y, net.forward(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_float32_export_is_the_float32_rounded_network(name):
    net = random_mlp(name, np.random.default_rng(0))
    model = interop.network_to_onnx(net, float32=True)
    y = run_onnx(model, X.astype(np.float32))
    assert y.dtype == np.float32
    rounded = interop.onnx_to_network(model)
    ref = rounded.forward(X.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * np.max(np.abs(ref)))
    for a, b in zip(rounded.layers, net.layers):
        np.testing.assert_array_equal(a.weight, b.weight.astype(np.float32).astype(np.float64))


def test_extreme_inputs_stay_finite():
    net = random_mlp("g", np.random.default_rng(2))
    y = run_onnx(interop.network_to_onnx(net), np.full((2, 3), 300.0) * [[1], [-1]])
    np.testing.assert_allclose(y, net.forward(np.full((2, 3), 300.0) * [[1], [-1]]), rtol=1e-12)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_import_round_trip_is_exact(name):
    net = random_mlp(name, np.random.default_rng(3), sizes=(4, 3, 5, 1))
    back = interop.onnx_to_network(interop.network_to_onnx(net))
    assert back.sizes == net.sizes
    assert [a.name for a in back.activations] == [a.name for a in net.activations]
    for a, b in zip(back.layers, net.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)


def graph(nodes, inits, d_in=3, d_out=1, elem=TensorProto.DOUBLE, inputs=None, opset=17):
    inputs = inputs or [helper.make_tensor_value_info("x", elem, ["N", d_in])]
    g = helper.make_graph(
        nodes, "test", inputs, [helper.make_tensor_value_info("y", elem, ["N", d_out])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def matmul_add_mlp(op, rng, dtype=np.float64, **attrs):
    """x -> MatMul -> Add -> op -> MatMul -> Add -> y, the way Keras and scikit-learn export."""
    W1, b1 = rng.normal(size=(3, 4)).astype(dtype), rng.normal(size=4).astype(dtype)
    W2, b2 = rng.normal(size=(4, 1)).astype(dtype), rng.normal(size=1).astype(dtype)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["z1"], name="dense1"),
        helper.make_node("Add", ["z1", "b1"], ["h1"], name="bias1"),
        helper.make_node(op, ["h1"], ["a1"], name="act1", **attrs),
        helper.make_node("MatMul", ["a1", "W2"], ["z2"], name="dense2"),
        helper.make_node("Add", ["z2", "b2"], ["y"], name="bias2"),
    ]
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    return graph(nodes, dict(W1=W1, b1=b1, W2=W2, b2=b2), elem=elem, opset=18), (W1, b1, W2, b2)


@pytest.mark.parametrize(
    "op, attrs, name",
    [("Tanh", {}, "tanh"), ("Sigmoid", {}, "sigmoid"), ("Relu", {}, "relu"),
     ("Softplus", {}, "softplus"), ("LeakyRelu", {"alpha": 0.01}, "leaky_relu"),
     ("Selu", {}, "selu"), ("Mish", {}, "mish")],
)
def test_import_native_activation_operators(op, attrs, name):
    # float32: onnxruntime lacks float64 kernels of several of these operators.
    model, (W1, b1, W2, b2) = matmul_add_mlp(op, np.random.default_rng(4), np.float32, **attrs)
    net = interop.onnx_to_network(model)
    assert net.sizes == (3, 4, 1) and net.activations[0].name == name
    np.testing.assert_array_equal(net.layers[0].weight, W1.T)
    np.testing.assert_array_equal(net.layers[1].bias, b2)
    x32 = X.astype(np.float32)
    np.testing.assert_allclose(net.forward(x32.astype(np.float64)), run_onnx(model, x32),
                               rtol=1e-5, atol=1e-5)


def test_import_pytorch_style_silu_and_gemm_attributes():
    rng = np.random.default_rng(5)
    W1, b1 = rng.normal(size=(4, 3)), rng.normal(size=4)
    W2, b2 = rng.normal(size=(4, 1)), rng.normal(size=1)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"], name="fc1", transB=1, alpha=2.0),
        helper.make_node("Sigmoid", ["z1"], ["s1"], name="sig"),
        helper.make_node("Mul", ["z1", "s1"], ["a1"], name="silu_mul"),
        helper.make_node("Gemm", ["a1", "W2", "b2"], ["y"], name="fc2", beta=0.5),
    ]
    model = graph(nodes, dict(W1=W1, b1=b1, W2=W2, b2=b2))
    net = interop.onnx_to_network(model)
    assert net.activations[0].name == "silu"
    np.testing.assert_allclose(net.forward(X), run_onnx(model, X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "op, attrs, fragment",
    [("Elu", {}, "node 'act1' (Elu)"), ("LeakyRelu", {"alpha": 0.2}, "node 'act1' (LeakyRelu)"),
     ("Softmax", {}, "node 'act1' (Softmax) is not supported")],
)
def test_unsupported_activation_names_the_node(op, attrs, fragment):
    model, _ = matmul_add_mlp(op, np.random.default_rng(6), **attrs)
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        interop.onnx_to_network(model)


def test_non_mlp_graphs_are_rejected():
    rng = np.random.default_rng(7)
    conv = graph(
        [helper.make_node("Conv", ["x", "K"], ["y"], name="conv0")],
        dict(K=rng.normal(size=(1, 1, 3))),
        inputs=[helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 1, 3])],
    )
    with pytest.raises(InputError, match="not a batch of vectors"):
        interop.onnx_to_network(conv)
    two_inputs = graph(
        [helper.make_node("Add", ["x", "x2"], ["y"], name="add")], {},
        inputs=[helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 3]),
                helper.make_tensor_value_info("x2", TensorProto.DOUBLE, ["N", 3])],
    )
    with pytest.raises(InputError, match="2 inputs"):
        interop.onnx_to_network(two_inputs)
    W = rng.normal(size=(3, 3))
    skip = graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"], name="mm"),
         helper.make_node("Add", ["z", "x"], ["y"], name="residual")], dict(W=W), d_out=3,
    )
    with pytest.raises(InputError, match="residual"):
        interop.onnx_to_network(skip)


def test_write_and_describe(tmp_path):
    net = random_mlp("tanh", np.random.default_rng(8))
    path = interop.write_onnx(tmp_path / "n.onnx", net)
    info = interop.describe_onnx(path)
    assert info.precision == "float64" and info.mlp_sizes == (3, 5, 2)
    assert info.activation == "tanh" and "Tanh" in info.activation_reason
    assert info.inputs[0].shape == (None, 3) and info.outputs[0].shape == (None, 2)
    rows = info.to_dict()
    assert rows["inputs"] == "input: float64[N, 3]" and "3 -> 5 -> 2" in rows["plain MLP"]
    np.testing.assert_array_equal(interop.read_onnx_network(path).layers[0].weight,
                                  net.layers[0].weight)
    info32 = interop.describe_onnx(interop.write_onnx(tmp_path / "f.onnx", net, float32=True))
    assert info32.precision == "float32"


def test_activation_guess_is_only_for_unambiguous_graphs(tmp_path):
    rng = np.random.default_rng(9)
    for name, expected in [("tanh", "tanh"), ("relu", "relu"), ("g", None), ("silu", None),
                           ("softplus", None), ("identity", "identity")]:
        model = interop.network_to_onnx(random_mlp(name, rng))
        assert interop.guess_activation(model)[0] == expected, name


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(InputError, match="not a valid ONNX model"):
        interop.load_onnx(bad)
    with pytest.raises(InputError, match="no such file"):
        interop.load_onnx(tmp_path / "missing.onnx")
