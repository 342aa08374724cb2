"""CLI: ecflow import / export / info on ONNX models, recover --teacher model.onnx --hidden auto;
bad files are one line and exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")

from ecflow import interop, networks, teachers  # noqa: E402
from ecflow.cli import main  # noqa: E402


def cli(argv, cwd):
    # In-process: a subprocess pays the package import again (seconds on a loaded machine).
    old = os.getcwd()
    os.chdir(cwd)
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code
    finally:
        os.chdir(old)
    return 0


def assert_one_line_exit_2(code, capsys, fragment):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error:"), err
    assert fragment in lines[0]


def test_export_import_info_round_trip(tmp_path, capsys):
    net = teachers.synthetic_teacher(teachers.TeacherConfig(3, (5,), "g"), 2)
    networks.write_network(tmp_path / "t.h5", net)
    assert cli(["export", "t.h5", "--onnx", "t.onnx"], tmp_path) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "t.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = teachers.sample_inputs(2000, 3, 5)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], net.forward(x),
                               rtol=1e-12, atol=1e-12)
    capsys.readouterr()
    assert cli(["info", "t.onnx"], tmp_path) == 0
    out = capsys.readouterr().out
    assert "float64[N, 3]" in out and "3 -> 5 -> 1" in out
    assert cli(["import", "t.onnx", "--out", "back.h5"], tmp_path) == 0
    back = networks.read_network(tmp_path / "back.h5")
    np.testing.assert_array_equal(back.layers[0].weight, net.layers[0].weight)
    assert back.activations[0].name == "g"
    capsys.readouterr()
    assert cli(["export", "t.h5", "--onnx", "t32.onnx", "--float32"], tmp_path) == 0
    assert "float32" in capsys.readouterr().out
    assert cli(["info", "t32.onnx"], tmp_path) == 0
    assert "float32" in capsys.readouterr().out


def test_corrupt_onnx_is_one_line_exit_2_in_a_real_process(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model at all")
    res = subprocess.run([sys.executable, "-m", "ecflow", "info", "bad.onnx"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a valid ONNX model" in lines[0]
    assert "Traceback" not in res.stderr


def test_bad_files_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model at all")
    assert_one_line_exit_2(cli(["import", "bad.onnx", "--out", "x.h5"], tmp_path), capsys,
                           "not a valid ONNX model")
    assert_one_line_exit_2(cli(["import", "missing.onnx", "--out", "x.h5"], tmp_path), capsys,
                           "no such file")
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 0)
    networks.write_network(tmp_path / "t.h5", net)
    assert_one_line_exit_2(cli(["export", "t.h5", "--onnx", "t.txt"], tmp_path), capsys,
                           ".onnx")


@pytest.fixture
def tanh_onnx(tmp_path):
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 0)
    return interop.write_onnx(tmp_path / "t.onnx", net)


def test_recover_an_onnx_black_box_with_auto_width(tanh_onnx, tmp_path, capsys):
    code = cli(["recover", "--teacher", "t.onnx", "--hidden", "auto", "--students", 4,
                "--n-queries", 2000, "--n-fresh", 1000, "--max-seconds", 10, "--workers", 1,
                "--out", "rec.h5", "--report", "rec.json", "--plots", "figs"], tmp_path)
    out = capsys.readouterr().out
    assert code == 0
    rep = json.loads((tmp_path / "rec.json").read_text())
    assert rep["status"] == "RECOVERED" and rep["hidden_sizes"] == [2]
    assert rep["rmse_fresh"] <= 1e-10 and rep["precision"] == "float64"
    assert rep["width_search"]["activation"] == "tanh" and rep["width_search"]["width"] >= 2
    assert (tmp_path / "figs" / "width_search.png").is_file()
    assert "Width search" in out
    assert cli(["export", "rec.h5", "--onnx", "rec.onnx"], tmp_path) == 0


def test_recover_black_box_bad_input_is_one_line(tanh_onnx, tmp_path, capsys):
    assert_one_line_exit_2(cli(["recover", "--teacher", "t.onnx", "--rho", 2, "--out", "r.h5"],
                               tmp_path), capsys, "--hidden auto")
    (tmp_path / "bad.onnx").write_bytes(b"\x0a\x0bnot onnx")
    assert_one_line_exit_2(cli(["recover", "--teacher", "bad.onnx", "--hidden", "auto",
                                "--out", "r.h5"], tmp_path), capsys, "not a valid ONNX model")
