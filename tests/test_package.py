"""The package as a user installs and imports it: the public names, the optional extras and
the one line a missing extra gives."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import ecflow
from ecflow import networks, teachers

ROOT = Path(__file__).resolve().parents[1]


def test_import_ecflow_gives_the_main_names():
    for name in ("recover", "RecoverConfig", "load_network", "save_network",
                 "synthetic_teacher", "run_sweep"):
        assert name in ecflow.__all__ and name in dir(ecflow)
        assert callable(getattr(ecflow, name)), name
    from ecflow.recover import RecoverConfig, recover

    assert ecflow.recover is recover and ecflow.RecoverConfig is RecoverConfig
    assert ecflow.load_network is networks.read_network
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ecflow.nope  # noqa: B018


def test_importing_the_recover_module_keeps_the_recover_function():
    code = ("import ecflow.recover, ecflow; from ecflow.recover import recover; "
            "assert ecflow.recover is recover, ecflow.recover")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_save_and_load_network_round_trip(tmp_path):
    net = ecflow.synthetic_teacher(ecflow.TeacherConfig(d_in=3, hidden=(2,)), seed=1)
    ecflow.save_network(tmp_path / "t.h5", net)
    back = ecflow.load_network(tmp_path / "t.h5")
    assert back.sizes == (3, 2, 1)


def test_optional_dependencies_are_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for optional in ("onnx", "onnxruntime", "dask", "scikit-learn", "juliacall", "pytest"):
        assert optional not in core, optional
    extras = project["optional-dependencies"]
    assert {"onnx", "dask", "datasets", "julia", "test", "bench", "all"} <= set(extras)
    assert any("onnxruntime" in d for d in extras["onnx"])
    assert any("scikit-learn" in d for d in extras["datasets"])
    assert extras["all"] == ["ecflow[onnx,dask,datasets,julia]"]


# Runs the CLI with the given modules unimportable, as on an install without the extra.
_WITHOUT = """
import sys
for name in {modules!r}:
    sys.modules[name] = None
from ecflow.cli import main
main(sys.argv[1:])
"""


def _without(modules, *args, cwd):
    return subprocess.run([sys.executable, "-c", _WITHOUT.format(modules=modules), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def _one_line(res, fragment):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert fragment in lines[0], lines[0]


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 0)
    networks.write_network(tmp_path / "t.h5", net)
    (tmp_path / "model.onnx").write_bytes(b"whatever: onnx is never reached")
    _one_line(_without(["onnx", "onnxruntime"], "recover", "--teacher", "model.onnx", "--rho", 2,
                       "--out", "o.h5", cwd=tmp_path), "pip install 'ecflow[onnx]'")
    _one_line(_without(["onnx", "onnxruntime"], "info", "model.onnx", cwd=tmp_path),
              "pip install 'ecflow[onnx]'")
    _one_line(_without(["sklearn", "sklearn.datasets"], "recover", "--teacher", "t.h5",
                       "--rho", 2, "--queries", "digits", "--out", "o.h5", cwd=tmp_path),
              "'scikit-learn' package, which is not installed: pip install 'ecflow[datasets]'")
    _one_line(_without(["distributed"], "recover", "--teacher", "t.h5", "--rho", 2,
                       "--scheduler", "tcp://127.0.0.1:1", "--out", "o.h5", cwd=tmp_path),
              "pip install 'ecflow[dask]'")
    assert not (tmp_path / "o.h5").exists()
