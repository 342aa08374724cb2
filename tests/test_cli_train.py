"""``ecflow train`` end to end, and its bad-input behaviour (one stderr line, exit 2, no file)."""

from __future__ import annotations


import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ecflow import networks
from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher
from cli_helpers import run


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    teacher = synthetic_teacher(TeacherConfig(2, (2,), "g"), 0)
    x = sample_inputs(400, 2, 1)
    path = folder / "pairs.h5"
    networks.write_pairs(path, x, teacher.forward(x))
    return path, teacher


def test_train_end_to_end(pairs, tmp_path):
    path, teacher = pairs
    out = tmp_path / "student.h5"
    proc = run("train", "--data", path, "--hidden", "4", "--seed", "0", "--out", out,
               "--max-seconds", "20")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "converged" in proc.stdout
    nf = networks.read_network_file(out)
    assert nf.network.sizes == (2, 4, 1)
    assert [a.name for a in nf.network.activations] == ["g", "identity"]
    attrs = nf.attrs
    for key in ("loss", "rmse", "grad_norm", "status", "stopped_by", "steps", "seconds",
                "engine", "seed"):
        assert key in attrs, key
    assert attrs["status"] == "CONVERGED_LOSS" or attrs["status"] == "CONVERGED_GRAD"
    assert attrs["engine"] == "native" and attrs["seed"] == 0
    assert attrs["rmse"] <= 1e-12
    x_test = sample_inputs(1000, 2, 99)
    err = nf.network.forward(x_test) - teacher.forward(x_test)
    assert np.sqrt(np.mean(err**2)) <= 1e-10


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags")
            for flag in line.split(":", 1)[1].split()}


# OpenBLAS kernels whose summation orders differ; each only where the CPU runs it
KERNELS = [kernel for kernel, flag in (("Haswell", "avx2"), ("SkylakeX", "avx512f"))
           if flag in _cpu_flags()]


@pytest.mark.skipif(not KERNELS, reason="no /proc/cpuinfo with avx2: cannot pick a BLAS kernel")
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_student_at_machine_precision_is_converged_on_every_blas_kernel(
    pairs, tmp_path, kernel, threads
):
    path, _ = pairs
    out = tmp_path / "student.h5"
    env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "OMP_NUM_THREADS": threads,
           "OPENBLAS_NUM_THREADS": threads}
    proc = subprocess.run(
        [sys.executable, "-m", "ecflow", "train", "--data", str(path), "--hidden", "4",
         "--seed", "0", "--out", str(out), "--max-seconds", "20"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    attrs = networks.read_network_file(out).attrs
    assert attrs["rmse"] <= 1e-12
    assert attrs["status"] == "CONVERGED_LOSS", proc.stdout
    assert "converged" in proc.stdout and "may lower it further" not in proc.stdout


def test_train_options_reach_the_engine(pairs, tmp_path):
    path, _ = pairs
    out = tmp_path / "s.h5"
    proc = run("train", "--data", path, "--hidden", "3,2", "--seed", "1", "--out", out,
               "--schedule", "flow-first", "--optimizer", "bfgs", "--max-seconds", "1.5",
               "--activation", "tanh", "--quiet")
    assert proc.returncode == 0, proc.stderr
    net = networks.read_network(out)
    assert net.sizes == (2, 3, 2, 1)
    assert [a.name for a in net.activations] == ["tanh", "tanh", "identity"]
    assert networks.read_network_file(out).attrs["seconds"] < 5.0


def _raw_pairs(path, x, y):
    # written with h5py directly: write_pairs would refuse these
    with h5py.File(path, "w") as f:
        f.attrs["ecflow_format"] = "pairs"
        f.attrs["version"] = 1
        f.create_dataset("queries/x", data=x)
        f.create_dataset("queries/y", data=y)


@pytest.mark.parametrize(
    "case",
    ["nan", "inf", "length", "hidden0", "optimizer", "engine"],
)
def test_bad_input_exits_2_with_one_line_and_no_file(pairs, tmp_path, case):
    path, _ = pairs
    x = sample_inputs(50, 2, 0)
    y = np.ones((50, 1))
    args = {"--hidden": "4", "--seed": "0"}
    extra: list[str] = []
    if case in ("nan", "inf"):
        x[3, 1] = np.nan if case == "nan" else np.inf
        path = tmp_path / "bad.h5"
        _raw_pairs(path, x, y)
    elif case == "length":
        path = tmp_path / "bad.h5"
        _raw_pairs(path, x, y[:-1])
    elif case == "hidden0":
        args["--hidden"] = "0"
    elif case == "optimizer":
        extra = ["--optimizer", "adam"]
    elif case == "engine":
        extra = ["--engine", "tensorflow"]
    out = tmp_path / "student.h5"
    flat = [a for kv in args.items() for a in kv]
    proc = run("train", "--data", path, *flat, "--out", out, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error:"), proc.stderr
    assert not out.exists()
    assert list(tmp_path.glob(".student.h5*")) == []
