"""Deep teachers recovered layer by layer (issue 14) with the defaults of ``ecflow recover``.

Each case draws a synthetic deep teacher (appendix A.4 stacked, each layer's inputs
standardised, A.5: ``ecflow teacher synthetic --hidden``) and recovers it at ρ 4 through the
real command with two worker processes. Recorded per run: the recovered size of every hidden
layer, the fresh RMSE, the cosine distance of each layer's neurons to the teacher's (in the
teacher's basis, :func:`ecflow.layerwise.match_layers`), the students, bias spreads and dropped
neurons of each stage, and the wall time. Results go to ``benchmarks/results/deep.json``
(merged by case, so parts can run at different times); ``--note`` adds a remark.

Usage::

    python -m benchmarks.deep [--cases g:8-4-2-1,tanh:6-6-4-1,g:8-6-4-2-1] [--teachers 3]
                              [--workers 2] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from benchmarks._common import (
    ecflow as _ecflow,
    machine as _machine,
    merge_case,
    read_json as _read,
)

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "deep.json"
TEACHER_SEEDS = (101, 102, 103)
CASES = ("g:8-4-2-1", "tanh:6-6-4-1", "g:8-6-4-2-1")
TEACHERS_PER_CASE = {"g:8-4-2-1": 3}
"""The issue's list: three g 8-4-2-1 teachers, one of each other case."""
TARGETS = {
    "sizes": "every hidden layer at the teacher's size",
    "rmse_fresh": 1e-8,
    "first_layer_cosine_distance": 1e-6,
    "wall_seconds_2_cores": 25 * 60,
}


def _parse(case: str) -> tuple[str, int, tuple[int, ...]]:
    """``"g:8-4-2-1"`` -> ``("g", 8, (4, 2))`` (the output width 1 is the teacher's)."""
    act, sizes = case.split(":")
    dims = [int(v) for v in sizes.split("-")]
    return act, dims[0], tuple(dims[1:-1])


def run_case(case: str, seed: int, *, workers: int) -> dict:
    """One teacher, one recovery through the CLI; the report's numbers and the wall time."""
    act, d_in, hidden = _parse(case)
    with tempfile.TemporaryDirectory() as tmp:
        t, out, rep = Path(tmp, "t.h5"), Path(tmp, "rec.h5"), Path(tmp, "rep.json")
        p = _ecflow("teacher", "synthetic", "--d-in", str(d_in), "--hidden",
                    ",".join(map(str, hidden)), "--activation", act, "--seed", str(seed),
                    "--out", str(t))
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        command = ["recover", "--teacher", str(t), "--rho", "4", "--out", str(out),
                   "--report", str(rep), "--workers", str(workers)]
        t0 = time.perf_counter()
        p = _ecflow(*command)
        wall = time.perf_counter() - t0
        report = json.loads(rep.read_text()) if rep.exists() else {}
    layers = report.get("layers", [])
    sizes = report.get("hidden_sizes")
    first = layers[0]["max_cosine_distance"] if layers else None
    rmse = report.get("rmse_fresh")
    return {
        "case": case,
        "teacher_seed": seed,
        "teacher_hidden": list(hidden),
        "command": "ecflow " + " ".join(command[:2] + ["t.h5"] + command[3:]),
        "exit_code": p.returncode,
        "stderr_tail": p.stderr[-400:] if p.returncode not in (0, 1) else "",
        "wall_seconds": round(wall, 1),
        "status": report.get("status"),
        "hidden_sizes": sizes,
        "extra_neurons_per_layer": (
            [s - h for s, h in zip(sizes, hidden)] if sizes and len(sizes) == len(hidden) else None
        ),
        "exact_sizes": sizes == list(hidden),
        "rmse_fresh": rmse,
        "first_layer_cosine_distance": first,
        "meets_targets": bool(
            sizes == list(hidden) and rmse is not None and rmse <= TARGETS["rmse_fresh"]
            and first is not None and first <= TARGETS["first_layer_cosine_distance"]
        ),
        "layers": [
            {
                "layer": lay["layer"],
                "size": lay["size"],
                "max_cosine_distance": lay["max_cosine_distance"],
                "teacher_distances": lay["teacher_distances"],
                "n_kept_clusters": lay["n_kept_clusters"],
                "student_hidden": lay["student_hidden"],
                "students_clustered": lay["n_students"],
                "students_trained": lay["students_trained"],
                "students_stopped": lay["students_stopped"],
                "best_student_loss": min(
                    (v for v in lay["student_losses"] if v is not None), default=None
                ),
                "bias_std_of_layer_below": lay["bias_std"],
                "dropped_below": lay["dropped_below"],
                "pruned": lay["pruned"],
                "seconds": round(lay["seconds"], 1),
            }
            for lay in layers
        ],
        "phase_seconds": report.get("phase_seconds"),
        "reason": report.get("reason"),
    }


def bench_deep(
    *,
    cases: tuple[str, ...] = CASES,
    teachers: int | None = None,
    workers: int = 2,
    out: Path = OUT,
    note: str | None = None,
) -> dict[str, Any]:
    """Run every case on its teachers (``teachers`` overrides the issue's count); merge each
    finished case into ``out`` at once, so an interrupted run keeps what it measured."""
    for case in cases:
        _parse(case)  # a malformed case fails before any work
    for case in cases:
        n = teachers if teachers is not None else TEACHERS_PER_CASE.get(case, 1)
        rows = []
        t0 = time.perf_counter()
        machine = _machine()
        for seed in TEACHER_SEEDS[:n]:
            row = run_case(case, seed, workers=workers)
            print(json.dumps({k: row[k] for k in ("case", "teacher_seed", "wall_seconds",
                                                    "status", "hidden_sizes", "rmse_fresh",
                                                    "first_layer_cosine_distance")}),
                  flush=True)
            rows.append(row)
        section = {
            "runs": rows,
            "median_wall_seconds": statistics.median(r["wall_seconds"] for r in rows),
            "exact_sizes": sum(r["exact_sizes"] for r in rows),
            "meets_targets": sum(r["meets_targets"] for r in rows),
            "of": len(rows),
            "machine": machine,
            "run_seconds": round(time.perf_counter() - t0, 1),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        merge_case(out, case, section, targets=TARGETS, note=note)
    return _read(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deep",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help="activation:d_in-h1-...-d_out, comma-separated")
    parser.add_argument("--teachers", type=int, default=None,
                        help="teachers per case (default: 3 for g:8-4-2-1, 1 for the others)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default=None, help="remark stored in the file's notes")
    args = parser.parse_args(argv)
    bench_deep(cases=tuple(v for v in args.cases.split(",") if v), teachers=args.teachers,
               workers=args.workers, out=args.out, note=args.note)


if __name__ == "__main__":
    main()
