"""Paper Tables 1 and 2 on this machine: classifiers trained on images, recovered from queries.

Each case trains a one-hidden-layer teacher with ``ecflow teacher train`` (seed 0) and recovers
it through the real ``ecflow recover --rho 4`` with its defaults (the teacher file names its
data set, so all of the data set's images are the queries; the Table-2 analogue passes
``--queries fashion:test``, the 10 000 test images of Fashion-MNIST, to an mnist teacher:
the 70 000 would cost seven times the CPU). Recorded per case, in the paper's columns: σ, r,
the logit RMSE on the queries, m̂/r (recovered width over the teacher's), ⟨d⟩ (mean cosine
distance of the teacher's neurons to their matches, on the pre-activations over the queries)
and the wall time, with the report's details and the load average. Results are merged by case
into ``benchmarks/results/table1.json`` (written atomically), so cases can run at different
times; cases of the issue's list that have not run are listed with the reason.

Usage::

    python -m benchmarks.table1 [--cases digits-tanh-16,digits-g-16] [--workers 2]
                                [--max-minutes M] [--not-run-reason TEXT] [--note TEXT]
    python -m benchmarks.table1 --markdown     # the README table from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from benchmarks._common import ecflow as _ecflow, read_json as _read, write_json as _write

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "table1.json"
TEACHER_SEED = 0
TARGETS = {"rmse": 1e-3, "width_ratio": 1.05, "mean_cosine_distance": 1e-3}
ALL_CASES = (
    *(f"digits-{a}-{r}" for r in (16, 32) for a in ("g", "tanh", "sigmoid", "softplus", "relu")),
    "mnist-g-16",
    "mnist-tanh-16",
    "mnist-tanh-16-fashion",
)
"""The issue's list: ``dataset-activation-r`` (teacher trained and queried on the data set),
and ``mnist-tanh-16-fashion``: an mnist teacher queried with fashion (Table 2)."""


QUERIES = {"fashion": "fashion:test"}
"""Query spec of a case's fourth part."""


def _parse(case: str) -> tuple[str, str, int, str | None]:
    parts = case.split("-")
    if len(parts) not in (3, 4) or case not in ALL_CASES:
        raise SystemExit(f"unknown case {case!r}; expected some of: {', '.join(ALL_CASES)}")
    return parts[0], parts[1], int(parts[2]), (QUERIES[parts[3]] if len(parts) == 4 else None)


def _load() -> dict[str, float]:
    return dict(zip(("1min", "5min", "15min"), os.getloadavg()))


def fashion_missing() -> str | None:
    """Why the fashion cases cannot run here, or None."""
    from ecflow import datasets
    from ecflow.errors import InputError

    try:
        datasets.load("fashion", "test")
    except InputError as exc:
        return str(exc)
    return None


def typed_command(command: list[str], paths: tuple[Path, ...]) -> str:
    """``ecflow COMMAND`` as a reader would type it: temporary paths by their file names."""
    names = {str(p): p.name for p in paths}
    return "ecflow " + " ".join(names.get(a, a) for a in command)


def run_case(case: str, *, workers: int, max_minutes: float | None) -> dict[str, Any]:
    """One teacher trained and recovered through the CLI; the paper's columns and details."""
    dataset, act, r, queries = _parse(case)
    with tempfile.TemporaryDirectory() as tmp:
        t, out, rep = Path(tmp, "t.h5"), Path(tmp, "rec.h5"), Path(tmp, "rep.json")
        train = ["teacher", "train", "--dataset", dataset, "--hidden", str(r), "--activation",
                 act, "--seed", str(TEACHER_SEED), "--out", str(t)]
        p = _ecflow(*train)
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        accuracy = p.stdout.strip().splitlines()[0]
        command = ["recover", "--teacher", str(t), "--rho", "4", "--out", str(out),
                   "--report", str(rep), "--workers", str(workers)]
        if queries is not None:
            command += ["--queries", queries]
        if max_minutes is not None:
            command += ["--max-minutes", str(max_minutes)]
        load_start = _load()
        t0 = time.perf_counter()
        p = _ecflow(*command)
        wall = time.perf_counter() - t0
        report = json.loads(rep.read_text()) if rep.exists() else {}
    hidden = report.get("hidden_sizes") or [0]
    rmse = report.get("rmse_train")
    ratio = hidden[0] / r
    mean_d = report.get("mean_cosine_distance")
    met = {
        "rmse": rmse is not None and rmse <= TARGETS["rmse"],
        "width_ratio": 1.0 <= ratio <= TARGETS["width_ratio"],
        "mean_cosine_distance": mean_d is not None and mean_d <= TARGETS["mean_cosine_distance"],
    }
    return {
        "dataset": dataset,
        "queries": queries or dataset,
        "activation": act,
        "r": r,
        "teacher": " ".join(["ecflow", *train[:-1], "t.h5"]),
        "teacher_training": accuracy,
        "command": typed_command(command, (t, out, rep)),
        "exit_code": p.returncode,
        "error": p.stderr.strip().splitlines()[-1] if p.returncode not in (0, 1) and p.stderr
        else None,
        "rmse": rmse,
        "recovered_width": hidden[0],
        "width_ratio": ratio,
        "mean_cosine_distance": mean_d,
        "max_cosine_distance": report.get("max_cosine_distance"),
        "wall_seconds": round(wall, 1),
        "targets_met": met,
        "status": report.get("status"),
        "student_losses": report.get("student_losses"),
        "student_status": report.get("student_status"),
        "phase_seconds": report.get("phase_seconds"),
        "notes": report.get("notes"),
        "load_average_at_start": load_start,
        "load_average_at_end": _load(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _not_run(data: dict[str, Any], reason: str, reasons: dict[str, str] | None = None
             ) -> dict[str, str]:
    missing = fashion_missing()
    reasons = reasons or {}
    out = {}
    for case in ALL_CASES:
        if case in data.get("cases", {}):
            continue
        uses_fashion = "fashion" in case
        out[case] = (f"fashion is not installed: {missing}" if uses_fashion and missing
                     else reasons.get(case, reason))
    return out


def bench_table1(
    *,
    cases: tuple[str, ...],
    workers: int = 2,
    max_minutes: float | None = None,
    out: Path = OUT,
    note: str | None = None,
    not_run_reason: str = "not run yet: CPU time (2 cores shared with other jobs)",
    reasons: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``cases`` one after the other, merging each into ``out`` as soon as it ends."""
    for case in cases:
        _parse(case)
    missing = fashion_missing()
    for case in cases:
        if "fashion" in case and missing:
            print(json.dumps({"case": case, "skipped": missing}), flush=True)
            continue
        row = run_case(case, workers=workers, max_minutes=max_minutes)
        print(json.dumps({"case": case, **{k: row[k] for k in (
            "rmse", "recovered_width", "mean_cosine_distance", "wall_seconds", "status")}}),
            flush=True)
        data = _read(out)
        data.setdefault("cases", {})[case] = row
        data["targets"] = TARGETS
        data["machine"] = {"cpus": os.cpu_count()}
        if note is not None:
            data.setdefault("notes", [])
            if note not in data["notes"]:
                data["notes"].append(note)
        data["not_run"] = _not_run(data, not_run_reason)
        _write(data, out)
    data = _read(out)
    data["not_run"] = _not_run(data, not_run_reason, reasons)
    if note is not None:
        data.setdefault("notes", [])
        if note not in data["notes"]:
            data["notes"].append(note)
    _write(data, out)
    return data


def markdown(data: dict[str, Any]) -> str:
    """The README table: the paper's columns, one row per case that ran."""
    lines = ["| teacher (queries) | σ | r | RMSE | m̂/r | ⟨d⟩ | wall time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for case in ALL_CASES:
        row = data.get("cases", {}).get(case)
        if row is None:
            continue
        fmt = lambda v: "n/a" if v is None else f"{v:.1e}"  # noqa: E731
        lines.append(
            f"| {row['dataset']} ({row['queries']}) | {row['activation']} | {row['r']} | "
            f"{fmt(row['rmse'])} | {row['width_ratio']:.2f} | {fmt(row['mean_cosine_distance'])} "
            f"| {row['wall_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table1",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(ALL_CASES),
                        help="comma-separated cases ('' for none): " + ", ".join(ALL_CASES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="passed to ecflow recover (default: none, the command's defaults)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default=None, help="remark stored in the file's notes")
    parser.add_argument("--not-run-reason", default="not run yet: CPU time (2 cores shared "
                        "with other jobs)", help="why the cases not in the file did not run")
    parser.add_argument("--reason", action="append", default=[], metavar="CASE=TEXT",
                        help="why CASE did not run (repeatable; overrides --not-run-reason)")
    parser.add_argument("--markdown", action="store_true", help="print the README table only")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(_read(args.out)))
        return
    bench_table1(cases=tuple(v for v in args.cases.split(",") if v), workers=args.workers,
                 max_minutes=args.max_minutes, out=args.out, note=args.note,
                 not_run_reason=args.not_run_reason,
                 reasons=dict(r.split("=", 1) for r in args.reason))


if __name__ == "__main__":
    main()
