"""Black boxes as they really answer: probabilities, rounded or noisy outputs, a query budget.

Four groups of cases, each written to ``benchmarks/results/oracle.json`` the moment it ends
(atomically, so a killed run keeps every finished case):

1. **probabilities** — scikit-learn ``MLPClassifier`` s (tanh, one hidden layer; 3 classes
   and binary) exported by skl2onnx (float64, ``zipmap`` off) and recovered from their
   ``probabilities`` output alone (``hidden="auto"``: no width, no activation, no output kind
   given), and a synthetic tanh teacher answering ``softmax`` through a Python callable. Each
   row: the recovered size, the RMSE of the centred logits on fresh inputs, and the largest
   cosine distance of the teacher's hidden neurons to the recovered ones.
2. **floor** — synthetic teachers answering rounded to 8, 6, 4, 2 decimals (the floor read
   from the values), or with Gaussian noise of 1e-8 to 1e-3 times ``std(y)`` (stated with
   ``noise_std``): the recovered size, the floor the report judged against, the RMSE, and the
   cosine distance to the teacher; a row whose sizes are not the teacher's says so in its
   ``note``.
3. **budget_seeds** (group ``seeds``) — the first teacher of ``--teachers`` for seeds 100 to
   109 under ``max_queries`` 5000, students of width 4 r and the width search (activation
   given): how many are exact.
4. **queries** — the recovery under ``max_queries`` Q (training and fresh queries and the
   probe together), counted at the callable, up a ladder of budgets: the fewest Q at which it
   is exact, and exact at every larger Q tried (``queries_fewest``), next to the default
   30 000 + 10 000 and Carlini et al.'s count. ``--exact-streak K`` stops a teacher's ladder
   after K exact budgets in a row.

Usage::

    python -m benchmarks.oracle [--groups probabilities,floor,queries] [--teachers g:4:4]
                                [--queries 1000,2000,5000,10000,20000,40000]
                                [--exact-streak K] [--n-queries 8000]
                                [--out FILE] [--note TEXT] [--plot-only]

A teacher is ``activation:d_in:r`` or ``activation:d_in:r:seed`` (default seed 100). Every row records the load average of the
machine; the floor rows are drawn in ``oracle-floor.png`` beside the result file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from benchmarks._common import machine, read_json, write_json  # noqa: E402
from ecflow import blackbox, teachers  # noqa: E402
from ecflow.config import RecoverConfig  # noqa: E402
from ecflow.metrics import match_vectors  # noqa: E402
from ecflow.oracle import OracleConfig  # noqa: E402
from ecflow.recover import recover  # noqa: E402

OUT = Path(__file__).parent / "results" / "oracle.json"
DECIMALS = (8, 6, 4, 2)
NOISE = (1e-8, 1e-6, 1e-4, 1e-3)
CARLINI = {"parameters": 100_000, "queries_log2": 21.5, "queries": 2**21.5,
           "source": "Carlini, Jagielski, Mironov (2020), cited in the issue"}


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _num(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _cosine(rec, weight, bias) -> float | None:
    """Largest cosine distance of the teacher's hidden neurons ``[w, b]`` to the recovered."""
    if rec.network is None:
        return None
    layer = rec.network.layers[0]
    t = np.hstack([weight, bias[:, None]])
    r = np.hstack([layer.weight, layer.bias[:, None]])
    return _num(match_vectors(t, r, layer.activation.symmetry).max_distance)


def _row(rec, seconds: float, **extra) -> dict[str, Any]:
    rep = rec.to_report()
    keys = ("status", "hidden_sizes", "activation", "rmse_train", "rmse_fresh", "rmse_floor",
            "rmse_tol", "output_floor", "output_decimals", "outputs", "queries_used",
            "saturated_rows_dropped", "precision_reason")
    row = {**extra, **{k: rep.get(k) for k in keys}, "seconds": seconds,
           "load_average": list(os.getloadavg())}
    width = extra.get("width_true")
    if width is not None:
        row["sizes_exact"] = list(rec.hidden_sizes) == [width]
        if not row["sizes_exact"] or rep.get("status") != "RECOVERED":
            row["note"] = (f"not exact: sizes {list(rec.hidden_sizes)} (the teacher's "
                           f"[{width}]), {rep.get('status')}, fresh RMSE "
                           f"{_num(rep.get('rmse_fresh')) or float('nan'):.2g} against "
                           f"{_num(rep.get('rmse_tol')) or float('nan'):.2g}")
    return row


def _save(out: Path, group: str, key: str, row: dict, note: str | None) -> None:
    data = read_json(out)
    data.setdefault("machine", machine())
    data.setdefault(group, {})[key] = row
    if note is not None:
        data["notes"] = note
    data["carlini"] = CARLINI
    write_json(data, out)
    print(f"{group} {key}: {row.get('status')} sizes {row.get('hidden_sizes')} "
          f"rmse {row.get('rmse_fresh')} cos {row.get('max_cosine_distance')} "
          f"{row['seconds']:.1f}s", flush=True)


def _teacher(spec: str):
    act, d_in, r, *seed = spec.split(":")
    config = teachers.TeacherConfig(int(d_in), (int(r),), act)
    return teachers.synthetic_teacher(config, int(seed[0]) if seed else 100)


def _sklearn(n_classes: int, hidden: int, seed: int, folder: Path):
    from sklearn.neural_network import MLPClassifier
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.sqrt(3), np.sqrt(3), size=(600, 4))
    score = x[:, 0] + np.sin(2 * x[:, 1]) - x[:, 2] * x[:, 3]
    labels = np.digitize(score, np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), activation="tanh", max_iter=400,
                            random_state=seed).fit(x, labels)
    model = to_onnx(clf, initial_types=[("X", DoubleTensorType([None, 4]))],
                    options={id(clf): {"zipmap": False}})
    path = folder / f"mlp_{n_classes}_{hidden}_{seed}.onnx"
    path.write_bytes(model.SerializeToString())
    return clf, path


def run_probabilities(out: Path, n_queries: int, note) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for n_classes, hidden in ((3, 5), (2, 4)):
            clf, path = _sklearn(n_classes, hidden, 3, Path(tmp))
            t = time.monotonic()
            rec = recover(teacher=blackbox.from_onnx(path), config=RecoverConfig(
                hidden="auto", n_queries=n_queries, n_fresh=2000))
            row = _row(rec, time.monotonic() - t, teacher=f"sklearn MLPClassifier tanh "
                       f"{hidden} hidden, {n_classes} classes, skl2onnx float64",
                       width_true=hidden, n_queries=n_queries,
                       max_cosine_distance=_cosine(rec, clf.coefs_[0].T, clf.intercepts_[0]))
            _save(out, "probabilities", f"sklearn-{n_classes}class-h{hidden}", row, note)
    net = teachers.synthetic_teacher(teachers.TeacherConfig(4, (4,), "tanh", 3), 100)
    t = time.monotonic()
    rec = recover(query=lambda x: _softmax(net.forward(x)), d_in=4, config=RecoverConfig(
        hidden=16, activation="tanh", n_queries=n_queries, n_fresh=2000,
        oracle=OracleConfig(outputs="probabilities")))
    layer = net.layers[0]
    row = _row(rec, time.monotonic() - t, teacher="synthetic tanh d_in 4 r 4, 3 classes, "
               "softmax callable", width_true=4, n_queries=n_queries,
               max_cosine_distance=_cosine(rec, layer.weight, layer.bias))
    _save(out, "probabilities", "softmax-tanh-d4-r4", row, note)


def _recover_teacher(net, answer, *, hidden, n_queries, oracle=None):
    layer = net.layers[0]
    t = time.monotonic()
    rec = recover(query=answer, d_in=net.d_in, config=RecoverConfig(
        hidden=hidden, activation=layer.activation.name, n_queries=n_queries, n_fresh=2000,
        oracle=oracle or OracleConfig()))
    return rec, time.monotonic() - t, _cosine(rec, layer.weight, layer.bias)


def run_floor(out: Path, specs, n_queries: int, note) -> None:
    for spec in specs:
        net = _teacher(spec)
        r = net.hidden_sizes[0]
        std = float(np.std(net.forward(teachers.sample_inputs(20000, net.d_in, 5))))
        for k in DECIMALS:
            rec, sec, cos = _recover_teacher(net, lambda x, k=k: np.round(net.forward(x), k),
                                             hidden=4 * r, n_queries=n_queries)
            _save(out, "floor", f"{spec}-decimals-{k}", _row(
                rec, sec, teacher=spec, width_true=r, decimals=k, n_queries=n_queries,
                max_cosine_distance=cos), note)
        for level in NOISE:
            rng = np.random.default_rng(7)
            sigma = level * std

            def noisy(x, sigma=sigma, rng=rng):
                return net.forward(x) + sigma * rng.standard_normal((len(x), net.d_out))

            rec, sec, cos = _recover_teacher(net, noisy, hidden=4 * r, n_queries=n_queries,
                                             oracle=OracleConfig(noise_std=sigma))
            _save(out, "floor", f"{spec}-noise-{level:g}", _row(
                rec, sec, teacher=spec, width_true=r, noise_over_std=level, noise_std=sigma,
                n_queries=n_queries, max_cosine_distance=cos), note)


def fewest_queries(rows: list[dict]) -> int | None:
    """The fewest budget at which the recovery was exact, and exact at every larger budget
    tried; None when the largest one tried was not exact (the recovery is not monotone in the
    budget: its students start from other queries at each)."""
    fewest = None
    for row in sorted(rows, key=lambda r: r["max_queries"], reverse=True):
        if not row["exact"]:
            break
        fewest = row["max_queries"]
    return fewest


def _summarise_queries(out: Path, spec: str, net, note) -> None:
    data = read_json(out)
    rows = [r for r in data.get("queries", {}).values() if r.get("teacher") == spec]
    n_params = sum(l.weight.size + l.bias.size for l in net.layers)
    fewest = fewest_queries(rows)
    data.setdefault("queries_fewest", {})[spec] = {
        "teacher": spec, "parameters": int(n_params),
        "budgets_tried": sorted(r["max_queries"] for r in rows),
        "exact_at": sorted(r["max_queries"] for r in rows if r["exact"]),
        "fewest_exact": fewest,
        "fewest_exact_once": min((r["max_queries"] for r in rows if r["exact"]), default=None),
        "default_queries": {"training": 30000, "fresh": 10000, "probe": 3},
        "fresh_queries_here": "2000 (fewer when the budget is cut: a fifth of it)",
        "carlini_queries": CARLINI["queries"],
        "carlini_parameters": CARLINI["parameters"],
        "load_average": list(os.getloadavg()),
    }
    if note is not None:
        data["notes"] = note
    write_json(data, out)
    print(f"queries {spec}: fewest exact budget {fewest}", flush=True)


def run_queries(out: Path, specs, budgets, note, exact_streak: int | None = None) -> None:
    for spec in specs:
        net = _teacher(spec)
        r = net.hidden_sizes[0]
        streak = 0
        for q in sorted(budgets):
            if exact_streak is not None and streak >= exact_streak:
                break
            calls = {"rows": 0}

            def counted(x, calls=calls):
                calls["rows"] += len(x)
                return net.forward(x)

            rec, sec, cos = _recover_teacher(net, counted, hidden=4 * r, n_queries=30000,
                                             oracle=OracleConfig(max_queries=q))
            exact = bool(rec.recovered and rec.hidden_sizes == (r,))
            streak = streak + 1 if exact else 0
            _save(out, "queries", f"{spec}-q{q}", _row(
                rec, sec, teacher=spec, width_true=r, max_queries=q,
                rows_counted_at_callable=calls["rows"], max_cosine_distance=cos,
                exact=exact), note)
        _summarise_queries(out, spec, net, note)


def run_seeds(out: Path, spec: str, seeds, max_queries: int, note) -> None:
    """The ``spec`` teacher of each seed under ``max_queries``, counted at the callable:
    students of width 4 r (``rho4``) and the width search with the activation given
    (``auto``)."""
    for seed in seeds:
        net = _teacher(f"{spec}:{seed}")
        r, layer = net.hidden_sizes[0], net.layers[0]
        for mode, hidden in (("rho4", 4 * r), ("auto", "auto")):
            calls = {"rows": 0}

            def counted(x, calls=calls):
                calls["rows"] += len(x)
                return net.forward(x)

            t = time.monotonic()
            rec = recover(query=counted, d_in=net.d_in, config=RecoverConfig(
                hidden=hidden, activation=layer.activation.name,
                oracle=OracleConfig(max_queries=max_queries)))
            _save(out, "budget_seeds", f"{spec}:{seed}-{mode}-q{max_queries}", _row(
                rec, time.monotonic() - t, teacher=f"{spec}:{seed}", seed=seed, mode=mode,
                width_true=r, max_queries=max_queries, student_width=rec.student_width,
                student_losses=[float(v) for v in rec.student_losses],
                rows_counted_at_callable=calls["rows"],
                max_cosine_distance=_cosine(rec, layer.weight, layer.bias),
                exact=bool(rec.recovered and rec.hidden_sizes == (r,)),
                notes=list(rec.notes)), note)


def plot(out: Path) -> Path:
    """The rounding and noise curves of ``out`` as one PNG beside it: the fresh RMSE, the
    floor the report judged against, and the largest cosine distance to the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(read_json(out).get("floor", {}).values())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "decimals", "decimals K of the answers"),
                           (axes[1], "noise_over_std", "noise std / std(y)")):
        # one colour per teacher; the floor is drawn once (it differs between the teachers
        # only by their std(y), within a few percent)
        for i, spec in enumerate(sorted({r["teacher"] for r in rows})):
            sel = sorted((r for r in rows if r["teacher"] == spec and key in r),
                         key=lambda r: r[key])
            if not sel:
                continue
            xs, colour = [r[key] for r in sel], f"C{i}"
            ax.plot(xs, [r["rmse_fresh"] for r in sel], "o-", color=colour,
                    label=f"{spec} RMSE")
            ax.plot(xs, [max(r["max_cosine_distance"] or 1e-40, 1e-40) for r in sel], "s:",
                    color=colour, label=f"{spec} cosine dist.")
        floors = dict(sorted((r[key], r["output_floor"]) for r in rows if key in r))
        ax.plot(list(floors), list(floors.values()), "k--", label="floor")
        ax.set_yscale("log")
        if key == "noise_over_std":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("fresh RMSE / floor / cosine distance")
    fig.tight_layout()
    png = out.with_name(out.stem + "-floor.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="probabilities,floor,queries")
    parser.add_argument("--teachers", default="g:4:4")
    parser.add_argument("--queries", default="1000,2000,5000,10000,20000,40000")
    parser.add_argument("--exact-streak", type=int, default=None,
                        help="Stop a teacher's ladder after this many exact budgets in a row.")
    parser.add_argument("--n-queries", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default=None)
    parser.add_argument("--plot-only", action="store_true",
                        help="Only draw the PNG of the floor rows already in --out.")
    args = parser.parse_args(argv)
    groups = set() if args.plot_only else set(args.groups.split(","))
    specs = args.teachers.split(",")
    if "probabilities" in groups:
        run_probabilities(args.out, args.n_queries, args.note)
    if "floor" in groups:
        run_floor(args.out, specs, args.n_queries, args.note)
    if "seeds" in groups:
        run_seeds(args.out, args.teachers.split(",")[0], range(100, 110), 5000, args.note)
    if "queries" in groups:
        run_queries(args.out, specs, [int(q) for q in args.queries.split(",")], args.note,
                    args.exact_streak)
    if "floor" in groups or args.plot_only:
        print(f"wrote {plot(args.out)}")


if __name__ == "__main__":
    sys.exit(main())
