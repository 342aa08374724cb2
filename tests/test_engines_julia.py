"""The optional julia engine: availability checks, the julia/ project, the worker's contract with
the job protocol, and (where Julia is installed) training parametrised over both engines."""

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from ecflow.activations import ACTIVATIONS
from ecflow.engines import TrainConfig, TrainStatus, get_engine
from ecflow.engines.base import loss_floor
from ecflow.engines import julia as julia_engine
from ecflow.engines import jobs
from ecflow import networks
from ecflow.networks import glorot_normal
from ecflow.teachers import TeacherConfig, synthetic_teacher

JULIA_DIR = Path(__file__).resolve().parents[1] / "julia"
WORKER = (JULIA_DIR / "worker.jl").read_text()
HAS_JULIA = julia_engine.julia_available()
needs_julia = pytest.mark.skipif(not HAS_JULIA, reason="Julia is not available")

ENGINES = [
    "native",
    pytest.param("julia", marks=[needs_julia, pytest.mark.julia]),
]


@pytest.fixture
def no_julia(monkeypatch, tmp_path):
    """An environment where no Julia can be found (whatever this machine has installed)."""
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def fake_julia(folder: Path, version: str) -> Path:
    """An executable that answers ``--version`` like Julia does."""
    exe = folder / "julia"
    exe.write_text(f"#!/bin/sh\necho 'julia version {version}'\n")
    exe.chmod(0o755)
    return exe


# --- availability --------------------------------------------------------------------------------


def test_without_julia_get_engine_fails_fast_with_install_advice(no_julia):
    had_juliacall = "juliacall" in sys.modules
    with pytest.raises(ValueError) as info:
        get_engine("julia")
    message = str(info.value)
    assert "\n" not in message
    for fragment in ("Julia >= 1.10", "juliaup", "pip install 'ecflow[julia]'", "--engine native"):
        assert fragment in message
    # the check never imports juliacall (whose import could download Julia)
    assert ("juliacall" in sys.modules) == had_juliacall


def test_too_old_julia_is_refused(no_julia, monkeypatch):
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(fake_julia(no_julia, "1.9.4")))
    with pytest.raises(ValueError, match=r"Julia >= 1\.10.*found 1\.9\.4"):
        julia_engine.check_julia()


def test_julia_without_juliacall_is_refused(no_julia, monkeypatch):
    exe = fake_julia(no_julia, "1.10.5")  # on PATH
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "juliacall" else real_find_spec(name, *a),
    )
    assert julia_engine.find_julia() == str(exe)
    with pytest.raises(ValueError, match="juliacall is not installed"):
        julia_engine.check_julia()
    assert not julia_engine.julia_available()


def test_configured_julia_is_used_and_a_broken_setting_is_not_replaced(no_julia, monkeypatch):
    other = no_julia.parent / "other"
    other.mkdir()
    configured = fake_julia(other, "1.11.2")
    fake_julia(no_julia, "1.10.0")  # a different Julia on PATH
    monkeypatch.setenv("PYTHON_JULIACALL_EXE", str(configured))
    assert julia_engine.find_julia() == str(configured)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "juliacall" else real_find_spec(name, *a),
    )
    assert julia_engine.check_julia() == str(configured)
    monkeypatch.setenv("PYTHON_JULIACALL_EXE", str(other / "does-not-exist"))
    assert julia_engine.find_julia() is None
    with pytest.raises(ValueError, match="Julia >= 1.10"):
        julia_engine.check_julia()


COMMANDS = {
    "train-job": lambda d: ["train-job", d / "job.h5", "--out", d / "out.h5"],
    "train": lambda d: ["train", "--data", d / "pairs.h5", "--hidden", "3", "--seed", "0",
                        "--out", d / "out.h5"],
    "synthetic-sweep": lambda d: ["synthetic-sweep", "--out", d / "sweep", "--d-in", "2", "--r", "2",
                                  "--rho", "1", "--teachers", "1", "--students", "1"],
    "recover": lambda d: ["recover", "--data", d / "pairs.h5", "--hidden", "4", "--students", "2",
                          "--out", d / "out.h5"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_engine_julia_without_julia_on_the_command_line(command, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    init = glorot_normal((2, 3, 1), ["g", "identity"], 0)
    networks.write_pairs(tmp_path / "pairs.h5", x, init(x))
    jobs.write_job_file(tmp_path / "job.h5", x, init(x), init, TrainConfig(max_seconds=5))
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON_JULIA")}
    env["PATH"] = str(empty)
    before = set(tmp_path.iterdir())
    res = subprocess.run(
        [sys.executable, "-m", "ecflow", *map(str, COMMANDS[command](tmp_path)), "--engine", "julia"],
        capture_output=True, text=True, env=env,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error:"), res.stderr
    assert "Julia >= 1.10" in lines[0] and "pip install 'ecflow[julia]'" in lines[0]
    assert set(tmp_path.iterdir()) == before  # no output, not even a temporary file


# --- the julia/ project and the worker's contract -------------------------------------------------


def test_project_toml_names_mlpgradientflow_with_real_uuids_and_bounds():
    project = tomllib.loads((JULIA_DIR / "Project.toml").read_text())
    deps = project["deps"]
    # UUIDs as in the packages' own Project.toml files
    assert deps["MLPGradientFlow"] == "5710a1e5-60a8-4c70-afc1-f14619eff7f5"
    assert deps["HDF5"] == "f67ccb44-e63f-5c2f-98bd-6dc0ccc4ba2f"
    compat = project["compat"]
    assert compat["julia"] == "1.10"
    stdlibs = {"LinearAlgebra", "Pkg"}
    assert set(deps) - stdlibs <= set(compat), "every registered dependency needs a bound"
    assert compat["MLPGradientFlow"] == "0.3"
    assert project["sources"]["MLPGradientFlow"]["url"].endswith("MLPGradientFlow.jl.git")
    assert julia_engine.julia_project_dir() == JULIA_DIR


def test_worker_imports_only_declared_packages():
    project = tomllib.loads((JULIA_DIR / "Project.toml").read_text())
    used = set(re.findall(r"^\s*(?:using|import)\s+(\w+)", WORKER, flags=re.M))
    assert used <= set(project["deps"]), used - set(project["deps"])


def test_worker_supports_every_activation_of_the_spec():
    block = re.search(r"const ACTIVATIONS = Dict\{String,Any\}\((.*?)\n\)", WORKER, re.S).group(1)
    names = set(re.findall(r'"(\w+)" =>', block))
    assert names == set(ACTIVATIONS)


def test_worker_writes_the_result_fields_read_by_python():
    block = re.search(r"fields = Dict\{String,Any\}\((.*?)\n    \)", WORKER, re.S).group(1)
    written = set(re.findall(r'"(\w+)" =>', block))
    assert written == {
        "loss", "rmse", "grad_norm", "status", "stopped_by", "steps", "seconds", "engine",
        "history", "notes",
    }
    emitted = set(re.findall(r'"([A-Z_]+)"', WORKER.split("function status_name")[1].split("\nend")[0]))
    assert emitted and emitted <= {s.name for s in TrainStatus}


def test_worker_reads_every_setting_python_writes():
    read = set(re.findall(r'setting\(a, "(\w+)"', WORKER))
    written = set(jobs.config_to_settings(TrainConfig(max_seconds=1.0, target_loss=1e-8)))
    assert read == written
    for value in ("lm-first", "flow-first", "lm", "trust-exact", "bfgs"):
        assert f'"{value}"' in WORKER


# --- training, parametrised over engines ----------------------------------------------------------


def near_teacher_job(seed=0, n=200):
    """A 2-3-1 g teacher and a student started 1e-2 away from it: both engines must reach the
    global minimum (the teacher) from there."""
    teacher = synthetic_teacher(TeacherConfig(d_in=2, hidden=(3,), n_normalise=5000), seed + 10)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.sqrt(3), np.sqrt(3), size=(n, 2))
    init = teacher.unflatten(teacher.flatten() + 1e-2 * rng.normal(size=teacher.n_params))
    return teacher, x, teacher(x), init


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_runs_the_same_job_files(engine, tmp_path):
    teacher, x, y, init = near_teacher_job()
    job, out = tmp_path / "job.h5", tmp_path / "r.h5"
    jobs.write_job_file(job, x, y, init, TrainConfig(max_seconds=10), engine=engine)
    result = jobs.run_job(job, out)
    back = jobs.read_result_file(out)
    assert back.engine == engine == result.engine
    assert back.network.sizes == init.sizes
    assert [a.name for a in back.network.activations] == ["g", "identity"]
    mse = float(np.mean((back.network(x) - y) ** 2))
    assert back.loss == pytest.approx(mse, rel=1e-6, abs=loss_floor(y, init.sizes))
    assert back.rmse == pytest.approx(np.sqrt(back.loss), rel=1e-12, abs=1e-300)
    assert back.loss < float(np.mean((init(x) - y) ** 2))
    assert isinstance(back.status, TrainStatus) and back.steps >= 1
    assert back.history.shape[1] == 2 and np.all(np.diff(back.history[:, 0]) >= 0)


@needs_julia
@pytest.mark.julia
def test_cross_engine_same_job_same_function(tmp_path):
    teacher, x, y, init = near_teacher_job(seed=1, n=300)
    job = tmp_path / "job.h5"
    jobs.write_job_file(job, x, y, init, TrainConfig(max_seconds=60, optimizer="trust-exact"))
    results = {e: jobs.run_job(job, tmp_path / f"{e}.h5", engine=e) for e in ("native", "julia")}
    fresh = np.random.default_rng(99).uniform(-np.sqrt(3), np.sqrt(3), size=(2000, 2))
    for engine, result in results.items():
        assert result.rmse <= 1e-12, (engine, result.rmse, result.stopped_by)
    out = {e: r.network(fresh) for e, r in results.items()}
    np.testing.assert_allclose(out["julia"], out["native"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(out["julia"], teacher(fresh), rtol=0, atol=1e-10)


@needs_julia
@pytest.mark.julia
@pytest.mark.parametrize("activation", ["selu", "leaky_relu", "mish", "tanh", "gelu"])
def test_julia_activations_match_ecflow(activation, tmp_path):
    # zero time budget: the worker returns its start point, evaluated with its own activation
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 2)) * 2
    net = glorot_normal((2, 4, 1), [activation, "identity"], 3)
    net = net.unflatten(net.flatten() + rng.normal(size=net.n_params))
    config = TrainConfig(max_steps=1, flow_seconds=0, polish_seconds=0, max_seconds=1e-3)
    result = get_engine("julia").train(x, net(x), net, config)
    assert result.loss <= 1e-28, (activation, result.loss)


# --- the bridge, with a stand-in for juliacall ---------------------------------------------------


class JuliaError(Exception):
    """Named like juliacall's exception, which the bridge recognises by name."""


class FakeWorker:
    """Plays ECFlowWorker: reads the job file, 'trains' by returning the start point, and writes
    the result with fixed-length strings as HDF5.jl does."""

    def __init__(self):
        self.jobs = []

    def run_job(self, job, result):
        self.jobs.append(job)
        x, y, init, config, engine = jobs.read_job_file(job)
        if config.max_steps == 13:
            raise JuliaError("ArgumentError: job file: unknown activation \"swish\"\nStacktrace: ...")
        loss = float(np.mean((init(x) - y) ** 2))
        networks.write_network(result, init, attrs={
            "loss": loss, "rmse": np.sqrt(loss), "grad_norm": 0.5, "seconds": 0.25,
            "steps": np.int64(config.max_steps), "status": np.bytes_(b"STALLED"),
            "stopped_by": np.bytes_(engine.encode() + b": patience"),
            "engine": np.bytes_(b"julia"), "history": np.array([[0.0, loss], [0.25, loss]]),
            "notes": ["MLPGradientFlow.jl 0.3.0"],
        })


@pytest.fixture
def fake_juliacall(no_julia, monkeypatch):
    exe = fake_julia(no_julia, "1.10.4")
    # empty counts as unset; recorded so that the bridge's pinning is undone after the test
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", "")
    worker = FakeWorker()
    evaluated = []

    class Module:
        def seval(self, code):
            evaluated.append(code)
            return worker if code == "ECFlowWorker" else None

    fake = type(sys)("juliacall")
    fake.newmodule = lambda name: Module()
    monkeypatch.setitem(sys.modules, "juliacall", fake)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "juliacall" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(julia_engine, "_WORKER", None)
    return exe, worker, evaluated


def test_bridge_round_trip_through_job_and_result_files(fake_juliacall):
    exe, worker, evaluated = fake_juliacall
    engine = get_engine("julia")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3))
    init = glorot_normal((3, 4, 2), ["tanh", "identity"], 1)
    y = init(x) + 0.1
    seen = []
    result = engine.train(x, y, init, TrainConfig(max_steps=77),
                          progress=lambda t, loss: seen.append((t, loss)))
    # Julia was started once, pinned to the Julia found, and the worker included from julia/
    assert os.environ["PYTHON_JULIAPKG_EXE"] == str(exe)
    assert len(evaluated) == 2 and "Base.include(" in evaluated[0]
    assert str(JULIA_DIR / "worker.jl") in evaluated[0]
    assert result.engine == "julia" and result.status is TrainStatus.STALLED
    assert result.stopped_by == "julia: patience" and result.steps == 77
    assert result.loss == pytest.approx(0.01) and result.notes == ("MLPGradientFlow.jl 0.3.0",)
    np.testing.assert_array_equal(result.network.flatten(), init.flatten())
    assert seen == [(0.0, pytest.approx(0.01)), (0.25, pytest.approx(0.01))]
    # the temporary job file is gone; a second training reuses the loaded worker
    assert not Path(worker.jobs[0]).exists()
    engine.train(x, y, init, TrainConfig())
    assert len(evaluated) == 2 and len(worker.jobs) == 2


def test_bridge_judges_a_worker_stall_at_the_rounding_floor_as_converged(fake_juliacall):
    # the fake worker returns its start point as STALLED: at the teacher that is the floor
    engine = get_engine("julia")
    x = np.random.default_rng(3).normal(size=(40, 3))
    init = glorot_normal((3, 4, 1), ["tanh", "identity"], 1)
    y = 100.0 * init(x)
    init = init.unflatten(init.flatten() * np.repeat([1.0, 100.0], [16, 5]))
    result = engine.train(x, y, init, TrainConfig(loss_tol=0.0))
    assert result.loss <= loss_floor(y, init.sizes)
    assert result.status is TrainStatus.CONVERGED_LOSS and result.stopped_by == "julia: loss_floor"
    # far from the floor the worker's own status stands
    away = engine.train(x, y + 1.0, init, TrainConfig(loss_tol=0.0))
    assert away.status is TrainStatus.STALLED and away.stopped_by == "julia: patience"


def test_bridge_turns_worker_errors_into_one_line(fake_juliacall):
    engine = get_engine("julia")
    x = np.zeros((5, 2))
    init = glorot_normal((2, 2, 1), ["g", "identity"], 0)
    with pytest.raises(ValueError, match=r'^the julia worker failed: ArgumentError: .*"swish"$'):
        engine.train(x, init(x), init, TrainConfig(max_steps=13))
    with pytest.raises(ValueError, match="do not match"):
        engine.train(x, np.zeros((5, 2)), init, TrainConfig())


def test_bridge_reports_a_julia_that_does_not_start(fake_juliacall, monkeypatch):
    def refuse(name):
        raise RuntimeError("Both PYTHON_JULIACALL_PROJECT and PYTHON_JULIACALL_EXE must be set")

    monkeypatch.setattr(sys.modules["juliacall"], "newmodule", refuse)
    x = np.zeros((5, 2))
    init = glorot_normal((2, 2, 1), ["g", "identity"], 0)
    with pytest.raises(ValueError, match="could not start the julia worker: Both PYTHON_JULIACALL"):
        get_engine("julia").train(x, init(x), init, TrainConfig())
