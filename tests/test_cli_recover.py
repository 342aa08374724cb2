"""``ecflow recover`` end to end on small teachers, and every impossible option."""

import json

import numpy as np
import pytest

from ecflow import networks, teachers
from ecflow.cli import main
from cli_helpers import run


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "g"), 0)
    return networks.write_network(folder / "t.h5", net)


def test_recover_a_small_teacher_end_to_end(teacher_file, tmp_path):
    out, report, plots = tmp_path / "rec.h5", tmp_path / "rec.json", tmp_path / "plots"
    p = run("recover", "--teacher", teacher_file, "--out", out, "--rho", 4, "--students", 4,
            "--n-queries", 2000, "--n-fresh", 2000, "--max-seconds", 12, "--workers", 2,
            "--report", report, "--plots", plots, "--seed", 1, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads(report.read_text())
    assert rep["status"] == "RECOVERED", rep["reason"]
    assert rep["hidden_sizes"] == [2]
    assert rep["rmse_fresh"] <= 1e-10
    assert rep["max_cosine_distance"] <= 1e-8
    # the expansion stops at the quorum (gamma N = 2): how many finished depends on timing
    assert 2 <= len(rep["student_losses"]) <= 4 and len(rep["neurons"]) == 2
    assert rep["students_trained"] + rep["students_skipped"] == 4
    assert {"students", "clustering", "fine-tune"} <= set(rep["phase_seconds"])
    rec = networks.read_network_file(out)
    assert rec.network.sizes == (2, 2, 1)
    assert rec.attrs["status"] == "RECOVERED"
    assert rec.attrs["rmse_fresh"] == rep["rmse_fresh"]
    assert sorted(f.name for f in plots.iterdir()) == [
        "clusters.png", "dendrogram.png", "student_losses.png"
    ]
    assert "Identifiability certificate" in p.stdout
    teacher = networks.read_network(teacher_file)
    x = teachers.sample_inputs(500, 2, 9)
    np.testing.assert_allclose(rec.network.forward(x), teacher.forward(x), atol=1e-9)


def test_recover_from_pairs(tmp_path):
    teacher = teachers.synthetic_teacher(teachers.TeacherConfig(2, (1,), "tanh"), 4)
    x = teachers.sample_inputs(500, 2, 0)
    pairs = networks.write_pairs(tmp_path / "pairs.h5", x, teacher.forward(x))
    out, report = tmp_path / "rec.h5", tmp_path / "rec.json"
    code = cli(["recover", "--data", str(pairs), "--hidden", "3", "--activation", "tanh",
                "--students", "2", "--max-seconds", "5", "--workers", "1", "--out", str(out),
                "--report", str(report)])
    assert code == 0
    rep = json.loads(report.read_text())
    assert rep["hidden_sizes"] == [1]
    assert rep["rmse_fresh"] is None and rep["rmse_train"] <= 1e-10
    assert rep["max_cosine_distance"] is None
    assert any("training queries only" in n for n in rep["notes"])


def cli(argv):
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


BAD = [
    (["--rho", "0"], "rho"),
    (["--rho", "-1"], "rho"),
    (["--rho", "2", "--gamma", "0"], "gamma"),
    (["--rho", "2", "--gamma", "1.5"], "gamma"),
    (["--rho", "2", "--beta-deg", "0"], "--beta-deg"),
    (["--rho", "2", "--beta-deg", "120"], "--beta-deg"),
    (["--rho", "2", "--students", "0"], "--students must"),
    (["--rho", "2", "--hidden", "8"], "--rho or --hidden"),
    (["--rho", "2", "--hidden", "auto"], "--rho or --hidden"),
    (["--rho", "2", "--hidden", "8,4"], "hidden"),
    (["--hidden", "x"], "hidden"),
    (["--rho", "2", "--n-queries", "0"], "--n-queries"),
    (["--rho", "2", "--engine", "torch"], "engine"),
    (["--rho", "2", "--workers", "0"], "workers"),
    (["--rho", "2", "--activation", "swish2"], "activation"),
    (["--rho", "2", "--max-seconds", "0"], "--max-seconds"),
    (["--rho", "2", "--report", "no/such/dir/r.json"], "does not exist"),
    (["--rho", "2", "--queries", "digits"], "has 64 inputs per row but the teacher takes 2"),
    (["--rho", "2", "--queries", "no-such-set"], "neither a data set"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_impossible_options_exit_2_with_one_line(extra, message, teacher_file, tmp_path, capsys):
    out = tmp_path / "rec.h5"
    code = cli(["recover", "--teacher", str(teacher_file), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ecflow: error:") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_data_path_option_conflicts(tmp_path, teacher_file, capsys):
    x = np.zeros((5, 2))
    pairs = networks.write_pairs(tmp_path / "p.h5", x, x[:, :1])
    out = str(tmp_path / "rec.h5")
    for argv, message in [
        (["--data", str(pairs), "--rho", "2"], "--rho needs --teacher"),
        (["--data", str(pairs), "--rho", "2", "--hidden", "auto"], "--rho needs --teacher"),
        (["--data", str(pairs), "--teacher", str(teacher_file), "--hidden", "3"], "exactly one"),
        (["--hidden", "3"], "exactly one"),
        (["--data", str(pairs), "--hidden", "3", "--queries", str(pairs)], "--queries"),
        (["--teacher", str(tmp_path / "missing.h5"), "--rho", "2"], "not found"),
        (["--data", str(teacher_file), "--hidden", "3"], "ecflow_format"),
    ]:
        code = cli(["recover", "--out", out, *argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "rec.h5").exists()


def test_bad_option_in_a_real_process(teacher_file, tmp_path):
    p = run("recover", "--teacher", teacher_file, "--out", tmp_path / "r.h5", "--rho", "-3",
            cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.startswith("ecflow: error:") and p.stderr.count("\n") == 1
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r.h5").exists()
