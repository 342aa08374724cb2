"""Deep teachers recovered layer by layer with the defaults of ``ecflow recover``.

Three kinds of case, each through the real commands with two worker processes:

* ``act:d_in-h1-...-1`` draws a synthetic deep teacher (appendix A.4 stacked, each layer's
  inputs standardised, A.5: ``ecflow teacher synthetic --hidden``) and recovers it at ρ 4;
* ``dataset-act:d_in-h1-...-n_classes`` (``digits-tanh:64-16-16-10``) trains a deep classifier
  (``ecflow teacher train --hidden``) and recovers it at ρ 4 from all images of its data set;
* ``depth:act:d_in-h1-...-1`` draws a synthetic teacher, exports it as ONNX and recovers the
  black box with ``--hidden auto --depth auto``.
 Recorded per run: the recovered size of every hidden
layer, the fresh RMSE, the cosine distance of each layer's neurons to the teacher's (in the
teacher's basis, :func:`ecflow.layerwise.match_layers`), the students, bias spreads and dropped
neurons of each stage, and the wall time. Results go to ``benchmarks/results/deep.json``
(merged by case, so parts can run at different times); ``--note`` adds a remark.

Usage::

    python -m benchmarks.deep [--cases g:8-4-2-1,relu:6-5-3-1,digits-tanh:64-16-16-10,...]
                              [--teachers 3] [--workers 2] [--note TEXT]
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
TEACHER_SEEDS = (101, 102, 103, 104, 105)
EVEN_LINEAR_CASES = tuple(f"{a}:{s}" for a in ("relu", "softplus", "gelu")
                          for s in ("8-4-2-1", "6-5-3-1"))
THREE_LAYER_CASES = ("g:8-6-4-2-1", "tanh:8-6-4-2-1", "relu:8-6-4-2-1")
TRAINED_CASES = ("digits-tanh:64-16-16-10", "digits-relu:64-16-16-10",
                 "mnist-tanh:784-16-16-10")
DEPTH_CASES = ("depth:tanh:6-4-1", "depth:tanh:6-4-3-1", "depth:tanh:6-4-3-2-1")
CASES = ("g:8-4-2-1", "tanh:6-6-4-1", *EVEN_LINEAR_CASES, *THREE_LAYER_CASES, *TRAINED_CASES,
         *DEPTH_CASES)
TEACHERS_PER_CASE = {"g:8-4-2-1": 3, **{c: 5 for c in EVEN_LINEAR_CASES},
                     **{c: 3 for c in THREE_LAYER_CASES}}
"""Teachers per case: five of each even+linear case, three of each three-layer one, three g
8-4-2-1, one of each other case."""
TRAINED_RMSE = 1e-4
"""Logit RMSE target of a trained classifier (synthetic teachers: ``TARGETS["rmse_fresh"]``)."""
TARGETS = {
    "sizes": "every hidden layer at the teacher's size",
    "rmse_fresh": 1e-8,
    "first_layer_cosine_distance": 1e-6,
    "wall_seconds_2_cores": 25 * 60,
}


def _parse(case: str) -> tuple[str, str, int, tuple[int, ...]]:
    """``"g:8-4-2-1"`` -> ``("synthetic", "g", 8, (4, 2))``; ``"digits-tanh:64-16-16-10"`` ->
    ``("digits", "tanh", 64, (16, 16))``; ``"depth:tanh:6-4-1"`` -> ``("depth", "tanh", 6,
    (4,))`` (the output width is the teacher's)."""
    parts = case.split(":")
    kind = "depth" if parts[0] == "depth" and len(parts) == 3 else None
    if kind is None and len(parts) != 2:
        raise ValueError(f"case {case!r}: expected act:d_in-h1-...-d_out")
    name, sizes = parts[-2], parts[-1]
    if kind is None:
        kind, _, name = name.rpartition("-") if "-" in name else ("synthetic", "", name)
    dims = [int(v) for v in sizes.split("-")]
    if len(dims) < 3:
        raise ValueError(f"case {case!r}: needs a hidden layer")
    return kind, name, dims[0], tuple(dims[1:-1])


def _teacher(kind: str, act: str, d_in: int, hidden, seed: int, tmp: str) -> Path:
    """The case's teacher file (or ONNX model for a depth search)."""
    t = Path(tmp, "t.h5")
    if kind in ("synthetic", "depth"):
        p = _ecflow("teacher", "synthetic", "--d-in", str(d_in), "--hidden",
                    ",".join(map(str, hidden)), "--activation", act, "--seed", str(seed),
                    "--out", str(t))
    else:
        p = _ecflow("teacher", "train", "--dataset", kind, "--hidden", ",".join(map(str, hidden)),
                    "--activation", act, "--seed", str(seed), "--out", str(t))
    if p.returncode == 0 and kind == "depth":
        onnx = Path(tmp, "t.onnx")
        p = _ecflow("export", str(t), "--onnx", str(onnx))
        t = onnx
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    return t


def run_case(case: str, seed: int, *, workers: int) -> dict:
    """One teacher, one recovery through the CLI; the report's numbers and the wall time."""
    kind, act, d_in, hidden = _parse(case)
    with tempfile.TemporaryDirectory() as tmp:
        t = _teacher(kind, act, d_in, hidden, seed, tmp)
        out, rep = Path(tmp, "rec.h5"), Path(tmp, "rep.json")
        widths = ["--hidden", "auto", "--depth", "auto"] if kind == "depth" else ["--rho", "4"]
        command = ["recover", "--teacher", str(t), *widths, "--out", str(out),
                   "--report", str(rep), "--workers", str(workers)]
        t0 = time.perf_counter()
        p = _ecflow(*command)
        wall = time.perf_counter() - t0
        report = json.loads(rep.read_text()) if rep.exists() else {}
    layers = report.get("layers", [])
    sizes = report.get("hidden_sizes")
    first = (layers[0]["max_cosine_distance"] if layers
             else report.get("max_cosine_distance"))
    trained = kind not in ("synthetic", "depth")
    rmse = report.get("rmse_train" if trained else "rmse_fresh")
    rmse_target = TRAINED_RMSE if trained else TARGETS["rmse_fresh"]
    search = report.get("width_search") or {}
    # A trained teacher is judged on its logits, an ONNX black box has no weights to compare.
    cosine_ok = kind != "synthetic" or (
        first is not None and first <= TARGETS["first_layer_cosine_distance"])
    return {
        "case": case,
        "teacher_seed": seed,
        "teacher_hidden": list(hidden),
        "command": "ecflow " + " ".join(command[:2] + [t.name] + command[3:]),
        "exit_code": p.returncode,
        "stderr_tail": p.stderr[-400:] if p.returncode not in (0, 1) else "",
        "wall_seconds": round(wall, 1),
        "status": report.get("status"),
        "hidden_sizes": sizes,
        "extra_neurons_per_layer": (
            [s - h for s, h in zip(sizes, hidden)] if sizes and len(sizes) == len(hidden) else None
        ),
        "exact_sizes": sizes == list(hidden),
        "rmse_fresh" if not trained else "rmse_logits": rmse,
        "first_layer_cosine_distance": first,
        "depth_found": search.get("depth") if kind == "depth" else None,
        "depth_reasons": search.get("depth_reasons") if kind == "depth" else None,
        "meets_targets": bool(
            sizes == list(hidden) and rmse is not None and rmse <= rmse_target and cosine_ok
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
            print(json.dumps({k: row.get(k) for k in (
                "case", "teacher_seed", "wall_seconds", "status", "hidden_sizes", "rmse_fresh",
                "rmse_logits", "first_layer_cosine_distance")}), flush=True)
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
                        help="teachers per case (default: TEACHERS_PER_CASE, else 1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default=None, help="remark stored in the file's notes")
    args = parser.parse_args(argv)
    bench_deep(cases=tuple(v for v in args.cases.split(",") if v), teachers=args.teachers,
               workers=args.workers, out=args.out, note=args.note)


if __name__ == "__main__":
    main()
