"""CLI: info, teacher synthetic, query, and one-line errors with exit 2 on bad input."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from ecflow.networks import read_network, read_pairs
from cli_helpers import run


def assert_bad_input(res, *fragments):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("ecflow: error:")
    assert "Traceback" not in res.stderr
    for frag in fragments:
        assert frag in lines[0]


def test_teacher_info_query_end_to_end(tmp_path):
    t = tmp_path / "t.h5"
    res = run("teacher", "synthetic", "--d-in", 3, "--hidden", "4,2", "--seed", 1, "--activation", "tanh", "--out", t)
    assert res.returncode == 0, res.stderr
    net = read_network(t)
    assert net.sizes == (3, 4, 2, 1)
    res = run("info", t)
    assert res.returncode == 0
    assert "3-4-2-1" in res.stdout and "tanh" in res.stdout and str(net.n_params) in res.stdout
    p = tmp_path / "p.h5"
    res = run("query", "--teacher", t, "--n", 500, "--seed", 2, "--out", p)
    assert res.returncode == 0, res.stderr
    pairs = read_pairs(p)
    assert pairs.x.shape == (500, 3)
    assert np.abs(pairs.x).max() <= np.sqrt(3)
    np.testing.assert_allclose(pairs.y, net(pairs.x), rtol=1e-12, atol=1e-12)
    assert "500 pairs" in run("info", p).stdout


def test_query_independently_written_deep_network(tmp_path):
    from test_networks import naive_forward, raw_write

    rng = np.random.default_rng(0)
    sizes = (2, 3, 3, 1)
    ws = [rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(size=o) for o in sizes[1:]]
    acts = ["mish", "selu", "identity"]
    raw_write(tmp_path / "n.h5", ws, bs, acts)
    assert run("info", tmp_path / "n.h5").returncode == 0
    res = run("query", "--teacher", tmp_path / "n.h5", "--n", 50, "--out", tmp_path / "p.h5")
    assert res.returncode == 0, res.stderr
    pairs = read_pairs(tmp_path / "p.h5")
    ref = naive_forward([w.tolist() for w in ws], [b.tolist() for b in bs], acts, pairs.x)
    np.testing.assert_allclose(pairs.y, ref, rtol=1e-12, atol=1e-12)


@pytest.fixture
def teacher(tmp_path):
    t = tmp_path / "t.h5"
    assert run("teacher", "synthetic", "--d-in", 2, "--r", 2, "--out", t).returncode == 0
    return t


def test_bad_files_exit_2(tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "text.h5").write_text("not hdf5")
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f.attrs["ecflow_format"] = "mlp"
        f.attrs["version"] = 1
        f["layers/0/weight"] = np.full((1, 2), np.nan)
        f["layers/0/bias"] = np.zeros(1)
        f["layers/0"].attrs["activation"] = "identity"
    assert_bad_input(run("info", tmp_path / "missing.h5"), "file not found")
    assert_bad_input(run("info", tmp_path / "empty.h5"), "empty")
    assert_bad_input(run("info", tmp_path / "text.h5"), "not a readable HDF5")
    out = tmp_path / "p.h5"
    assert_bad_input(run("query", "--teacher", tmp_path / "nan.h5", "--n", 5, "--out", out), "NaN")
    assert not out.exists()


@pytest.mark.parametrize(
    "args,frag",
    [
        (["teacher", "synthetic", "--d-in", 0, "--r", 2], "--d-in must be a positive integer"),
        (["teacher", "synthetic", "--d-in", 2, "--r", 0], "must be positive"),
        (["teacher", "synthetic", "--d-in", 2], "exactly one of --r"),
        (["teacher", "synthetic", "--d-in", 2, "--r", 2, "--hidden", "3"], "exactly one of --r"),
        (["teacher", "synthetic", "--d-in", 2, "--hidden", "3,0"], "positive"),
        (["teacher", "synthetic", "--d-in", 2, "--r", 2, "--activation", "swish"], "unknown activation"),
        (["teacher", "synthetic", "--d-in", "two", "--r", 2], "--d-in"),
        (["teacher", "synthetic", "--d-in", 2, "--r", 2, "--bogus", 1], "--bogus"),
    ],
)
def test_teacher_bad_options(tmp_path, args, frag):
    out = tmp_path / "t.h5"
    assert_bad_input(run(*args, "--out", out), frag)
    assert not out.exists()


@pytest.mark.parametrize(
    "args,frag",
    [
        (["--n", 0], "--n must be positive"),
        (["--n", -3], "--n must be positive"),
        (["--n", 5, "--seed", -1], "--seed must be non-negative"),
    ],
)
def test_query_bad_options(tmp_path, teacher, args, frag):
    out = tmp_path / "p.h5"
    assert_bad_input(run("query", "--teacher", teacher, *args, "--out", out), frag)
    assert not out.exists()


def test_unwritable_output(tmp_path, teacher):
    assert_bad_input(
        run("query", "--teacher", teacher, "--n", 5, "--out", tmp_path / "no" / "p.h5"),
        "does not exist",
    )
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = run("query", "--teacher", teacher, "--n", 5, "--out", ro / "p.h5")
        import os
        if os.geteuid() != 0:  # root ignores directory permissions
            assert_bad_input(res, "cannot write")
    finally:
        ro.chmod(0o700)
    assert_bad_input(run("query", "--teacher", teacher, "--n", 5, "--out", tmp_path), "directory")


_BUG_SCRIPT = """
import sys
from ecflow import networks
from ecflow.cli import main

def describe_file(path):
    raise {exc}("an internal bug, not the user's input")

networks.describe_file = describe_file
main(sys.argv[1:])
"""


@pytest.mark.parametrize("exc", ["ValueError", "TypeError", "RuntimeError", "OSError"])
def test_bug_inside_a_command_exits_1_with_traceback(tmp_path, teacher, exc):
    res = subprocess.run(
        [sys.executable, "-c", _BUG_SCRIPT.format(exc=exc), "info", str(teacher)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" in res.stderr
    assert f"{exc}: an internal bug" in res.stderr
    assert "ecflow: error:" not in res.stderr


def test_input_error_inside_a_command_exits_2_with_one_line(tmp_path, teacher):
    script = _BUG_SCRIPT.replace("raise {exc}(", "raise InputError(").replace(
        "import sys", "import sys\nfrom ecflow.errors import InputError"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, "info", str(teacher)], capture_output=True, text=True
    )
    assert_bad_input(res, "an internal bug")


def test_main_lets_a_bug_propagate_in_process(monkeypatch, teacher):
    from ecflow import networks
    from ecflow.cli import main

    def broken(path):
        raise ValueError("a bug")

    monkeypatch.setattr(networks, "describe_file", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["info", str(teacher)])


def test_main_turns_bad_input_into_exit_2_in_process(tmp_path, capsys):
    from ecflow.cli import main

    with pytest.raises(SystemExit) as info:
        main(["info", str(tmp_path / "missing.h5")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ecflow: error:") and "not found" in err[0]
