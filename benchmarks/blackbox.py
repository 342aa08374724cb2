"""Black-box benchmark (issue 15): recover ONNX teachers whose width and activation are unknown.

For each synthetic ``g`` teacher (d_in 4 and 8, r 2, 4 and 8 by default; seeds held out from
the tests, 100 and up) the teacher is written as a float64 ONNX model (``g`` from standard
operators, so the graph names no activation) and queried only through onnxruntime:

1. the width search (``--hidden auto``: paper step 1, every activation of the spec a
   candidate) gives a width, an activation and the Expand-and-Cluster width;
2. Expand-and-Cluster runs at that width with that activation on the model's answers;
3. the recovered size, the RMSE on fresh answers of the model and the largest cosine distance
   to the teacher's neurons are recorded, with the time of the search and of the recovery;
4. next to it, the same recovery of the same teacher given the right width (``--rho``, default
   4) and the activation, as ``ecflow recover --teacher t.h5 --rho 4`` does.

One float32 ``tanh`` teacher (d_in 4, r 4) is recovered the same way; its RMSE is judged
against the float32 floor that the report states (:mod:`ecflow.blackbox`).

Usage::

    python -m benchmarks.blackbox [--d-in 4,8] [--r 2,4,8] [--seeds 1] [--students 10]
                                  [--budget 60] [--workers 2] [--rho 4] [--multiple 2]
                                  [--no-baseline]
                                  [--no-float32] [--out FILE] [--note TEXT]

Results go to ``benchmarks/results/blackbox.json``. The default grid is 6 teachers, each a
width search of several minutes on two cores plus two recoveries: about an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from benchmarks._common import machine as _machine, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "blackbox.json"
SEED0 = 100  # teachers of the tests use small seeds; these are held out


def _num(v):
    return None if v is None or not np.isfinite(v) else float(v)


def recover_black_box(bb, *, teacher, n_queries, n_fresh, seed, students, budget, executor,
                      search_config) -> dict[str, Any]:
    """``recover(teacher=bb, hidden="auto")``: width search, then Expand-and-Cluster on the
    black box's answers, judged on fresh ones; ``teacher`` only for the cosine distance."""
    from ecflow import metrics
    from ecflow.engines.base import TrainConfig
    from ecflow.recover import RecoverConfig, recover

    config = RecoverConfig(hidden="auto", n_students=students, n_queries=n_queries,
                           n_fresh=n_fresh, seed=seed, width_search=search_config,
                           train=TrainConfig(max_seconds=budget))
    rec = recover(teacher=bb, config=config, executor=executor)
    search = rec.width_search
    row: dict[str, Any] = {
        **{k: _num(v) if isinstance(v, float) else v for k, v in rec.precision.items()},
        "search_status": search.status.name,
        "width_found": search.width,
        "student_width": search.student_width,
        "activation": search.activation,
        "activation_ranking": [r.to_dict() for r in search.ranking],
        "search_reason": search.reason,
        "search_seconds": rec.phase_seconds.get("width search"),
        "recover_seconds": rec.seconds,
        "status": rec.status.name,
        "recovered_hidden": list(rec.hidden_sizes),
        "rmse_fresh": _num(rec.rmse_fresh),
    }
    if rec.network is not None:
        row["max_cosine_distance"] = _num(metrics.match_neurons(rec.network, teacher).max_distance)
    row["exact"] = bool(rec.recovered and rec.hidden_sizes == teacher.hidden_sizes)
    return row


def recover_known(teacher, *, rho, n_queries, n_fresh, seed, students, budget,
                  executor) -> dict[str, Any]:
    """The same teacher recovered given its width (``rho``) and activation."""
    from ecflow.engines.base import TrainConfig
    from ecflow.recover import RecoverConfig, recover

    config = RecoverConfig(rho=rho, n_students=students, n_queries=n_queries, n_fresh=n_fresh,
                           seed=seed, train=TrainConfig(max_seconds=budget))
    t = time.monotonic()
    rec = recover(teacher=teacher, config=config, executor=executor)
    return {
        "rho": rho,
        "student_width": rec.student_width,
        "status": rec.status.name,
        "recovered_hidden": list(rec.hidden_sizes),
        "rmse_fresh": _num(rec.rmse_fresh),
        "max_cosine_distance": _num(rec.max_cosine_distance),
        "seconds": time.monotonic() - t,
    }


def run(*, d_ins, rs, n_seeds, students, budget, workers, rho, baseline, float32, out,
        note=None, multiple=2.0, n_queries=30000, n_fresh=10000) -> dict[str, Any]:
    from ecflow import blackbox, interop, teachers
    from ecflow.parallel import make_executor
    from ecflow.width_search import WidthSearchConfig

    search_config = WidthSearchConfig(multiple=multiple)
    cases = [("g", d, r, SEED0 + k, "float64") for d in d_ins for r in rs for k in range(n_seeds)]
    if float32:
        # early in the order, so that a run cut short still has it
        cases.insert(min(2, len(cases)), ("tanh", 4, 4, SEED0, "float32"))
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, make_executor(workers) as executor:
        for act, d, r, seed, precision in cases:
            teacher = teachers.synthetic_teacher(teachers.TeacherConfig(d, (r,), act), seed)
            path = interop.write_onnx(Path(tmp) / f"{act}-{d}-{r}-{seed}.onnx", teacher,
                                      float32=precision == "float32")
            bb = blackbox.from_onnx(path)
            # The float32 model computes with float32-rounded weights: that is its teacher.
            truth = interop.read_onnx_network(path)
            row = {"activation_true": act, "d_in": d, "r": r, "seed": seed}
            row.update(recover_black_box(
                bb, teacher=truth, n_queries=n_queries, n_fresh=n_fresh, seed=seed,
                students=students, budget=budget, executor=executor,
                search_config=search_config,
            ))
            if baseline and precision == "float64":
                row["given_rho"] = recover_known(
                    teacher, rho=rho, n_queries=n_queries, n_fresh=n_fresh, seed=seed,
                    students=students, budget=budget, executor=executor,
                )
            rows.append(row)
            # a run cut short keeps the cases it finished
            write_json(_summary(rows, search_config, students=students, budget=budget,
                                workers=workers, rho=rho, n_queries=n_queries, n_fresh=n_fresh,
                                started=started, note=note, partial=len(rows) < len(cases),
                                planned=len(cases)), out, indent=1)
            print(json.dumps({k: row.get(k) for k in (
                "activation_true", "d_in", "r", "width_found", "student_width", "activation",
                "recovered_hidden", "rmse_fresh", "search_seconds", "exact")}), flush=True)
    return _summary(rows, search_config, students=students, budget=budget, workers=workers,
                    rho=rho, n_queries=n_queries, n_fresh=n_fresh, started=started, note=note,
                    partial=False, planned=len(cases))


def _summary(rows, search_config, *, students, budget, workers, rho, n_queries, n_fresh,
             started, note, partial, planned) -> dict[str, Any]:
    data = {
        "machine": _machine(),
        "settings": {
            "students": students, "budget_seconds": budget, "workers": workers, "rho": rho,
            "n_queries": n_queries, "n_fresh": n_fresh,
            "width_search": {k: v for k, v in search_config.__dict__.items() if k != "train"},
            "short_student_seconds": search_config.train.total_seconds,
        },
        "partial": partial,
        "cases_planned": planned,
        "seconds": time.monotonic() - started,
        "cases": rows,
        "summary": {
            "exact": sum(bool(r.get("exact")) for r in rows),
            "total": len(rows),
        },
    }
    if note is not None:
        data["notes"] = note
    return data


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.blackbox",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--d-in", default="4,8")
    parser.add_argument("--r", default="2,4,8")
    parser.add_argument("--seeds", type=int, default=1, help="teachers per (d_in, r)")
    parser.add_argument("--students", type=int, default=10)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per E&C student")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rho", type=float, default=4.0, help="width of the baseline recovery")
    parser.add_argument("--multiple", type=float, default=2.0,
                        help="E&C width = ceil(multiple x width found)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-float32", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default=None, help="remark stored as the file's 'notes'")
    args = parser.parse_args(argv)
    data = run(d_ins=_ints(args.d_in), rs=_ints(args.r), n_seeds=args.seeds,
               students=args.students, budget=args.budget, workers=args.workers, rho=args.rho,
               baseline=not args.no_baseline, float32=not args.no_float32, out=args.out,
               note=args.note, multiple=args.multiple)
    s = data["summary"]
    print(f"{s['exact']}/{s['total']} recovered exactly in {data['seconds']:.0f} s; "
          f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
