"""``ecflow recover --work-dir`` then ``ecflow cluster`` on the saved students, and bad input."""

import json

import pytest

from ecflow import networks, teachers
from cli_helpers import run


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recovery")
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 1)
    t = networks.write_network(folder / "t.h5", net)
    p = run("recover", "--teacher", t, "--out", folder / "rec.h5", "--rho", 2, "--students", 3,
            "--n-queries", 1000, "--n-fresh", 500, "--max-seconds", 10, "--workers", 1,
            "--no-early-stop", "--work-dir", folder / "wd", cwd=folder)
    assert p.returncode == 0, p.stderr
    return folder / "wd"


def test_rerun_with_the_same_work_dir_reuses_every_student(work_dir, tmp_path):
    t = work_dir.parent / "t.h5"
    report = tmp_path / "r.json"
    p = run("recover", "--teacher", t, "--out", tmp_path / "rec.h5", "--rho", 2, "--students", 3,
            "--n-queries", 1000, "--n-fresh", 500, "--max-seconds", 10, "--workers", 1,
            "--no-early-stop", "--work-dir", work_dir, "--report", report, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads(report.read_text())
    assert rep["students_reused"] == 3 and rep["students_trained"] == 0
    assert "students trained, reused" in p.stdout


def test_cluster_reconstructs_saved_students(work_dir, tmp_path):
    out, report, plots = tmp_path / "rec.h5", tmp_path / "r.json", tmp_path / "plots"
    p = run("cluster", "--work-dir", work_dir, "--out", out, "--gamma", 0.6, "--beta-deg", 10,
            "--report", report, "--plots", plots, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads(report.read_text())
    assert rep["status"] == "RECOVERED", rep["reason"]
    assert rep["hidden_sizes"] == [2]
    assert rep["rmse_fresh"] <= 1e-10 and rep["max_cosine_distance"] <= 1e-8
    assert networks.read_network(out).sizes == (2, 2, 1)
    assert (plots / "dendrogram.png").is_file()


def test_cluster_still_takes_the_earlier_students_spelling(work_dir, tmp_path):
    out = tmp_path / "rec.h5"
    p = run("cluster", "--students", work_dir, "--out", out, "--gamma", 0.6, "--beta-deg", 10,
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert networks.read_network(out).sizes == (2, 2, 1)
    assert "--students" not in run("cluster", "-h").stdout  # hidden: a count in recover
    p = run("cluster", "--out", out, cwd=tmp_path)
    assert p.returncode == 2 and "--work-dir" in p.stderr and p.stderr.count("\n") == 1


def test_cluster_bad_input_is_one_line_and_exit_2(work_dir, tmp_path):
    p = run("cluster", "--work-dir", tmp_path / "nope", "--out", tmp_path / "o.h5", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = run("cluster", "--work-dir", tmp_path, "--out", tmp_path / "o.h5", cwd=tmp_path)
    assert p.returncode == 2 and "recovery.json" in p.stderr and "Traceback" not in p.stderr
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(work_dir, broken)
    (broken / "students" / "student-000.h5").write_bytes(b"garbage")
    p = run("cluster", "--work-dir", broken, "--out", tmp_path / "o.h5", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "o.h5").exists()
    p = run("cluster", "--work-dir", work_dir, "--out", tmp_path / "o.h5", "--gamma", 2,
            cwd=tmp_path)
    assert p.returncode == 2 and "gamma" in p.stderr


def test_recover_budget_options_are_validated(work_dir, tmp_path):
    t = work_dir.parent / "t.h5"
    for extra, word in ((["--student-loss", -1], "student-loss"),
                        (["--max-minutes", 0], "--max-minutes")):
        p = run("recover", "--teacher", t, "--out", tmp_path / "o.h5", "--rho", 2, *extra,
                cwd=tmp_path)
        assert p.returncode == 2 and word in p.stderr and "Traceback" not in p.stderr
    other = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 2)
    t2 = networks.write_network(tmp_path / "t2.h5", other)
    p = run("recover", "--teacher", t2, "--out", tmp_path / "o.h5", "--rho", 2, "--students", 3,
            "--n-queries", 1000, "--work-dir", work_dir, cwd=tmp_path)
    assert p.returncode == 2 and "another recovery" in p.stderr
