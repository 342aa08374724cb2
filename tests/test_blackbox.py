"""Black-box teachers (ecflow.blackbox): ONNX models and callables answer checked queries, bad
models and bad answers are one InputError, float32 models state their floor."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

from ecflow import blackbox, interop, teachers  # noqa: E402
from ecflow.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def tanh_teacher():
    return teachers.synthetic_teacher(teachers.TeacherConfig(4, (4,), "tanh"), 3)


def test_onnx_double_answers_equal_the_network(tanh_teacher, tmp_path):
    bb = blackbox.from_onnx(interop.write_onnx(tmp_path / "t.onnx", tanh_teacher))
    assert (bb.d_in, bb.d_out, bb.precision, bb.width) == (4, 1, "float64", None)
    assert bb.activation == "tanh" and bb.network is None
    x = teachers.sample_inputs(1000, 4, 0)
    xq, y = bb.query(x)
    np.testing.assert_array_equal(xq, x)
    np.testing.assert_allclose(y, tanh_teacher.forward(x), rtol=1e-13, atol=1e-13)
    assert bb.rmse_tolerance(y, 1e-10) == 1e-10
    assert bb.near_zero_loss(y) == 1e-14


def test_onnx_float32_floor(tanh_teacher, tmp_path):
    bb = blackbox.from_onnx(interop.write_onnx(tmp_path / "t.onnx", tanh_teacher, float32=True))
    assert bb.precision == "float32"
    x, y = bb.query(teachers.sample_inputs(5000, 4, 0))
    np.testing.assert_array_equal(x, x.astype(np.float32))
    exact = interop.read_onnx_network(tmp_path / "t.onnx").forward(x)
    noise = np.sqrt(np.mean((exact - y) ** 2))
    floor = bb.rmse_floor(y)
    assert 1e-9 < floor < 1e-7
    # The model's own float32 arithmetic is within the tolerance it is judged against.
    assert floor < noise < bb.rmse_tolerance(y, 1e-10) < 1e-5
    assert bb.near_zero_loss(y) == pytest.approx(bb.rmse_tolerance(y, 1e-10) ** 2)
    rep = bb.precision_report(y, 1e-10)
    assert rep["precision"] == "float32" and rep["rmse_floor"] == floor
    assert rep["rmse_tol"] == bb.rmse_tolerance(y, 1e-10) and "floor" in rep["precision_reason"]


def model_file(path, nodes, inputs, outputs, inits=None):
    inits = [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, "m", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(m.SerializeToString())
    return path


def vec(name, shape, elem=TensorProto.DOUBLE):
    return helper.make_tensor_value_info(name, elem, shape)


def test_bad_onnx_models(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(InputError, match="not a valid ONNX model"):
        blackbox.from_onnx(bad)
    two = model_file(tmp_path / "two.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                     [vec("a", ["N", 2]), vec("b", ["N", 2])], [vec("y", ["N", 2])])
    with pytest.raises(InputError, match="2 inputs"):
        blackbox.from_onnx(two)
    image = model_file(tmp_path / "img.onnx", [helper.make_node("Identity", ["a"], ["y"])],
                       [vec("a", ["N", 1, 3])], [vec("y", ["N", 1, 3])])
    with pytest.raises(InputError, match="not a batch of vectors"):
        blackbox.from_onnx(image)
    nan = model_file(tmp_path / "nan.onnx", [helper.make_node("Log", ["a"], ["y"])],
                     [vec("a", ["N", 2])], [vec("y", ["N", 2])])
    with pytest.raises(InputError, match="NaN or Inf"):
        blackbox.from_onnx(nan)
    ints = model_file(tmp_path / "int.onnx", [helper.make_node("Identity", ["a"], ["y"])],
                      [vec("a", ["N", 2], TensorProto.INT64)],
                      [vec("y", ["N", 2], TensorProto.INT64)])
    with pytest.raises(InputError, match="not float32 or float64"):
        blackbox.from_onnx(ints)


def test_several_outputs_need_a_choice(tmp_path):
    two = model_file(tmp_path / "two.onnx", [helper.make_node("Tanh", ["a"], ["y"]),
                                             helper.make_node("Sigmoid", ["a"], ["z"])],
                     [vec("a", ["N", 2])], [vec("y", ["N", 2]), vec("z", ["N", 2])])
    with pytest.raises(InputError, match="2 outputs"):
        blackbox.from_onnx(two)
    x = teachers.sample_inputs(4, 2, 0)
    np.testing.assert_allclose(blackbox.from_onnx(two, output="z")(x), 1 / (1 + np.exp(-x)))
    with pytest.raises(InputError, match="no output 'w'"):
        blackbox.from_onnx(two, output="w")


def test_fixed_batch_models_are_queried_in_chunks(tmp_path):
    fixed = model_file(tmp_path / "fixed.onnx", [helper.make_node("Tanh", ["a"], ["y"])],
                       [vec("a", [7, 3])], [vec("y", [7, 3])])
    bb = blackbox.from_onnx(fixed)
    x = teachers.sample_inputs(20, 3, 1)
    np.testing.assert_allclose(bb(x), np.tanh(x), rtol=1e-15)


def test_callable_teacher_is_checked():
    bb = blackbox.from_callable(lambda x: np.sin(x).sum(axis=1), 3)
    assert (bb.d_in, bb.d_out, bb.name) == (3, 1, "callable")
    x = teachers.sample_inputs(5, 3, 0)
    np.testing.assert_allclose(bb(x)[:, 0], np.sin(x).sum(axis=1))
    with pytest.raises(InputError, match="shape"):
        bb(np.zeros((5, 4)))
    with pytest.raises(InputError, match="NaN or Inf"):
        blackbox.from_callable(lambda x: np.full_like(x, np.nan), 2)
    with pytest.raises(InputError, match="shape"):
        blackbox.from_callable(lambda x: x[:1], 2)
    with pytest.raises(InputError, match="columns, d_out is 2"):
        blackbox.from_callable(lambda x: x[:, :1], 2, d_out=2)
    with pytest.raises(InputError, match="ZeroDivisionError"):
        blackbox.from_callable(lambda x: 1 / 0, 2)
    with pytest.raises(InputError, match="callable"):
        blackbox.from_callable(3, 2)
    with pytest.raises(InputError, match="d_in"):
        blackbox.from_callable(np.sin, 0)
    flaky = blackbox.from_callable(lambda x: np.where(x[:, :1] > 1.5, np.nan, x[:, :1]), 2)
    with pytest.raises(InputError, match="NaN or Inf for"):
        flaky(np.full((3, 2), 1.6))


def test_network_black_box_keeps_what_metrics_need(tanh_teacher):
    bb = blackbox.from_network(tanh_teacher)
    assert bb.width == 4 and bb.activation == "tanh" and bb.network is tanh_teacher
    x = teachers.sample_inputs(10, 4, 0)
    np.testing.assert_array_equal(bb(x), tanh_teacher.forward(x))


def test_width_and_activation_of_a_black_box(tanh_teacher, tmp_path):
    onnx_bb = blackbox.from_onnx(interop.write_onnx(tmp_path / "t.onnx", tanh_teacher))
    with pytest.raises(InputError, match="--hidden auto"):
        onnx_bb.known_width()
    assert blackbox.from_network(tanh_teacher).known_width() == 4
    assert onnx_bb.candidate_activations() == (["tanh"], "read from the model: the graph's "
                                               "only nonlinear operator is Tanh")
    assert onnx_bb.candidate_activations("relu")[0] == ["relu"]
    g_teacher = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "g"), 0)
    g_bb = blackbox.from_onnx(interop.write_onnx(tmp_path / "g.onnx", g_teacher))
    names, source = g_bb.candidate_activations()
    assert len(names) == 11 and "tries all" in source
