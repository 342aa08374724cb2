"""The sweep store under damage: wrong-shaped records and truncated result files are taken back
from the archive, or redone where the archive lacks them, on resume; a planted ``.lock`` symlink
is never written through; a clone that keeps only the archive resumes without retraining."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ecflow import sweep
from ecflow.errors import InputError
from ecflow.sweep import archive
from ecflow.sweep import store as sweep_store


def _config():
    return sweep.profile_config(
        "quick", d_in=(2,), r=(2,), rho=(1,), teachers=1, students=2, n_queries=200,
        n_fresh=100, max_steps=10, max_seconds=60.0,
    )


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "sweep"
    sweep.run_sweep(out, _config(), workers=1)
    return out


def _students(out):
    return sorted((out / "students").glob("*.json"))


def test_records_carry_the_digest_of_their_result_file(finished):
    record = json.loads(_students(finished)[0].read_text())
    assert len(record["sha256"]) == 64


@pytest.mark.parametrize("archived", [True, False])
@pytest.mark.parametrize("damage", ["wrong-shape", "other-unit", "truncated-json",
                                    "truncated-h5", "edited-h5"])
def test_a_damaged_student_is_restored_or_redone_on_resume(finished, damage, archived):
    record_path = _students(finished)[0]
    h5 = record_path.with_suffix(".h5")
    if damage == "wrong-shape":
        record_path.write_text("[1, 2, 3]\n")
    elif damage == "other-unit":
        record = json.loads(record_path.read_text())
        record_path.write_text(json.dumps(dict(record, student=7)))
    elif damage == "truncated-json":
        record_path.write_text(record_path.read_text()[:20])
    elif damage == "truncated-h5":
        h5.write_bytes(h5.read_bytes()[:300])
    else:
        data = bytearray(h5.read_bytes())
        data[-40] ^= 0xFF
        h5.write_bytes(bytes(data))
    if not archived:
        for f in (finished / "archive").iterdir():
            f.unlink()
    result = sweep.run_sweep(finished, _config(), resume=True, workers=1)
    # The archive keeps the student; without it, the student is trained again.
    assert result.students_run == (0 if archived else 1)
    record = json.loads(record_path.read_text())
    assert record["student"] in (0, 1) and len(record["sha256"]) == 64
    assert len(list((finished / "archive").iterdir())) == 1


@pytest.mark.parametrize("archived", [True, False])
def test_a_wrong_shaped_recovery_record_is_restored_or_redone(finished, archived):
    rec = next((finished / "recoveries").glob("*.json"))
    rec.write_text('{"d_in": "two"}')
    if not archived:
        next((finished / "archive").iterdir()).unlink()
    result = sweep.run_sweep(finished, _config(), resume=True, workers=1)
    assert result.recoveries_run == (0 if archived else 1) and result.students_run == 0
    assert json.loads(rec.read_text())["d_in"] == 2


def test_a_clone_with_only_the_archive_resumes_without_retraining(tmp_path):
    config = sweep.override_config(_config(), rho=(1, 4), students=3)
    out = tmp_path / "sweep"
    sweep.run_sweep(out, config, workers=1)
    tables = {n: (out / n).read_text() for n in ("results.csv", "recoveries.csv")}
    # A partial run as a repository keeps it: the archive, less one student and one recovery.
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("sweep.json", "results.csv", "recoveries.csv"):
        (clone / name).write_bytes((out / name).read_bytes())
    shutil.copytree(out / "archive", clone / "archive")
    store = sweep_store.Store(clone, config)
    unit = store.recoveries[-1]
    group = archive.read_group(store.archive_path(unit), unit)
    del group.students[2]
    group.recovery = None
    archive.write_group(store.archive_path(unit), unit, group)
    progress = sweep.sweep_status(clone)
    assert progress.per_rho(4).started == 1 and progress.per_rho(1).done == 1
    assert progress.per_rho(4).students_done == 2 and progress.seconds_left > 0
    result = sweep.run_sweep(clone, None, resume=True, workers=1)
    assert (result.students_run, result.recoveries_run) == (1, 1)
    assert (clone / "results.csv").read_text().count("\n") == tables["results.csv"].count("\n")
    assert sweep.sweep_status(clone).seconds_left == 0
    # The run's records and a re-clustering of the archived students agree.
    for unit in store.recoveries:
        rec, record = sweep.recluster(clone, unit.name)
        assert (rec.status.name, sum(rec.hidden_sizes)) == (
            record["status"], record["recovered_size"])
        if record["rmse_train"] is not None:
            assert rec.rmse_train == pytest.approx(record["rmse_train"], rel=1e-6, abs=1e-15)


def test_a_damaged_archive_file_is_reported_and_its_units_kept_from_the_unit_files(finished):
    path = next((finished / "archive").iterdir())
    path.write_bytes(path.read_bytes()[:200])
    assert sweep.sweep_status(finished).archive_errors
    result = sweep.run_sweep(finished, _config(), resume=True, workers=1)
    assert result.students_run == 0 and result.recoveries_run == 0
    store = sweep_store.Store(finished, _config())
    unit = store.recoveries[0]
    assert len(archive.read_group(path, unit).students) == 2  # rewritten under the lock


def test_the_paper_profile_runs_rho_4_then_1_teacher_by_teacher_over_the_cells():
    units = sweep.recovery_units(sweep.profile_config("paper"))
    assert [u.rho for u in units[::150]] == [4, 1, 2, 8]
    assert {(u.d_in, u.r) for u in units[:15]} == {(d, r) for d in (2, 4, 8, 16, 32)
                                                   for r in (2, 4, 8)}
    assert {u.teacher for u in units[:15]} == {0}
    with pytest.raises(ValueError, match="rho_order"):
        sweep.SweepConfig(d_in=(2,), r=(2,), rho=(1, 4), teachers=1, rho_order=(4,))


def test_a_lock_symlink_is_not_written_through(finished, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (finished / ".lock").unlink()
    os.symlink(victim, finished / ".lock")
    with pytest.raises(InputError, match="symbolic link"):
        sweep.run_sweep(finished, _config(), resume=True, workers=1)
    assert victim.read_text() == "keep me\n"


def test_temporaries_of_killed_writes_are_removed_under_the_lock(finished):
    stray = finished / "students" / ".d2_r2_t0_rho1_s0.h5.abc123.tmp"
    stray.write_bytes(b"half")
    sweep.run_sweep(finished, _config(), resume=True, workers=1)
    assert not stray.exists()
