"""CLI: ecflow import / export / info on ONNX models; bad files are one line and exit 2."""

import subprocess
import sys

import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")

from ecflow import networks, teachers  # noqa: E402


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ecflow", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_exit_2(res, fragment):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error:"), res.stderr
    assert fragment in lines[0]


def test_export_import_info_round_trip(tmp_path):
    net = teachers.synthetic_teacher(teachers.TeacherConfig(3, (5,), "g"), 2)
    networks.write_network(tmp_path / "t.h5", net)
    res = run("export", "t.h5", "--onnx", "t.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "t.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = teachers.sample_inputs(2000, 3, 5)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], net.forward(x),
                               rtol=1e-12, atol=1e-12)
    res = run("info", "t.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "float64[N, 3]" in res.stdout and "3 -> 5 -> 1" in res.stdout
    res = run("import", "t.onnx", "--out", "back.h5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    back = networks.read_network(tmp_path / "back.h5")
    np.testing.assert_array_equal(back.layers[0].weight, net.layers[0].weight)
    assert back.activations[0].name == "g"
    res = run("export", "t.h5", "--onnx", "t32.onnx", "--float32", cwd=tmp_path)
    assert res.returncode == 0 and "float32" in res.stdout
    assert "float32" in run("info", "t32.onnx", cwd=tmp_path).stdout


def test_bad_files_are_one_line_exit_2(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model at all")
    for args in (("info", "bad.onnx"), ("import", "bad.onnx", "--out", "x.h5")):
        assert_one_line_exit_2(run(*args, cwd=tmp_path), "not a valid ONNX model")
    assert_one_line_exit_2(run("import", "missing.onnx", "--out", "x.h5", cwd=tmp_path),
                           "no such file")
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 0)
    networks.write_network(tmp_path / "t.h5", net)
    assert_one_line_exit_2(run("export", "t.h5", "--onnx", "t.txt", cwd=tmp_path), ".onnx")
