"""``ecflow symmetry reduce`` and ``ecflow symmetry map`` (issue 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecflow.networks import MLP, read_network, read_network_file, write_network, write_pairs
from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher
import cli_helpers


def run(*args):
    return cli_helpers.run("symmetry", *args, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tanh teacher (d_in 2, r 3) and a student of 7 neurons built from it."""
    d = tmp_path_factory.mktemp("sym")
    t = synthetic_teacher(TeacherConfig(2, (3,), "tanh", n_normalise=2000), 5)
    W, b = t.layers[0].weight, t.layers[0].bias
    a, c = t.layers[1].weight, t.layers[1].bias
    Ws = np.vstack([W[2], -W[0], np.zeros(2), W[1], W[0], [0.3, -0.2], W[1]])
    bs = np.array([b[2], -b[0], 0.5, b[1], b[0], 0.1, b[1]])
    As = np.array([[a[0, 2], -0.4 * a[0, 0], 1.5, 0.5 * a[0, 1], 0.6 * a[0, 0], 0.0, 0.5 * a[0, 1]]])
    student = MLP.from_arrays([Ws, As], [bs, c - 1.5 * np.tanh(0.5)], ["tanh", "identity"])
    write_network(d / "teacher.h5", t)
    write_network(d / "student.h5", student)
    return d, t, student


def test_reduce_writes_network_and_report(files):
    d, teacher, student = files
    out, rep = d / "reduced.h5", d / "types.json"
    proc = run("reduce", "--student", d / "student.h5", "--out", out, "--report", rep)
    assert proc.returncode == 0, proc.stderr
    assert "exact" in proc.stdout and "7 -> 3" in proc.stdout
    reduced = read_network(out)
    assert reduced.hidden_sizes == (3,)
    x = sample_inputs(2000, 2, 1)
    assert np.sqrt(np.mean((reduced(x) - teacher(x)) ** 2)) <= 1e-12
    assert read_network_file(out).attrs["symmetry_status"] == "exact"
    report = json.loads(rep.read_text())
    types = [n["type"] for n in report["neurons"]]
    assert [n["index"] for n in report["neurons"]] == list(range(7))
    assert types == ["neuron", "neuron", "constant", "neuron", "neuron", "zero", "neuron"]
    groups = [n["group"] for n in report["neurons"]]
    assert groups[1] == groups[4] and groups[3] == groups[6]
    assert len({groups[0], groups[1], groups[3]}) == 3 and groups[2] is None
    assert report["status"] == "exact" and report["reduced_hidden"] == [3]


def test_reduce_with_query_domain(files, tmp_path):
    d, _, student = files
    x = sample_inputs(300, 2, 0)
    write_pairs(tmp_path / "q.h5", x, student(x))
    proc = run(
        "reduce", "--student", d / "student.h5", "--out", tmp_path / "r.h5",
        "--queries", tmp_path / "q.h5",
    )
    assert proc.returncode == 0, proc.stderr
    assert read_network(tmp_path / "r.h5").hidden_sizes == (3,)


def test_map_prints_teacher_table(files, tmp_path):
    d, _, _ = files
    proc = run("map", "--student", d / "student.h5", "--teacher", d / "teacher.h5",
               "--report", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert "teacher" in proc.stdout and "share" in proc.stdout
    assert "max cosine distance" in proc.stdout
    mapping = json.loads((tmp_path / "m.json").read_text())["mapping"]
    assert [m["teacher"] for m in mapping] == [2, 0, None, 1, 0, None, 1]
    assert [m["sign"] for m in mapping][:2] == [1, -1]
    assert mapping[1]["share"] == pytest.approx(0.4) and mapping[4]["share"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "args, match",
    [
        (["reduce", "--student", "missing.h5", "--out", "{d}/x.h5"], "file not found"),
        (["reduce", "--student", "{d}/student.h5", "--out", "{d}/no/x.h5"], "does not exist"),
        (["reduce", "--student", "{d}/student.h5", "--out", "{d}/x.h5", "--param-rtol", "-1"],
         "--param-rtol"),
        (["reduce", "--student", "{d}/student.h5", "--out", "{d}/x.h5", "--report",
          "{d}/no/r.json"], "does not exist"),
        (["map", "--student", "{d}/student.h5", "--teacher", "{d}/bad.h5"], "bad.h5"),
        (["map", "--student", "{d}/student.h5", "--teacher", "{d}/wide.h5"], "does not match"),
        (["reduce", "--student", "{d}/student.h5"], "--out"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, args, match):
    # In-process through the console entry point (the same code path as the ecflow script);
    # one subprocess run below checks the real script.
    from ecflow.cli import main

    d, _, _ = files
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    write_network(tmp_path / "wide.h5", synthetic_teacher(TeacherConfig(3, (2,), "tanh",
                                                                         n_normalise=500), 0))
    src = tmp_path / "student.h5"
    src.write_bytes((d / "student.h5").read_bytes())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["symmetry", *[a.format(d=tmp_path) for a in args]])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error:")
    assert match in lines[0]
    assert not (tmp_path / "x.h5").exists()


def test_bad_input_from_the_script(tmp_path):
    proc = run("reduce", "--student", tmp_path / "missing.h5", "--out", tmp_path / "x.h5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ecflow: error: {tmp_path / 'missing.h5'}: file not found"
    ]
    assert not (tmp_path / "x.h5").exists()
