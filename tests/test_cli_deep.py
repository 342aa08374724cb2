"""``ecflow recover`` and ``ecflow cluster`` on a deep teacher: layer by layer, end to end."""

import json

import numpy as np
import pytest

from ecflow import networks, teachers
from ecflow.cli import main
from cli_helpers import run


def cli(argv):
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deep")
    net = teachers.synthetic_teacher(teachers.TeacherConfig(3, (3, 2), "tanh"), 0)
    return networks.write_network(folder / "deep.h5", net)


def test_recover_and_recluster_a_deep_teacher(deep_teacher, tmp_path):
    out, report, plots, work = (tmp_path / "rec.h5", tmp_path / "rec.json", tmp_path / "plots",
                                tmp_path / "run")
    p = run("recover", "--teacher", deep_teacher, "--out", out, "--rho", 4, "--students", 4,
            "--n-queries", 2000, "--n-fresh", 2000, "--max-seconds", 30, "--workers", 2,
            "--report", report, "--plots", plots, "--work-dir", work, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads(report.read_text())
    assert rep["status"] == "RECOVERED", rep["reason"]
    assert rep["hidden_sizes"] == [3, 2]
    assert rep["rmse_fresh"] <= 1e-10
    assert [lay["layer"] for lay in rep["layers"]] == [1, 2]
    first, second = rep["layers"]
    assert first["max_cosine_distance"] <= 1e-8 and second["max_cosine_distance"] <= 1e-8
    # one spread per neuron of layer 1, or none when fewer than two students converged
    assert first["bias_std"] == [] and len(second["bias_std"]) in (0, first["n_kept_clusters"])
    # the second stage retrains on the first layer: its students' first width is that layer's
    assert second["student_hidden"][0] == first["n_kept_clusters"]
    assert [c["layer"] for c in rep["neurons"]] == [1, 1, 1, 2, 2]
    # every student that trained, in every stage, is counted by the status it ended with
    assert sum(rep["student_status"].values()) == sum(
        lay["students_trained"] + lay["students_reused"] for lay in rep["layers"]
    ) > 0
    assert {"layer-1.png", "layer-2.png", "dendrogram.png"} <= {f.name for f in plots.iterdir()}
    assert "Layer by layer" in p.stdout
    # students retrained on the neurons the bias rule kept, when it dropped any
    steady = ["layer-2-steady"] if second["dropped_below"] else []
    # (.lock: the folder's lock file, docs/safety.md)
    assert sorted(f.name for f in work.iterdir() if f.name != ".lock") == [
        "layer-1", "layer-2", *steady]
    assert any("trained again" in n for n in rep["notes"]) == bool(steady)
    teacher = networks.read_network(deep_teacher)
    x = teachers.sample_inputs(500, 3, 9)
    np.testing.assert_allclose(networks.read_network(out).forward(x), teacher.forward(x),
                               atol=1e-9)

    # re-cluster the saved students of both layers without training
    out2, report2 = tmp_path / "rec2.h5", tmp_path / "rec2.json"
    p = run("cluster", "--work-dir", work, "--out", out2, "--report", report2, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep2 = json.loads(report2.read_text())
    assert rep2["hidden_sizes"] == [3, 2] and rep2["students_trained"] == 0
    # every student that ended by itself was saved (those stopped at the quorum were not)
    assert rep2["students_reused"] == sum(
        lay["students_trained"] - lay["students_stopped"] for lay in (first, second)
    )

    # without layer 2's students (or with students retrained on another layer 1) the
    # re-clustering cannot rebuild layer 2: one line, exit 2
    for f in (work / "layer-2" / "students").iterdir():
        f.unlink()
    p = run("cluster", "--work-dir", work, "--out", tmp_path / "rec3.h5", cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "rerun ecflow recover" in p.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hidden", "4,0"], "hidden"),
        (["--hidden", "4,x"], "hidden"),
        (["--hidden", "auto"], "one hidden layer's width"),
    ],
)
def test_bad_deep_options_exit_2_with_one_line(extra, message, deep_teacher, tmp_path, capsys):
    code = cli(["recover", "--teacher", str(deep_teacher), "--out", str(tmp_path / "r.h5"),
                *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r.h5").exists()


def test_cluster_on_a_deep_folder_without_students_is_one_line(tmp_path, capsys):
    (tmp_path / "run" / "layer-1").mkdir(parents=True)
    (tmp_path / "run" / "layer-1" / "recovery.json").write_text("{}")
    code = cli(["cluster", "--work-dir", str(tmp_path / "run"), "--out", str(tmp_path / "r.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rho", "2", "--depth", "auto"], "--depth goes with --hidden auto or no width"),
        (["--hidden", "4,2", "--depth", "2"], "--depth goes with --hidden auto or no width"),
        (["--hidden", "auto", "--depth", "x"], "--depth must be a positive integer or 'auto'"),
        (["--hidden", "auto", "--depth", "0"], "--depth must be a positive integer or 'auto'"),
    ],
)
def test_bad_depth_options_exit_2_with_one_line(extra, message, deep_teacher, tmp_path, capsys):
    code = cli(["recover", "--teacher", str(deep_teacher), "--out", str(tmp_path / "r.h5"),
                *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r.h5").exists()


def test_a_depth_search_that_finds_nothing_exits_3_and_reports_every_try(
        deep_teacher, tmp_path, monkeypatch, capsys):
    import contextlib

    import ecflow.width_search as ws
    from ecflow.cli import recover_cmd

    class Student:
        loss = 1e-4

    tried = []

    def never_near_zero(x, y, *, hidden, activation, seed, config, engine):
        tried.append(hidden)
        return Student()

    monkeypatch.setattr(ws, "train_student", never_near_zero)
    # in this process, so that the stand-in trains every short student
    monkeypatch.setattr(recover_cmd, "make_executor", lambda *a: contextlib.nullcontext(None))
    out, report, plots = tmp_path / "r.h5", tmp_path / "r.json", tmp_path / "plots"
    code = cli(["recover", "--teacher", str(deep_teacher), "--out", str(out), "--hidden", "auto",
                "--depth", "auto", "--n-queries", "500", "--n-fresh", "100",
                "--report", str(report), "--plots", str(plots)])
    assert code == 3
    assert not out.exists()
    rep = json.loads(report.read_text())
    assert rep["status"] == "NO_WIDTH" and rep["sizes"] == []
    search = rep["width_search"]
    assert search["depth"] is None and search["depths_tried"] == [1, 2, 3]
    assert [r.split(":")[0] for r in search["depth_reasons"]] == ["depth 1", "depth 2", "depth 3"]
    assert {len(h) for h in tried} == {1, 2, 3}
    assert len(search["trials"]) == len({(t["depth"], t["width"]) for t in search["trials"]})
    assert (plots / "depth_search.png").stat().st_size > 0
    assert "Depth and width search" in capsys.readouterr().out
