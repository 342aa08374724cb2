"""Damaged work folders: checksums in the manifest, damaged students retrained (and reported),
damaged data files rewritten or refused, planted symlinks refused, temporaries removed."""

from __future__ import annotations

import json
import os

import h5py
import pytest

from ecflow import networks, teachers, workdir
from ecflow.cli import main
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.recover import RecoverConfig, cluster_saved, recover
from ecflow.workdir import WorkDir

TEACHER = teachers.synthetic_teacher(teachers.TeacherConfig(3, (2,), "tanh"), 5)
CONFIG = RecoverConfig(n_students=3, n_queries=400, n_fresh=100, rho=2, early_stop=False,
                       train=TrainConfig(max_seconds=10.0, max_steps=1000),
                       finetune=TrainConfig(max_seconds=10.0))


@pytest.fixture
def wd(tmp_path):
    path = tmp_path / "wd"
    with workdir.locked(path):
        recover(teacher=TEACHER, config=CONFIG, work_dir=path)
    return path


def _student(wd, i=1):
    return wd / "students" / f"student-{i:03d}.h5"


def test_the_manifest_vouches_for_every_file(wd):
    checksums = json.loads((wd / "recovery.json").read_text())["checksums"]
    assert set(checksums) == {"queries.h5", "fresh.h5", "teacher.h5",
                              *(f"students/student-{i:03d}.h5" for i in range(3))}
    assert checksums["queries.h5"] == workdir.file_digest(wd / "queries.h5")


def _truncate(p):
    p.write_bytes(p.read_bytes()[:500])


def _edit_weights(p):
    with h5py.File(p, "r+") as f:
        f["layers/0/weight"][0, 0] += 1.0


@pytest.mark.parametrize("damage", [_truncate, _edit_weights, os.unlink])
def test_a_damaged_student_is_set_aside_and_retrained(wd, damage):
    damage(_student(wd))
    if damage is not os.unlink:  # never reused silently, nor a traceback
        with pytest.raises(InputError, match="student-001"):
            WorkDir(wd).finished_students(WorkDir(wd).read_manifest())
    with workdir.locked(wd):
        notes = workdir.repair(wd)
        assert len(notes) == 1 and "student-001.h5" in notes[0]
        assert ("missing" if damage is os.unlink else "damaged") in notes[0]
        rec = recover(teacher=TEACHER, config=CONFIG, work_dir=wd)
    assert rec.students_reused == 2 and rec.students_trained == 1
    assert WorkDir(wd).finished_students(WorkDir(wd).read_manifest()).keys() == {0, 1, 2}
    assert workdir.repair(wd) == []


def test_a_rerun_after_the_students_folder_was_removed_trains_them_all(wd):
    import shutil

    shutil.rmtree(wd / "students")
    with workdir.locked(wd):
        assert len(workdir.repair(wd)) == 3
        rec = recover(teacher=TEACHER, config=CONFIG, work_dir=wd)
    assert rec.students_trained == 3 and rec.network is not None
    assert len(list((wd / "students").glob("student-*.h5"))) == 3


@pytest.mark.parametrize("name", ["queries.h5", "teacher.h5", "fresh.h5"])
def test_emptied_data_files_are_rewritten_by_a_rerun_and_refused_by_cluster(wd, name):
    (wd / name).write_bytes(b"")
    with pytest.raises(InputError, match=f"{name}: missing or damaged"):
        cluster_saved(wd, config=RecoverConfig(finetune=TrainConfig(max_seconds=5.0)))
    rec = recover(teacher=TEACHER, config=CONFIG, work_dir=wd)
    assert rec.students_reused == 3
    assert (wd / name).stat().st_size > 0
    cluster_saved(wd, config=RecoverConfig(finetune=TrainConfig(max_seconds=5.0)))


def test_a_planted_students_symlink_is_refused(wd, tmp_path):
    import shutil

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(wd / "students")
    os.symlink(elsewhere, wd / "students")
    with pytest.raises(InputError, match="symbolic link"):
        recover(teacher=TEACHER, config=CONFIG, work_dir=wd)
    assert not list(elsewhere.iterdir())


def test_a_folder_written_before_checksums_is_still_reused(wd):
    data = json.loads((wd / "recovery.json").read_text())
    del data["checksums"]
    (wd / "recovery.json").write_text(json.dumps(data))
    rec = recover(teacher=TEACHER, config=CONFIG, work_dir=wd)
    assert rec.students_reused == 3
    assert "checksums" in json.loads((wd / "recovery.json").read_text())


def test_the_lock_is_exclusive_and_cleans_temporaries(wd):
    import fcntl

    stray = wd / "students" / ".student-002.h5.x1y2.tmp"
    stray.write_bytes(b"half")
    with open(wd / ".lock", "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process would
        with pytest.raises(InputError, match="another ecflow process"):
            with workdir.locked(wd):
                pass
    assert stray.exists()
    with workdir.locked(wd):
        with workdir.locked(wd):  # re-entrant within a process
            pass
    assert not stray.exists()


def test_a_lock_symlink_is_refused_and_its_target_untouched(wd, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (wd / ".lock").unlink()
    os.symlink(victim, wd / ".lock")
    with pytest.raises(InputError, match="symbolic link"):
        with workdir.locked(wd):
            pass
    assert victim.read_text() == "keep\n"


def test_the_cli_report_names_the_retrained_student(wd, tmp_path, capsys):
    networks.write_network(tmp_path / "t.h5", TEACHER)
    _truncate(_student(wd, 2))
    report = tmp_path / "r.json"
    with pytest.raises(SystemExit) as info:
        main(["recover", "--teacher", str(tmp_path / "t.h5"), "--rho", "2", "--students", "3",
              "--n-queries", "400", "--n-fresh", "100", "--no-early-stop", "--workers", "1",
              "--max-seconds", "10", "--work-dir", str(wd), "--out", str(tmp_path / "o.h5"),
              "--report", str(report)])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    rep = json.loads(report.read_text())
    assert any("student-002.h5: damaged" in n for n in rep["notes"]), rep["notes"]
    assert "student-002.h5" in out


def test_a_disk_full_while_saving_a_student_is_one_line_and_the_folder_stays_usable(
        tmp_path, capsys, monkeypatch):
    networks.write_network(tmp_path / "t.h5", TEACHER)
    wd = tmp_path / "W"
    real = networks.check_free_space

    def nearly_full(folder, n_bytes, what):
        if "student-001" in what:
            raise InputError(f"{what}: not enough disk space (0 bytes free)")
        return real(folder, n_bytes, what)

    monkeypatch.setattr(networks, "check_free_space", nearly_full)
    args = ["recover", "--teacher", str(tmp_path / "t.h5"), "--rho", "2", "--students", "3",
            "--n-queries", "400", "--n-fresh", "100", "--no-early-stop", "--workers", "1",
            "--max-seconds", "10", "--work-dir", str(wd), "--out", str(tmp_path / "o.h5"),
            "--report", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit) as info:
        main(args)
    _, err = capsys.readouterr()
    assert info.value.code == 2
    assert err.strip().splitlines() == [
        f"ecflow: error: {wd / 'students' / 'student-001.h5'}: not enough disk space "
        "(0 bytes free)"]
    assert not (tmp_path / "o.h5").exists()
    assert not [p for p in wd.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["students_reused"] >= 1 and rep["students_trained"] >= 1


def test_the_library_rerun_also_retrains_a_damaged_student(wd):
    _truncate(_student(wd, 0))
    rec = recover(teacher=TEACHER, config=CONFIG, work_dir=wd)
    assert rec.students_reused == 2 and rec.students_trained == 1
    assert (wd / "students" / "student-000.h5.damaged").is_file()
