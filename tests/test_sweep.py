"""Tests of ``ecflow.sweep``, its figures and ``ecflow synthetic-sweep``.

The end-to-end tests run a tiny sweep (d_in 2, r 2, ρ ∈ {1, 2}, 2 students, 1000 queries) whose
students stop on a step budget, far inside a generous time budget, so that results do not
depend on timing: the uninterrupted, killed-and-resumed and Dask runs must agree row for row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ecflow import sweep
from ecflow.engines.base import TrainConfig

TINY = [
    "--d-in", "2", "--r", "2", "--rho", "1,2", "--teachers", "2", "--students", "2",
    "--n-queries", "1000", "--n-fresh", "500", "--max-steps", "40", "--max-seconds", "120",
]
"""8 students and 4 recoveries; step budgets only (time budgets are never reached)."""

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecflow", "synthetic-sweep", *args],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )


def _rows(path: Path) -> list[dict]:
    """Table rows without the wall-clock column, the only one allowed to differ between runs.

    A student that reached machine zero also drops its step count and status: where it stops
    among roundoff-level steps is itself roundoff (see ROUNDOFF).
    """
    rows = []
    for row in sweep.read_table(path):
        row = {k: v for k, v in row.items() if k != "seconds"}
        if "rmse" in row and row["rmse"] < ROUNDOFF:
            del row["steps"], row["status"]
        rows.append(row)
    return rows


ROUNDOFF = 1e-12
"""Values below this (losses and RMSEs at machine zero) may differ between runs: the last steps
of a training there follow roundoff, which varies with the memory alignment of the arrays."""


def _same_value(va, vb) -> bool:
    if va == vb:
        return True
    if isinstance(va, float) and isinstance(vb, float):
        return (np.isnan(va) and np.isnan(vb)) or (abs(va) < ROUNDOFF and abs(vb) < ROUNDOFF)
    return False


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    """Rows equal value for value, up to roundoff at machine zero; prints the first difference."""
    if len(a) != len(b):
        print(f"{len(a)} rows against {len(b)}")
        return False
    for ra, rb in zip(a, b):
        if ra.keys() != rb.keys():
            print(f"columns {list(ra)} against {list(rb)}")
            return False
        for k in ra:
            if not _same_value(ra[k], rb[k]):
                print(f"{k}: {ra[k]!r} against {rb[k]!r} in rows\n{ra}\n{rb}")
                return False
    return True


def _unit_files(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for sub in ("teachers", "students", "recoveries")
        for p in sorted((out / sub).iterdir())
    }


# --- configuration -------------------------------------------------------------------------------


def test_profiles_follow_the_issue_and_the_paper():
    quick = sweep.profile_config("quick")
    assert (quick.d_in, quick.r, quick.rho) == ((2, 4), (2, 4), (1, 2, 4))
    assert (quick.teachers, quick.students, quick.n_queries) == (1, 4, 10_000)
    medium = sweep.profile_config(sweep.Profile.MEDIUM)
    assert medium.n_teachers == 30 and medium.rho == (1, 4) and medium.students == 10
    assert medium.n_queries == 30_000
    paper = sweep.profile_config("paper")
    assert paper.n_teachers == 150 and paper.rho == (1, 2, 4, 8)
    # Appendix A.6.4: N = 20 students for r = 2, 4 and 10 for r = 8, γ = 0.8, β = π/24.
    assert [paper.n_students(r) for r in paper.r] == [20, 20, 10]
    assert paper.gamma == 0.8 and paper.beta_deg == pytest.approx(np.degrees(np.pi / 24))
    # |κ| >= γN counts neurons in the paper (A.3); students stop at near-zero loss (Fig. 4B)
    assert paper.cluster_counts == "neurons" and quick.cluster_counts == "students"
    assert paper.train.target_loss == sweep.NEAR_ZERO_LOSS
    assert len(sweep.student_units(paper)) == 10 * 5 * 4 * (20 + 20 + 10)


def test_a_subset_of_the_paper_profiles_rho_keeps_its_order():
    assert sweep.profile_config("paper", rho=(4,)).rho_order == (4,)
    assert sweep.profile_config("paper", rho=(2, 1)).rho_order == (1, 2)
    assert sweep.profile_config("paper", rho=(16, 4)).rho_order == (4, 16)
    assert sweep.profile_config("medium", rho=(4,)).rho_order is None


def test_overrides_replace_profile_fields_and_budgets():
    cfg = sweep.profile_config(
        "medium", d_in=(4, 2), rho=(4,), students=3, max_seconds=7.0, max_steps=11, teachers=None
    )
    assert cfg.d_in == (2, 4) and cfg.rho == (4,) and cfg.students == 3 and cfg.teachers == 2
    assert cfg.train.max_seconds == 7.0 and cfg.train.max_steps == 11
    assert cfg.finetune.max_steps == 11
    with pytest.raises(ValueError, match="unknown sweep settings: colour"):
        sweep.profile_config("quick", colour=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_in=()), "d_in is empty"),
        (dict(rho=[]), "rho is empty"),
        (dict(r=(2, 2)), "r has repeated values"),
        (dict(r=(0,)), "each r must be a positive integer"),
        (dict(teachers=0), "teachers must be a positive integer"),
        (dict(students=0), "students must be a positive integer"),
        (dict(n_queries=0), "n_queries"),
        (dict(gamma=0.0), "gamma must be in"),
        (dict(beta_deg=120.0), "beta_deg must be in"),
        (dict(engine="torch"), "engine must be one of"),
        (dict(activation="nope"), "nope"),
        (dict(seed=-1), "seed must be non-negative"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, match):
    base = dict(d_in=(2,), r=(2,), rho=(1,), teachers=1)
    with pytest.raises(ValueError, match=match):
        sweep.SweepConfig(**{**base, **kwargs})


def test_bad_config_types():
    with pytest.raises(TypeError, match="teachers must be an integer"):
        sweep.SweepConfig(d_in=(2,), r=(2,), rho=(1,), teachers=1.5)
    with pytest.raises(TypeError, match="train must be a TrainConfig"):
        sweep.SweepConfig(d_in=(2,), r=(2,), rho=(1,), teachers=1, train={})
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        sweep.profile_config("huge")


def test_config_round_trips_through_json():
    cfg = sweep.profile_config("paper", train=TrainConfig(schedule="flow-first", max_seconds=3.5))
    back = sweep.SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(ValueError, match="unknown sweep settings: extra"):
        sweep.SweepConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_unit_seeds_are_distinct_and_stable():
    cfg = sweep.profile_config("quick")
    units = sweep.student_units(cfg)
    seeds = [
        sweep.unit_seed(cfg, 3, u.d_in, u.r, u.teacher, u.rho, u.student) for u in units
    ]
    assert len(set(seeds)) == len(units) == 4 * 3 * 4
    assert seeds == [
        sweep.unit_seed(cfg, 3, u.d_in, u.r, u.teacher, u.rho, u.student) for u in units
    ]
    other = sweep.override_config(cfg, seed=1)
    assert sweep.unit_seed(other, 3, 2, 2, 0, 1, 0) != seeds[0]
    # Recoveries are grouped by teacher and ρ, students follow their group.
    assert [u.group for u in units[:4]] == [sweep.recovery_units(cfg)[0]] * 4


def test_prepare_directory_guards_existing_folders(tmp_path):
    cfg = sweep.profile_config("quick", d_in=(2,), r=(2,), rho=(1,))
    out = tmp_path / "run"
    assert sweep.prepare_directory(out, cfg, resume=False) == cfg
    assert sweep.read_sweep_config(out) == cfg
    with pytest.raises(ValueError, match="pass --resume"):
        sweep.prepare_directory(out, cfg, resume=False)
    with pytest.raises(ValueError, match=r"different configuration \(differs in: rho\)"):
        sweep.prepare_directory(out, sweep.override_config(cfg, rho=(1, 2)), resume=True)
    assert sweep.prepare_directory(out, None, resume=True) == cfg
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        sweep.prepare_directory(other, cfg, resume=False)
    with pytest.raises(ValueError, match="holds no sweep.json"):
        sweep.prepare_directory(other, cfg, resume=True)
    with pytest.raises(ValueError, match="give a profile"):
        sweep.prepare_directory(tmp_path / "new", None, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        sweep.prepare_directory(tmp_path / "file", cfg, resume=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "sweep.json").write_text('{"ecflow_format": "other"}')
    with pytest.raises(ValueError, match="not an ecflow sweep file"):
        sweep.prepare_directory(bad, cfg, resume=True)


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path):
    import fcntl

    cfg = sweep.profile_config("quick", d_in=(2,), r=(2,), rho=(1,), students=1)
    out = tmp_path / "run"
    sweep.prepare_directory(out, cfg, resume=False)
    with open(out / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another sweep is running in this folder"):
            sweep.run_sweep(out, cfg, resume=True, workers=1)
    assert not list((out / "students").iterdir())


def test_tables_round_trip_floats_exactly(tmp_path):
    records = [
        dict(d_in=2, r=2, teacher=0, rho=2, student=s, seed=7 + s, hidden=[4],
             loss=v, rmse=None if v is None else v ** 0.5, status="MAX_STEPS", steps=3, seconds=0.1)
        for s, v in enumerate([1.2345678901234567e-31, 0.1 + 0.2, None])
    ]
    rows = sweep.results_rows(reversed(records))
    path = tmp_path / "results.csv"
    sweep.write_csv(path, sweep.RESULTS_COLUMNS, rows)
    back = sweep.read_table(path)
    assert [r["student"] for r in back] == [0, 1, 2]
    assert back[0]["loss"] == 1.2345678901234567e-31 and back[1]["loss"] == 0.1 + 0.2
    assert np.isnan(back[2]["loss"]) and back[0]["hidden"] == 4
    with pytest.raises(ValueError, match="table not found"):
        sweep.read_table(tmp_path / "missing.csv")


def test_figures_are_drawn_from_rows():
    from ecflow import plots

    rng = np.random.default_rng(0)
    results = [
        dict(d_in=d, r=r, teacher=t, rho=rho, student=s, loss=float(10 ** rng.uniform(-30, -1)))
        for d in (2, 4) for r in (2, 4) for t in range(2) for rho in (1, 2, 4) for s in range(3)
    ]
    recoveries = [
        dict(d_in=d, r=r, teacher=t, rho=rho, rmse_train=float(10 ** rng.uniform(-16, -2)),
             recovered_size=r + (t == 1), teacher_size=r)
        for d in (2, 4) for r in (2, 4) for t in range(2) for rho in (1, 2, 4)
    ]
    fig = plots.sweep_fig4b(results)
    assert len(fig.axes) == 4 + 1  # 2 x 2 cells and the colour bar
    fig = plots.sweep_fig4c(results)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3  # r/d_in ∈ {1/2, 1, 2}
    # The plotted fractions are the near-zero counts.
    ratio_one = [row for row in results if row["r"] == row["d_in"] and row["rho"] == 4]
    expected = np.mean([row["loss"] <= 1e-14 for row in ratio_one])
    assert lines[1].get_ydata()[-1] == pytest.approx(expected)
    fig = plots.sweep_fig5b(recoveries)
    assert len(fig.axes) == 5
    assert len(plots.sweep_fig4b([]).axes) == 1


def test_figure_rows_name_their_teachers():
    from ecflow import plots

    results = [dict(d_in=d, r=2, teacher=t, rho=1, student=s, loss=1e-20)
               for d in (2, 4) for t in range(3) for s in range(2)]
    recoveries = [dict(d_in=d, r=2, teacher=t, rho=1, rmse_train=1e-16, recovered_size=2,
                       teacher_size=2) for d in (2, 4) for t in range(3)]
    for fig in (plots.sweep_fig4b(results), plots.sweep_fig5b(recoveries)):
        first, second = fig.axes[0], fig.axes[1]
        assert [t.get_text() for t in first.get_yticklabels()] == ["0", "1", "2"]
        assert [t.get_text() for t in second.get_yticklabels()] == ["", "", ""]


def test_a_sweep_without_rho_1_draws_no_figure_4b(tmp_path):
    from ecflow import plots

    out = tmp_path / "sweep"
    config = sweep.profile_config("quick", d_in=(2,), r=(2,), rho=(4,), students=2,
                                  n_queries=200, n_fresh=200, max_steps=3)
    sweep.run_sweep(out, config, workers=1)
    names = sorted(p.name for p in plots.write_sweep_figures(out))
    assert names == ["fig4c.png", "fig5b.png"] and not (out / "fig4b.png").exists()


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny sweep on one local worker."""
    out = tmp_path_factory.mktemp("sweep") / "ref"
    proc = _cli("--out", str(out), *TINY, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_cli_writes_tables_figures_and_unit_files(reference):
    out, proc = reference
    assert "8 students and 4 recoveries computed" in proc.stdout
    for name in ("results.csv", "recoveries.csv", "fig4b.png", "fig4c.png", "fig5b.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "fig4b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = sweep.read_table(out / "results.csv")
    recoveries = sweep.read_table(out / "recoveries.csv")
    assert len(results) == 8 and len(recoveries) == 4
    assert {(r["teacher"], r["rho"]) for r in recoveries} == {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert all(r["teacher_size"] == 2 and r["n_students"] == 2 for r in recoveries)
    assert all(r["steps"] >= 1 and r["rmse"] >= 0 for r in results)
    # Success is exactly the documented criterion.
    for r in recoveries:
        assert r["success"] == (r["recovered_size"] == 2 and r["rmse_train"] <= sweep.SUCCESS_RMSE)
    assert len(list((out / "students").glob("*.h5"))) == 8
    assert len(list((out / "students").glob("*.json"))) == 8
    assert len(list((out / "teachers").glob("*.h5"))) == 2
    from ecflow.networks import read_network_file

    nf = read_network_file(out / "students" / "d2_r2_t0_rho2_s1.h5")
    assert nf.network.hidden_sizes == (4,) and nf.attrs["student"] == 1
    # Students are result files of the job protocol, readable by its reader.
    from ecflow.engines.jobs import read_result_file

    res = read_result_file(out / "students" / "d2_r2_t0_rho2_s1.h5")
    record = json.loads((out / "students" / "d2_r2_t0_rho2_s1.json").read_text())
    assert res.status.name == record["status"] and res.steps == record["steps"]
    tf = read_network_file(out / "teachers" / "d2_r2_t1.h5")
    assert tf.network.hidden_sizes == (2,) and tf.x.shape == (1000, 2)


def test_resume_on_a_finished_sweep_redoes_nothing(reference):
    out, _ = reference
    before = _unit_files(out)
    rows = _rows(out / "recoveries.csv")
    proc = _cli("--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "ran 0 units" in proc.stdout and "already complete" in proc.stdout
    assert _unit_files(out) == before
    assert _same_rows(_rows(out / "recoveries.csv"), rows)


def test_killed_and_resumed_sweep_gives_the_same_rows(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecflow", "synthetic-sweep", "--out", str(out), *TINY,
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True,
    )
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len(list((out / "students").glob("*.json"))) >= 3:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    finished = len(list((out / "recoveries").glob("*.json")))
    assert finished < 4
    resumed = _cli("--out", str(out), "--resume", "--no-figures")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{4 - finished} recoveries computed" in resumed.stdout
    assert _same_rows(_rows(out / "recoveries.csv"), _rows(ref / "recoveries.csv"))
    assert _same_rows(_rows(out / "results.csv"), _rows(ref / "results.csv"))


def test_dask_local_cluster_gives_the_same_rows(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    ref, _ = reference
    out = tmp_path / "dask"
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        proc = _cli("--out", str(out), *TINY, "--scheduler", cluster.scheduler_address,
                    "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert _same_rows(_rows(out / "recoveries.csv"), _rows(ref / "recoveries.csv"))
    assert _same_rows(_rows(out / "results.csv"), _rows(ref / "results.csv"))


@pytest.mark.parametrize(
    "args, match",
    [
        (["--profile", "huge"], "unknown profile 'huge'"),
        (["--d-in", ""], "--d-in must be comma-separated positive integers"),
        (["--workers", "0"], "workers must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, match):
    out = tmp_path / "bad"
    proc = _cli("--out", str(out), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecflow: error:") and match in lines[0]
    assert not out.exists()


def test_resume_with_another_configuration_or_without_resume_exits_2(reference):
    out, _ = reference
    proc = _cli("--out", str(out), "--resume", "--rho", "1,4")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ecflow: error: {out} holds a sweep with a different configuration (differs in: rho); "
        "resume it with its own settings or pick another folder"
    ]
    proc = _cli("--out", str(out), *TINY)
    assert proc.returncode == 2 and "pass --resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
