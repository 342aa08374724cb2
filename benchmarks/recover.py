"""Default ``ecflow recover`` end to end: wall time, students trained / stopped / reused, result.

Each case draws a g teacher (``ecflow teacher synthetic``) and recovers it at ρ 4 with the
defaults through the real command, two worker processes; ``--prototype`` also runs the same
teacher the way a plain Expand-and-Cluster prototype does (every student trained for 60 s or
to zero loss: no recovery-grade stop, no stall rule, no early stop of the expansion), side by side, for the ratio the
README quotes. Results go to ``benchmarks/results/recover.json`` (merged by case, so parts can
run at different times); ``--note`` adds a remark to the file.

Usage::

    python -m benchmarks.recover [--cases 4x4,8x4,16x8] [--teachers 3] [--prototype 4x4]
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
    write_json as _write,
)

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "recover.json"
TEACHER_SEEDS = (101, 102, 103)
TARGETS = {"4x4_median_seconds": 120.0, "exact": "every recovery RECOVERED at the teacher's size"}
PROTOTYPE = ("--student-loss", "0", "--no-early-stop", "--stall-factor", "0", "--max-seconds", "60")


def run_case(d_in: int, r: int, seed: int, *, workers: int, extra: tuple[str, ...] = ()) -> dict:
    """One teacher, one recovery through the CLI; the report's numbers and the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        t, out, rep = Path(tmp, "t.h5"), Path(tmp, "rec.h5"), Path(tmp, "rep.json")
        p = _ecflow("teacher", "synthetic", "--d-in", str(d_in), "--r", str(r), "--seed",
                    str(seed), "--out", str(t))
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        command = ["recover", "--teacher", str(t), "--rho", "4", "--out", str(out),
                   "--report", str(rep), "--workers", str(workers), *extra]
        t0 = time.perf_counter()
        p = _ecflow(*command)
        wall = time.perf_counter() - t0
        report = json.loads(rep.read_text()) if rep.exists() else {}
    exact = (
        report.get("status") == "RECOVERED"
        and report.get("hidden_sizes") == [r]
        and (report.get("max_cosine_distance") or 1.0) <= 1e-8
    )
    return {
        "d_in": d_in,
        "r": r,
        "teacher_seed": seed,
        "command": "ecflow " + " ".join(command[:2] + ["t.h5"] + command[3:]),
        "exit_code": p.returncode,
        "wall_seconds": round(wall, 1),
        "status": report.get("status"),
        "hidden_sizes": report.get("hidden_sizes"),
        "exact": exact,
        "rmse_fresh": report.get("rmse_fresh"),
        "max_cosine_distance": report.get("max_cosine_distance"),
        "students_trained": report.get("students_trained"),
        "students_stopped": report.get("students_stopped"),
        "students_reused": report.get("students_reused"),
        "students_not_started": report.get("students_skipped"),
        "student_status": report.get("student_status"),
        "stop_reason": report.get("stop_reason"),
        "phase_seconds": report.get("phase_seconds"),
    }


def bench_recover(
    *,
    cases: tuple[str, ...] = ("4x4", "8x4", "16x8"),
    teachers: int = 3,
    prototype: tuple[str, ...] = ("4x4",),
    prototype_teachers: int | None = None,
    workers: int = 2,
    out: Path = OUT,
    note: str | None = None,
) -> dict[str, Any]:
    """Run every case (``d_inxr``) on ``teachers`` teachers, then the prototype runs; merge
    each finished case into ``out`` at once, so an interrupted run keeps what it measured."""
    for kind, names, extra in (("default", cases, ()), ("prototype", prototype, PROTOTYPE)):
        for name in names:
            d_in, r = (int(v) for v in name.split("x"))
            rows = []
            t0 = time.perf_counter()
            machine = _machine()
            n = teachers if kind == "default" or prototype_teachers is None else prototype_teachers
            for seed in TEACHER_SEEDS[:n]:
                row = run_case(d_in, r, seed, workers=workers, extra=extra)
                print(json.dumps({k: row[k] for k in ("d_in", "r", "teacher_seed", "wall_seconds",
                                                        "status", "hidden_sizes", "rmse_fresh")}),
                      flush=True)
                rows.append(row)
            walls = [row["wall_seconds"] for row in rows]
            section = {
                "kind": kind,
                "options": list(extra),
                "runs": rows,
                "median_wall_seconds": statistics.median(walls),
                "exact": sum(row["exact"] for row in rows),
                "of": len(rows),
                "machine": machine,
                "run_seconds": round(time.perf_counter() - t0, 1),
                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            merge_case(out, f"{kind}-{name}", section, targets=TARGETS, note=note)
    data = _read(out)
    proto = data.get("cases", {}).get("prototype-4x4")
    default = data.get("cases", {}).get("default-4x4")
    if proto and default:
        # side by side: the same teachers in both runs
        walls = {r["teacher_seed"]: r["wall_seconds"] for r in default["runs"]}
        pairs = [(r["wall_seconds"], walls[r["teacher_seed"]]) for r in proto["runs"]
                 if r["teacher_seed"] in walls]
        data["prototype_over_default_4x4"] = [
            {"prototype_seconds": p, "default_seconds": d, "ratio": round(p / d, 2)}
            for p, d in pairs
        ]
        _write(data, out)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recover",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="4x4,8x4,16x8", help="d_inxr, comma-separated ('' for none)")
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--prototype", default="4x4", help="cases also run as the prototype ('' for none)")
    parser.add_argument("--prototype-teachers", type=int, default=None,
                        help="teachers of the prototype runs (default: --teachers)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default=None, help="remark stored in the file's notes")
    args = parser.parse_args(argv)
    split = lambda s: tuple(v for v in s.split(",") if v)  # noqa: E731
    bench_recover(cases=split(args.cases), teachers=args.teachers,
                  prototype=split(args.prototype), prototype_teachers=args.prototype_teachers,
                  workers=args.workers, out=args.out,
                  note=args.note)


if __name__ == "__main__":
    main()
