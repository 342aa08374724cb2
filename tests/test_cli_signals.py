"""A real ``ecflow recover`` process interrupted, sharing its work folder, or rerun on a damaged
one: one line, the right exit code, nothing left behind, and the rerun continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecflow import networks, teachers

# Students of width 2 on a width-4 teacher never reach zero loss: each trains for its whole
# (short) budget, so that the run is still training when the signal comes.
SLOW = ["--hidden", "2", "--students", "6", "--n-queries", "500", "--n-fresh", "100",
        "--max-seconds", "2", "--stall-factor", "0", "--student-loss", "0", "--no-early-stop",
        "--workers", "2"]


@pytest.fixture
def teacher(tmp_path):
    net = teachers.synthetic_teacher(teachers.TeacherConfig(2, (4,), "tanh"), 3)
    return networks.write_network(tmp_path / "t4.h5", net)


def _env(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                MKL_NUM_THREADS="1")


def _start(tmp_path, teacher, work, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "ecflow", "recover", "--teacher", str(teacher), *SLOW,
         "--work-dir", str(work), "--out", str(tmp_path / "o.h5"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
        cwd=tmp_path, start_new_session=True,
    )


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_students(work: Path, n: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((work / "students").glob("student-*.h5"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} students in time; rc {proc.poll()}")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_cleanly_and_the_rerun_continues(tmp_path, teacher, signum, code):
    work = tmp_path / "W"
    proc = _start(tmp_path, teacher, work)
    try:
        _wait_for_students(work, 1, proc)
        workers = _children(proc.pid)
        assert workers, "the recovery runs its students in worker processes"
        # SIGINT as a terminal sends it (to the whole group), SIGTERM as kill does
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert lines == [f"ecflow: error: interrupted; rerun with --work-dir {work} to continue"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "worker processes outlived the command"
    assert not list((tmp_path / "tmp").iterdir()), "files left in the temporary folder"
    assert not [p for p in work.rglob("*") if p.name.endswith(".tmp")]
    assert not (tmp_path / "o.h5").exists()
    finished = len(list((work / "students").glob("student-*.h5")))
    assert 1 <= finished < 6
    rerun = subprocess.run(
        [sys.executable, "-m", "ecflow", "recover", "--teacher", str(teacher), *SLOW,
         "--work-dir", str(work), "--out", str(tmp_path / "o.h5"), "--report",
         str(tmp_path / "r.json")],
        capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=120,
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["students_reused"] >= finished, rerun.stderr
    assert report["students_reused"] + report["students_trained"] == 6


def test_a_second_process_on_a_work_folder_is_refused(tmp_path, teacher):
    work = tmp_path / "W"
    first = _start(tmp_path, teacher, work)
    try:
        _wait_for_students(work, 1, first)
        # paused, it holds the folder however fast its students are; resumed, it finishes
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(
            [sys.executable, "-m", "ecflow", "recover", "--teacher", str(teacher), *SLOW,
             "--work-dir", str(work), "--out", str(tmp_path / "o2.h5")],
            capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"ecflow: error: --work-dir {work}: another ecflow process is using this folder; "
            "wait for it to finish or use another folder"
        ]
        cluster = subprocess.run(
            [sys.executable, "-m", "ecflow", "cluster", "--students", str(work), "--out",
             str(tmp_path / "o3.h5")],
            capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=60,
        )
        assert cluster.returncode == 2 and "another ecflow process" in cluster.stderr
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err
    assert networks.read_network(tmp_path / "o.h5").d_in == 2
    assert not (tmp_path / "o2.h5").exists()
