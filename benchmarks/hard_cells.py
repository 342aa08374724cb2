"""The sweep's hard cells (d_in 2 with r 4 and r 8): what would recover them.

The medium sweep's teachers ``d2_r4_t1`` and ``d2_r8_t1`` (seed 0 of the medium profile) had no
student of ρ 4 at near-zero loss, so nothing could be clustered. For each, this trains the same
few students under each remedy (the schedule, the initialisation scale, the overparameterisation)
and counts those that reach near-zero loss, then runs Expand-and-Cluster on each variant's
students. The variants are interleaved student by student, so that the machine's load falls on
all of them alike. Writes ``benchmarks/results/sweep-hard-cells.json``.

Usage::

    python -m benchmarks.hard_cells [--students 6] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks._common import write_json
from ecflow import sweep
from ecflow.budget import Budget
from ecflow.engines import get_engine
from ecflow.engines.base import NEAR_ZERO_LOSS, TrainConfig
from ecflow.networks import glorot_normal
from ecflow.recover import reconstruct_from_students
from ecflow.sweep.runner import _recover_config, _teacher_data

RESULTS = Path(__file__).resolve().parent / "results"

RECOVERY_MINUTES = 2.0

VARIANTS = {
    "medium (lm-first, Glorot, rho 4)": dict(schedule="lm-first", scale=1.0, rho=4),
    "flow-first": dict(schedule="flow-first", scale=1.0, rho=4),
    "init x 0.5": dict(schedule="lm-first", scale=0.5, rho=4),
    "init x 2": dict(schedule="lm-first", scale=2.0, rho=4),
    "rho 8": dict(schedule="lm-first", scale=1.0, rho=8),
}


def _init(d_in: int, width: int, scale: float, seed: int):
    net = glorot_normal((d_in, width, 1), ("g", "identity"), seed)
    return net.unflatten(net.flatten() * scale)


def _student(data, width, variant, seed, max_seconds):
    config = TrainConfig(schedule=variant["schedule"], max_seconds=max_seconds,
                         target_loss=NEAR_ZERO_LOSS)
    init = _init(data["x"].shape[1], width, variant["scale"], seed)
    with threadpool_limits(limits=1):
        return get_engine("native").train(data["x"], data["y"], init=init, config=config)


def run(students: int, max_seconds: float) -> dict[str, Any]:
    medium = sweep.profile_config("medium")
    out: dict[str, Any] = {"teachers": {}}
    load0 = os.getloadavg()
    for key in (sweep.TeacherKey(2, 4, 1), sweep.TeacherKey(2, 8, 1)):
        data = _teacher_data(medium, key)
        trained: dict[str, list] = {name: [] for name in VARIANTS}
        for s in range(students):
            for name, variant in VARIANTS.items():
                res = _student(data, variant["rho"] * key.r, variant, 1000 + s, max_seconds)
                trained[name].append(res)
                print(f"{key.name} {name} s{s}: MSE {res.loss:.2e} {res.status.name} "
                      f"{res.seconds:.1f} s", flush=True)
        rows = {}
        for name, results in trained.items():
            unit = sweep.RecoveryUnit(key.d_in, key.r, key.teacher, VARIANTS[name]["rho"])
            config = dataclasses.replace(_recover_config(medium, unit), n_students=students)
            # students that did not converge make a long pruning: each recovery gets a
            # deadline, and the file says so
            rec = reconstruct_from_students(
                data["x"], data["y"], results, config=config, x_fresh=data["x_fresh"],
                y_fresh=data["y_fresh"], teacher=data["teacher"],
                budget=Budget.minutes(RECOVERY_MINUTES),
            )
            rows[name] = {
                "students": students,
                "near_zero_loss": sum(r.loss <= NEAR_ZERO_LOSS for r in results),
                "losses": [float(r.loss) for r in results],
                "seconds": [float(r.seconds) for r in results],
                "recovered_size": int(sum(rec.hidden_sizes)),
                "rmse_fresh": None if rec.rmse_fresh is None else float(rec.rmse_fresh),
                "status": rec.status.name,
            }
        out["teachers"][key.name] = rows
    out.update(
        max_seconds_per_student=max_seconds, gamma=medium.gamma,
        recovery_deadline_minutes=RECOVERY_MINUTES,
        teachers_from="the medium profile (seed 0), the two d_in 2 teachers it failed at rho 4",
        load_average_start=list(load0), load_average_end=list(os.getloadavg()),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hard_cells",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--note", default=None)
    args = parser.parse_args(argv)
    record = run(args.students, args.max_seconds)
    if args.note:
        record["note"] = args.note
    write_json(record, RESULTS / "sweep-hard-cells.json")
    for teacher, rows in record["teachers"].items():
        for name, row in rows.items():
            print(f"{teacher} {name}: {row['near_zero_loss']}/{row['students']} at near-zero "
                  f"loss, size {row['recovered_size']}, {row['status']}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
