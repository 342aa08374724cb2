"""The sweep store under damage: wrong-shaped records and truncated result files are redone on
resume, a planted ``.lock`` symlink is never written through."""

from __future__ import annotations

import json
import os

import pytest

from ecflow import sweep
from ecflow.errors import InputError


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


@pytest.mark.parametrize("damage", ["wrong-shape", "other-unit", "truncated-json",
                                    "truncated-h5", "edited-h5"])
def test_a_damaged_student_is_redone_on_resume(finished, damage):
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
    result = sweep.run_sweep(finished, _config(), resume=True, workers=1)
    assert result.students_run == 1
    record = json.loads(record_path.read_text())
    assert record["student"] in (0, 1) and len(record["sha256"]) == 64


def test_a_wrong_shaped_recovery_record_is_redone(finished):
    rec = next((finished / "recoveries").glob("*.json"))
    rec.write_text('{"d_in": "two"}')
    result = sweep.run_sweep(finished, _config(), resume=True, workers=1)
    assert result.recoveries_run == 1 and result.students_run == 0


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
