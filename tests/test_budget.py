"""What a recovery costs: recovery-grade students, the stall rule, the cooperative stop flag,
the early stop of the expansion, one deadline, and resumable work folders."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ecflow import networks, teachers
from ecflow.budget import Budget
from ecflow.engines.base import TrainConfig, TrainStatus
from ecflow.engines.native import NativeEngine
from ecflow.engines.native.problem import StallRule
from ecflow.errors import InputError
from ecflow.expansion import expand, student_seeds
from ecflow.networks import glorot_normal
from ecflow.parallel import (
    FileStopFlag,
    SharingStop,
    ThreadShare,
    make_executor,
    make_stop_flag,
    spare_threads,
)
from ecflow.reconstruction import prune_network
from ecflow.recover import RecoverConfig, RecoverStatus, cluster_saved, recover
from ecflow.workdir import WorkDir

TEACHER = teachers.synthetic_teacher(teachers.TeacherConfig(3, (2,), "tanh"), 5)
X = teachers.sample_inputs(600, 3, 0)
Y = TEACHER.forward(X)
QUICK = TrainConfig(max_seconds=10.0, max_steps=2000)


def networks_loss(net):
    return float(np.mean((net.forward(X) - Y) ** 2))


def _student(seed=0, width=4):
    return glorot_normal((3, width, 1), ["tanh", "identity"], seed)


# --- engine ------------------------------------------------------------------------------------


def test_target_loss_stops_a_student_when_it_is_good_enough():
    res = NativeEngine().train(X, Y, _student(), TrainConfig(max_seconds=20.0, target_loss=1e-8))
    assert res.status is TrainStatus.REACHED_TARGET and res.converged
    assert 1e-20 < res.loss <= 1e-8
    full = NativeEngine().train(X, Y, _student(), TrainConfig(max_seconds=5.0))
    assert full.loss < res.loss and full.status is TrainStatus.CONVERGED_LOSS


def test_stop_flag_ends_training_with_its_best_point():
    init = _student()
    res = NativeEngine().train(X, Y, init, TrainConfig(max_seconds=30.0), stop=lambda: True)
    assert res.status is TrainStatus.STOPPED and not res.converged
    assert res.stopped_by.endswith("stopped")
    assert res.loss == pytest.approx(networks_loss(init))
    # the flow polls it too
    res = NativeEngine().train(
        X, Y, init, TrainConfig(max_seconds=30.0, schedule="flow-first"), stop=lambda: True
    )
    assert res.status is TrainStatus.STOPPED


def test_file_stop_flag_pickles_and_is_seen_by_another_process(tmp_path):
    flag = FileStopFlag(tmp_path)
    assert not flag()
    with cf.ProcessPoolExecutor(1) as pool:
        assert pool.submit(flag).result() is False
        flag.set()
        assert pool.submit(flag).result() is True
    flag.close()
    assert not flag()
    assert isinstance(make_stop_flag(None), FileStopFlag)


def test_spare_cores_go_to_the_running_students(tmp_path):
    assert spare_threads(2, cpus=2) == 1
    assert spare_threads(1, cpus=2) == 2
    assert spare_threads(3, cpus=8) == 2
    assert spare_threads(0, cpus=2) == 2
    share = ThreadShare(tmp_path)
    stop = SharingStop(FileStopFlag(tmp_path), share)
    assert share.get() is None
    with make_executor(1) as pool:  # a worker pinned to one BLAS thread
        # a module-level function of this file would not unpickle in a spawned worker
        import threadpoolctl

        pool.submit(np.ones, 1).result()  # loads numpy's BLAS in the worker
        info = pool.submit(threadpoolctl.threadpool_info).result()
        assert max(i["num_threads"] for i in info if i["user_api"] == "blas") == 1
        assert pool.submit(stop).result() is False  # no share set yet: nothing changes
        share.set(2)
        assert pool.submit(stop).result() is False
        info = pool.submit(threadpoolctl.threadpool_info).result()
        assert max(i["num_threads"] for i in info if i["user_api"] == "blas") == 2
    share.close()
    assert share.get() is None


def test_stall_rule_judges_the_recent_log_loss_rate():
    rule = StallRule(goal=1e-12, deadline=100.0, factor=1.0, warmup=10.0, min_steps=5)
    fast = [(t, 10.0 ** (-t)) for t in range(0, 21)]  # a decade a second
    slow = [(t, 10.0 ** (-0.01 * t)) for t in range(0, 21)]
    assert not rule.hopeless(fast, 20.0, fast[-1][1], steps=100)
    assert rule.hopeless(slow, 20.0, slow[-1][1], steps=100)
    # not before the warm-up, nor with too few steps, nor once the goal is reached
    assert not rule.hopeless(slow, 5.0, slow[5][1], steps=100)
    assert not rule.hopeless(slow, 20.0, slow[-1][1], steps=2)
    assert not rule.hopeless(slow, 20.0, 1e-13, steps=100)


def test_stall_rule_creep_part_judges_against_the_time_run():
    # a decade every 10 s, 10 decades to go at t = 30 s: 100 s needed, 270 s left, 30 s run
    trend = [(t, 10.0 ** (-0.1 * t)) for t in range(0, 31)]
    creep = StallRule(goal=1e-13, deadline=300.0, factor=3.0, warmup=10.0, min_steps=5)
    assert creep.hopeless(trend, 30.0, trend[-1][1], steps=300)
    assert not creep.hopeless(trend, 30.0, trend[-1][1], steps=100)  # before creep_steps
    left_only = StallRule(goal=1e-13, deadline=300.0, factor=3.0, warmup=10.0, min_steps=5,
                          elapsed_factor=0.0)
    assert not left_only.hopeless(trend, 30.0, trend[-1][1], steps=300)
    assert TrainConfig(creep_factor=0.0).creep_factor == 0.0
    with pytest.raises(ValueError, match="creep_factor"):
        TrainConfig(creep_factor=-1.0)


def test_stall_rule_stops_a_hopeless_student_early():
    # a width-1 student cannot fit a width-2 teacher: it plateaus far above any target
    x = teachers.sample_inputs(400, 3, 1)
    y = TEACHER.forward(x)
    init = glorot_normal((3, 1, 1), ["tanh", "identity"], 0)
    cfg = TrainConfig(max_seconds=12.0, target_loss=1e-12, stall_factor=1.0)
    res = NativeEngine().train(x, y, init, cfg)
    assert res.status is TrainStatus.STALLED  # not MAX_TIME: it gave up before its budget


def test_normal_equation_steps_reach_the_same_precision():
    t = teachers.synthetic_teacher(teachers.TeacherConfig(4, (3,), "g"), 1)
    x = teachers.sample_inputs(2000, 4, 1)
    y = t.forward(x)
    init = glorot_normal((4, 6, 1), ["g", "identity"], 3)
    for normal_above in (0.0, 1e-10):
        res = NativeEngine().train(
            x, y, init, TrainConfig(max_seconds=40.0, normal_above=normal_above)
        )
        assert res.loss < 1e-24, (normal_above, res.loss, res.stopped_by)


# --- expansion ---------------------------------------------------------------------------------


def _enough_after(k):
    def enough(results):
        good = sum(r is not None and r.converged for r in results)
        return f"{good} good" if good >= k else None

    return enough


def test_expand_stops_the_rest_once_enough_students_converged():
    seeds = student_seeds(0, 4)
    saved = []
    out = expand(
        X, Y, hidden=(4,), activation="tanh", seeds=seeds,
        config=dataclasses_replace(QUICK, target_loss=1e-10), enough=_enough_after(1),
        on_result=lambda i, r: saved.append(i),
    )
    assert out.stop_reason == "1 good"
    assert out.n_trained == 1 and out.n_skipped == 3 and out.n_reused == 0
    assert saved == [0] and out.finished == [0]


def test_expand_with_a_pool_cancels_queued_students_and_stops_running_ones():
    seeds = student_seeds(1, 6)
    with make_executor(2) as ex:
        out = expand(
            X, Y, hidden=(4,), activation="tanh", seeds=seeds,
            config=dataclasses_replace(QUICK, target_loss=1e-10), executor=ex,
            enough=_enough_after(1),
        )
    assert out.stop_reason is not None
    assert out.n_trained + out.n_skipped == 6
    assert out.n_skipped >= 1
    assert len(out.finished) >= 1


def test_expand_reuses_given_results():
    seeds = student_seeds(0, 3)
    first = expand(X, Y, hidden=(4,), activation="tanh", seeds=seeds[:1], config=QUICK)
    out = expand(
        X, Y, hidden=(4,), activation="tanh", seeds=seeds, config=QUICK,
        reuse={0: first.results[0]},
    )
    assert out.n_reused == 1 and out.n_trained == 2
    assert out.results[0] is first.results[0]
    with pytest.raises(InputError, match="outside"):
        expand(X, Y, hidden=(4,), activation="tanh", seeds=seeds, config=QUICK,
               reuse={5: first.results[0]})


def test_a_student_started_after_the_deadline_is_skipped():
    out = expand(
        X, Y, hidden=(4,), activation="tanh", seeds=[1, 2], config=QUICK,
        deadline=time.time() - 1.0,
    )
    assert out.n_skipped == 2 and out.finished == []


def dataclasses_replace(config, **kw):
    import dataclasses

    return dataclasses.replace(config, **kw)


# --- recovery: early stop, deadline, work folder, re-clustering ---------------------------------

SMALL = dict(n_students=4, n_queries=600, n_fresh=200, rho=2, train=QUICK,
             finetune=TrainConfig(max_seconds=10.0))


def test_recovery_stops_its_students_at_the_quorum_and_says_so():
    rec = recover(teacher=TEACHER, config=RecoverConfig(**SMALL))
    assert rec.status is RecoverStatus.RECOVERED, rec.reason
    assert rec.hidden_sizes == (2,)
    assert rec.stop_reason is not None and "gamma N" in rec.stop_reason
    assert rec.students_trained + rec.students_skipped == 4
    report = rec.to_report()
    for key in ("students_trained", "students_reused", "students_stopped", "students_skipped",
                "stop_reason", "student_status", "cut"):
        assert key in report
    json.dumps(report)


def test_max_minutes_cuts_and_reports():
    # students get 80 % of 6 s; the rest and the fine-tune budgets are cut to what is left
    rec = recover(teacher=TEACHER, config=RecoverConfig(**SMALL, max_minutes=0.1))
    assert any("budget cut" in line for line in rec.to_report()["cut"])
    assert rec.network is not None


def test_prune_network_honours_its_deadline():
    net = _student(0, 6)
    res = prune_network(net, X, Y, engine=NativeEngine(), train_config=QUICK,
                        budget=Budget(time.monotonic() - 1.0))
    assert res.tried == 0 and res.network is net


def test_work_dir_saves_students_and_a_rerun_reuses_them(tmp_path):
    wd = tmp_path / "wd"
    cfg = RecoverConfig(**SMALL, early_stop=False)
    first = recover(teacher=TEACHER, config=cfg, work_dir=wd)
    saved = sorted(p.name for p in (wd / "students").iterdir())
    assert saved == [f"student-{i:03d}.h5" for i in range(4)]
    assert (wd / "recovery.json").is_file() and (wd / "queries.h5").is_file()
    again = recover(teacher=TEACHER, config=cfg, work_dir=wd)
    assert again.students_reused == 4 and again.students_trained == 0
    assert again.student_losses == first.student_losses
    assert again.hidden_sizes == first.hidden_sizes == (2,)
    # another teacher's queries in the same folder is refused before any training
    other = teachers.synthetic_teacher(teachers.TeacherConfig(3, (2,), "tanh"), 6)
    with pytest.raises(InputError, match="another recovery"):
        recover(teacher=other, config=cfg, work_dir=wd)


def test_a_killed_run_is_resumed_from_the_students_it_finished(tmp_path):
    wd = tmp_path / "wd"
    cfg = RecoverConfig(**SMALL, early_stop=False)
    recover(teacher=TEACHER, config=cfg, work_dir=wd)
    # as if killed after two students: the other files never got written
    for i in (2, 3):
        (wd / "students" / f"student-{i:03d}.h5").unlink()
    rec = recover(teacher=TEACHER, config=cfg, work_dir=wd)
    assert rec.students_reused == 2 and rec.students_trained == 2
    assert rec.status is RecoverStatus.RECOVERED


def test_cluster_saved_students_without_training(tmp_path):
    wd = tmp_path / "wd"
    cfg = RecoverConfig(**SMALL, early_stop=False)
    recover(teacher=TEACHER, config=cfg, work_dir=wd)
    rec = cluster_saved(wd, config=RecoverConfig(gamma=0.75, beta_deg=20.0,
                                                 finetune=TrainConfig(max_seconds=10.0)))
    assert rec.status is RecoverStatus.RECOVERED, rec.reason
    assert rec.hidden_sizes == (2,) and rec.students_reused == 4 and rec.students_trained == 0
    assert rec.max_cosine_distance < 1e-8
    assert rec.rmse_fresh < 1e-10


def test_corrupt_or_foreign_student_files_are_bad_input(tmp_path):
    wd = tmp_path / "wd"
    cfg = RecoverConfig(**SMALL, early_stop=False)
    recover(teacher=TEACHER, config=cfg, work_dir=wd)
    store = WorkDir(wd)
    manifest = store.read_manifest()
    (wd / "students" / "student-001.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError):
        store.finished_students(manifest)
    with pytest.raises(InputError, match="not a recovery work folder"):
        WorkDir(tmp_path).read_manifest()
    # a student of another width
    res = NativeEngine().train(X, Y, _student(0, 3), QUICK)
    store.save_student(1, manifest.seeds[1], res)
    with pytest.raises(InputError, match="expected hidden"):
        store.finished_students(manifest)


def test_recover_config_validates_the_budget_fields():
    with pytest.raises(InputError, match="student_loss"):
        RecoverConfig(student_loss=-1.0)
    with pytest.raises(InputError, match="max_minutes"):
        RecoverConfig(max_minutes=0.0)
    with pytest.raises(InputError, match="target_loss"):
        TrainConfig(target_loss=0.0)
    with pytest.raises(InputError, match="stall_factor"):
        TrainConfig(stall_factor=-1.0)
    assert RecoverConfig().student_train.target_loss == RecoverConfig().student_loss
    assert RecoverConfig(student_loss=None).student_train.target_loss is None
    assert RecoverConfig(gamma=0.5, n_students=10).quorum == 5
    assert RecoverConfig(gamma=0.8, n_students=10).quorum == 8


def test_expand_on_dask_stops_through_a_distributed_event():
    distributed = pytest.importorskip("distributed")
    from ecflow.parallel import DaskStopFlag

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, distributed.Client(cluster) as client:
        executor = client.get_executor()
        flag = make_stop_flag(executor)
        assert isinstance(flag, DaskStopFlag)
        # the flag travels to a worker by name and is read there
        assert client.submit(flag).result() is False
        flag.set()
        assert client.submit(flag).result() is True
        out = expand(
            X, Y, hidden=(4,), activation="tanh", seeds=student_seeds(2, 6),
            config=dataclasses_replace(QUICK, target_loss=1e-10), executor=executor,
            enough=_enough_after(1),
        )
    assert out.stop_reason is not None
    assert out.n_trained + out.n_skipped == 6 and len(out.finished) >= 1


_ORPHAN_PARENT = """
import os, sys, time
from ecflow.parallel import make_executor

with make_executor(1) as ex:
    pid = ex.submit(os.getpid).result()
    print(pid, flush=True)
    ex.submit(time.sleep, 600)
    time.sleep(600)
"""


def test_pool_workers_end_when_their_parent_is_killed():
    # a SIGKILLed recovery must not leave workers training students for nobody
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(parent.stdout.readline())
        os.kill(worker, 0)  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            raise AssertionError("the pool worker outlived its killed parent by 30 s")
    finally:
        if parent.poll() is None:
            parent.kill()


# --- the budget: one owner of the clocks --------------------------------------------------------


def test_budget_shares_fit_configs_and_log_their_cuts():
    budget = Budget(time.monotonic() + 100.0)
    assert 99.0 < budget.left() <= 100.0 and not budget.expired()
    half = budget.share(0.5)
    assert 49.0 < half.left() <= 50.0 and half.cuts is budget.cuts
    long = TrainConfig(max_seconds=1000.0)
    cut = half.fit(long, "fine-tune")
    assert cut.max_seconds <= 50.0
    assert budget.cuts == ["fine-tune: budget cut from 1000 s to 50 s"]
    assert half.fit(TrainConfig(max_seconds=10.0)).max_seconds == 10.0  # fits: unchanged
    assert half.fit(long).max_seconds <= 50.0 and len(budget.cuts) == 1  # unnamed: not logged
    past = Budget(time.monotonic() - 1.0)
    assert past.expired() and past.fit(long, floor=0.5).max_seconds == 0.5
    with pytest.raises(InputError, match="share"):
        budget.share(0.0)


def test_budget_without_limit_and_its_wall_clock_round_trip():
    free = Budget.minutes(None)
    assert free.left() == float("inf") and free.wall_deadline() is None
    assert free.share(0.4).end is None and Budget.until_wall(None).end is None
    config = TrainConfig(max_seconds=5.0)
    assert free.fit(config, "x") is config and free.cuts == []
    budget = Budget.minutes(1.0)
    back = Budget.until_wall(budget.wall_deadline())
    assert abs(back.end - budget.end) < 1.0
    with pytest.raises(InputError, match="max_minutes"):
        Budget.minutes(-1.0)
