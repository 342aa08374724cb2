"""The engine job protocol: settings, job files, result files, run_job and the job commands."""

import dataclasses
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ecflow import networks
from ecflow.engines import jobs
from ecflow.engines.base import TrainConfig, TrainResult, TrainStatus, loss_floor
from ecflow.networks import MLP, glorot_normal, read_network


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ecflow", *map(str, args)], capture_output=True, text=True
    )


def assert_bad_input(res, *fragments):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("ecflow: error:")
    for frag in fragments:
        assert frag in lines[0], lines[0]


def tiny_problem(seed=0, n=200, sizes=(2, 3, 1), acts=("tanh", "identity")):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.sqrt(3), np.sqrt(3), size=(n, sizes[0]))
    teacher = glorot_normal(sizes, acts, seed + 100)
    return x, teacher(x), glorot_normal(sizes, acts, seed + 1)


def make_result(net, history_rows=5, notes=("a note",), status=TrainStatus.MAX_TIME):
    t = np.linspace(0.0, 2.0, history_rows)
    return TrainResult(
        network=net,
        loss=1.5e-20,
        rmse=np.sqrt(1.5e-20),
        grad_norm=3e-17,
        status=status,
        stopped_by="lm: max_seconds",
        steps=42,
        seconds=2.0,
        history=np.column_stack([t, np.exp(-t)]),
        engine="native",
        notes=tuple(notes),
    )


class LeastSquaresEngine:
    """A stand-in engine for one linear layer: solves the least-squares problem exactly.

    Its answer depends on x and y in their documented orientation, so the protocol tests see
    any transposition or mix-up of the pairs on the way through the files.
    """

    name = "lstsq"

    def __init__(self):
        self.calls = 0

    def train(self, x, y, init, config, *, progress=None):
        self.calls += 1
        a = np.column_stack([x, np.ones(len(x))])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)  # (d_in + 1, d_out)
        net = MLP.from_arrays([coef[:-1].T], [coef[-1]], ["identity"])
        loss = float(np.mean((net(x) - y) ** 2))
        if progress is not None:
            progress(0.0, loss)
        return TrainResult(
            network=net,
            loss=loss,
            rmse=np.sqrt(loss),
            grad_norm=0.0,
            status=TrainStatus.CONVERGED_LOSS if loss <= config.loss_tol else TrainStatus.STALLED,
            stopped_by=f"lstsq: max_steps={config.max_steps}",
            steps=1,
            seconds=0.0,
            history=np.array([[0.0, loss]]),
            engine=self.name,
        )


# --- settings ------------------------------------------------------------------------------------


def test_settings_round_trip_with_enums_as_strings():
    config = TrainConfig(
        schedule="flow-first",
        optimizer="bfgs",
        ode_method="Radau",
        loss_tol=1e-30,
        flow_seconds=3,
        max_seconds=7.5,
        max_steps=123,
        patience=9,
    )
    settings = jobs.config_to_settings(config)
    assert settings["schedule"] == "flow-first"
    assert settings["optimizer"] == "bfgs"
    assert settings["ode_method"] == "Radau"
    assert settings["max_seconds"] == 7.5 and settings["max_steps"] == 123
    assert jobs.settings_to_config(settings) == config
    default = jobs.config_to_settings(TrainConfig())
    assert "max_seconds" not in default  # None is omitted
    assert set(default) == {f.name for f in dataclasses.fields(TrainConfig)} - {
        "max_seconds", "target_loss", "first_order_above"
    }
    target = TrainConfig(target_loss=1e-8, stall_factor=0.0, normal_above=0.0,
                         first_order_above=4e7)
    assert jobs.settings_to_config(jobs.config_to_settings(target)) == target
    assert jobs.settings_to_config(default) == TrainConfig()


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"optimiser": "lm"}, "optimiser"),
        ({"optimizer": "newton"}, "optimizer"),
        ({"max_steps": 0}, "max_steps"),
        ({"loss_tol": -1.0}, "loss_tol"),
        ({"schedule": "backwards"}, "schedule"),
    ],
)
def test_settings_rejected_naming_the_field(settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        jobs.settings_to_config(settings)


def test_config_to_settings_type_checks():
    with pytest.raises(TypeError, match="TrainConfig"):
        jobs.config_to_settings({"optimizer": "lm"})


# --- job files -----------------------------------------------------------------------------------


def test_job_file_round_trip(tmp_path):
    x, y, init = tiny_problem(sizes=(3, 4, 2, 2), acts=("g", "selu", "identity"))
    config = TrainConfig(optimizer="trust-exact", max_seconds=10)
    path = tmp_path / "job.h5"
    jobs.write_job_file(path, x, y, init, config, engine="julia")
    x2, y2, init2, config2, engine = jobs.read_job_file(path)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(init2.flatten(), init.flatten())
    assert [a.name for a in init2.activations] == ["g", "selu", "identity"]
    assert config2 == config and engine == "julia"
    with h5py.File(path) as f:  # the documented layout
        assert f.attrs["ecflow_format"] == "job" and f.attrs["optimizer"] == "trust-exact"
        assert f["queries/x"].shape == (200, 3) and f["init/layers/0/weight"].shape == (4, 3)


def test_job_file_bad_engine_writes_nothing(tmp_path):
    x, y, init = tiny_problem()
    with pytest.raises(ValueError, match="unknown engine 'jax'"):
        jobs.write_job_file(tmp_path / "job.h5", x, y, init, TrainConfig(), engine="jax")
    assert list(tmp_path.iterdir()) == []


def test_job_file_with_a_bad_setting_names_file_and_field(tmp_path):
    x, y, init = tiny_problem()
    path = tmp_path / "job.h5"
    jobs.write_job_file(path, x, y, init, TrainConfig())
    with h5py.File(path, "a") as f:
        f.attrs["patience"] = -3
    with pytest.raises(ValueError, match=r"job\.h5.*patience"):
        jobs.read_job_file(path)
    with h5py.File(path, "a") as f:
        f.attrs["patience"] = 5
        f.attrs["engine"] = "torch"
    with pytest.raises(ValueError, match="unknown engine 'torch'"):
        jobs.read_job_file(path)


def test_a_network_file_is_not_a_job(tmp_path):
    _, _, init = tiny_problem()
    networks.write_network(tmp_path / "n.h5", init)
    with pytest.raises(ValueError, match="expected 'job'"):
        jobs.read_job_file(tmp_path / "n.h5")


# --- result files --------------------------------------------------------------------------------


def test_result_file_round_trip_is_a_network_file(tmp_path):
    _, _, net = tiny_problem(sizes=(2, 5, 1), acts=("mish", "identity"))
    result = make_result(net, notes=("switched to L-BFGS", "second note"))
    path = tmp_path / "r.h5"
    jobs.write_result_file(path, result)
    np.testing.assert_array_equal(read_network(path).flatten(), net.flatten())
    back = jobs.read_result_file(path)
    for field in ("loss", "rmse", "grad_norm", "status", "stopped_by", "steps", "seconds", "engine"):
        assert getattr(back, field) == getattr(result, field), field
    assert back.notes == result.notes
    np.testing.assert_array_equal(back.history, result.history)
    with h5py.File(path) as f:
        assert f.attrs["ecflow_format"] == "mlp"
        assert f.attrs["status"] == "MAX_TIME"  # the enum name, stable across message edits
        assert f.attrs["history"].dtype == np.float64 and f.attrs["history"].shape == (5, 2)


def test_result_file_with_extra_attributes(tmp_path):
    _, _, net = tiny_problem()
    result = make_result(net)
    jobs.write_result_file(tmp_path / "r.h5", result, attrs={"seed": np.int64(3)})
    assert networks.read_network_file(tmp_path / "r.h5").attrs["seed"] == 3
    assert jobs.read_result_file(tmp_path / "r.h5").loss == result.loss
    with pytest.raises(ValueError, match="may not replace result fields: loss, notes"):
        jobs.write_result_file(tmp_path / "s.h5", result, attrs={"loss": 0.0, "notes": ["x"]})
    assert not (tmp_path / "s.h5").exists()


def test_result_without_notes_and_empty_history(tmp_path):
    _, _, net = tiny_problem()
    result = dataclasses.replace(make_result(net, notes=()), history=np.zeros((0, 2)))
    jobs.write_result_file(tmp_path / "r.h5", result)
    back = jobs.read_result_file(tmp_path / "r.h5")
    assert back.notes == () and back.history.shape == (0, 2)


def test_history_is_thinned_keeping_first_and_last(tmp_path):
    _, _, net = tiny_problem()
    result = make_result(net, history_rows=25_000)
    jobs.write_result_file(tmp_path / "r.h5", result)
    h = jobs.read_result_file(tmp_path / "r.h5").history
    assert 2 <= h.shape[0] <= jobs.HISTORY_MAX_ROWS
    np.testing.assert_array_equal(h[0], result.history[0])
    np.testing.assert_array_equal(h[-1], result.history[-1])
    assert np.all(np.diff(h[:, 0]) > 0)
    # every kept row is a row of the original
    assert np.isin(h[:, 0], result.history[:, 0]).all()
    short = jobs.thin_history(result.history[:10])
    np.testing.assert_array_equal(short, result.history[:10])
    with pytest.raises(ValueError, match=r"\(n_records, 2\)"):
        jobs.thin_history(np.zeros((4, 3)))


def test_result_file_written_with_fixed_length_strings(tmp_path):
    # HDF5.jl (the julia worker) writes scalar strings as fixed-length; h5py reads those as bytes
    _, _, net = tiny_problem()
    path = tmp_path / "r.h5"
    networks.write_network(path, net)
    with h5py.File(path, "a") as f:
        for key, value in {
            "loss": 2.0e-32,
            "rmse": np.sqrt(2.0e-32),
            "grad_norm": 1e-17,
            "seconds": 1.25,
        }.items():
            f.attrs[key] = np.float64(value)
        f.attrs["steps"] = np.int64(7)
        f.attrs["status"] = np.bytes_(b"CONVERGED_LOSS")
        f.attrs["stopped_by"] = np.bytes_(b"kencarp58+newton-trust-region: loss_tol")
        f.attrs["engine"] = np.bytes_(b"julia")
        f.attrs["history"] = np.array([[0.0, 1.0], [1.25, 2e-32]])
        f.attrs["notes"] = np.array(["MLPGradientFlow.jl 0.3.0"], dtype=h5py.string_dtype())
    r = jobs.read_result_file(path)
    assert r.status is TrainStatus.CONVERGED_LOSS and r.converged
    assert r.engine == "julia" and r.steps == 7
    assert r.notes == ("MLPGradientFlow.jl 0.3.0",)


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("status", "DONE", "unknown status 'DONE'"),
        ("history", np.zeros((3, 3)), "history"),
        ("steps", 2.5, "steps"),
        ("loss", "small", "loss"),
        ("engine", None, "engine"),
    ],
)
def test_bad_result_files_are_rejected(tmp_path, key, value, fragment):
    _, _, net = tiny_problem()
    path = tmp_path / "r.h5"
    jobs.write_result_file(path, make_result(net))
    with h5py.File(path, "a") as f:
        del f.attrs[key]
        if value is not None:
            f.attrs[key] = value
    with pytest.raises(ValueError, match=fragment):
        jobs.read_result_file(path)


# --- run_job -------------------------------------------------------------------------------------


def test_run_job_with_a_stand_in_engine(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3))
    w, b = rng.normal(size=(2, 3)), rng.normal(size=2)
    y = x @ w.T + b
    init = MLP.from_arrays([np.zeros((2, 3))], [np.zeros(2)], ["identity"])
    engine = LeastSquaresEngine()
    asked = []
    monkeypatch.setattr(jobs, "get_engine", lambda name: asked.append(name) or engine)
    job, out = tmp_path / "job.h5", tmp_path / "result.h5"
    jobs.write_job_file(job, x, y, init, TrainConfig(loss_tol=1e-24, max_steps=77))
    seen = []
    result = jobs.run_job(job, out, progress=lambda t, loss: seen.append(loss))
    assert asked == ["native"] and engine.calls == 1 and seen
    back = jobs.read_result_file(out)
    np.testing.assert_allclose(back.network.layers[0].weight, w, atol=1e-12)
    np.testing.assert_allclose(back.network.layers[0].bias, b, atol=1e-12)
    assert back.status is TrainStatus.CONVERGED_LOSS and result.status is back.status
    assert back.stopped_by == "lstsq: max_steps=77"  # the job's config reached the engine
    assert back.engine == "lstsq" and back.loss == result.loss
    jobs.run_job(job, out, engine="julia")  # an explicit engine overrides the job's
    assert asked == ["native", "julia"]


def test_run_job_checks_the_destination_before_training(tmp_path, monkeypatch):
    x, y, init = tiny_problem()
    job = tmp_path / "job.h5"
    jobs.write_job_file(job, x, y, init, TrainConfig())
    engine = LeastSquaresEngine()
    monkeypatch.setattr(jobs, "get_engine", lambda name: engine)
    with pytest.raises(ValueError, match="does not exist"):
        jobs.run_job(job, tmp_path / "missing" / "r.h5")
    with pytest.raises(ValueError, match="directory"):
        jobs.run_job(job, tmp_path)
    assert engine.calls == 0


def test_run_job_unknown_engine(tmp_path):
    x, y, init = tiny_problem()
    jobs.write_job_file(tmp_path / "job.h5", x, y, init, TrainConfig())
    with pytest.raises(ValueError, match="unknown engine 'cuda'"):
        jobs.run_job(tmp_path / "job.h5", tmp_path / "r.h5", engine="cuda")
    assert not (tmp_path / "r.h5").exists()


# --- CLI -----------------------------------------------------------------------------------------


def test_make_job_cli_and_its_bad_inputs(tmp_path):
    x, y, _ = tiny_problem(n=60)
    networks.write_pairs(tmp_path / "p.h5", x, y)
    job = tmp_path / "job.h5"
    res = run_cli(
        "make-job", "--data", tmp_path / "p.h5", "--hidden", "5,3", "--seed", 4,
        "--optimizer", "bfgs", "--max-seconds", 9, "--out", job,
    )
    assert res.returncode == 0, res.stderr
    x2, y2, init, config, engine = jobs.read_job_file(job)
    np.testing.assert_array_equal(x2, x)
    assert init.sizes == (2, 5, 3, 1) and engine == "native"
    assert [a.name for a in init.activations] == ["g", "g", "identity"]
    assert config.optimizer.value == "bfgs" and config.max_seconds == 9
    # seeded: the same Glorot-normal student as the library draws
    np.testing.assert_array_equal(
        init.flatten(), glorot_normal((2, 5, 3, 1), ["g", "g", "identity"], 4).flatten()
    )
    bad = tmp_path / "bad.h5"
    assert_bad_input(
        run_cli("make-job", "--data", tmp_path / "p.h5", "--hidden", "0", "--out", bad), "hidden"
    )
    assert not bad.exists()


def test_run_job_bad_job_file_writes_nothing(tmp_path):
    (tmp_path / "job.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"job\.h5: not a readable HDF5 file"):
        jobs.run_job(tmp_path / "job.h5", tmp_path / "r.h5")
    assert not (tmp_path / "r.h5").exists()


def test_train_job_cli_native_end_to_end(tmp_path):
    x, y, init = tiny_problem(n=200, sizes=(2, 3, 1), acts=("g", "identity"))
    job, out = tmp_path / "job.h5", tmp_path / "r.h5"
    jobs.write_job_file(job, x, y, init, TrainConfig(max_seconds=10))
    res = run_cli("train-job", job, "--out", out, "--engine", "native")
    assert res.returncode == 0, res.stderr
    result = jobs.read_result_file(out)
    assert result.engine == "native" and "wrote" in res.stdout
    assert result.network.sizes == (2, 3, 1)
    # the recorded loss is the MSE of the stored network on the job's pairs
    mse = float(np.mean((result.network(x) - y) ** 2))
    assert result.loss == pytest.approx(mse, rel=1e-6, abs=loss_floor(y, init.sizes))
    assert result.loss < float(np.mean((init(x) - y) ** 2))
