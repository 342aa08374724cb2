"""Native engine benchmarks: derivative speed against JAX, convergence, and LM scaling.

Three parts, each writing its section of ``benchmarks/results/engine.json`` (sections not run
are kept from the previous file):

``derivatives``
    Gradient and exact Hessian of the MSE of a one-hidden-layer ``g`` network, native against
    JAX autodiff (``jax.grad`` and ``jax.hessian``, x64, jitted, compile time excluded), one
    thread each, for (d_in, n_hidden) = (4, 16), (8, 32), (32, 64) at N = 30k. The JAX Hessian
    is accumulated over sample chunks (``lax.scan``) so that its P-direction tangents fit in
    memory.
``convergence``
    Students of synthetic ``g`` teachers (d_in 4, r 4, N 30k) at ρ = 1, 2, 4, trained to zero
    loss with the stall rule off: how many reach RMSE ≤ 1e-12, median and max seconds, the
    losses of the others; then the default stall rule is replayed on each history, which gives
    its false-stop rate (stopped students that reached the goal later with their full budget)
    for the recovery student loss and for near-zero loss. The issue's full run is 20 students
    per cell; the JSON records what was run.
``large_student``
    Time to RMSE 1e-6 of 20 students with d_in 16, r 8, ρ 4 (577 parameters, g, N 30k, one
    BLAS thread each): the median against the 60 s target.
``threads``
    Seconds per LM step of one ρ 4 g student (d_in 16 r 8: 577 parameters; d_in 32 r 8:
    1089) with one and with two BLAS threads: what a student gains from a core that the
    finished students of an expansion left idle (:class:`ecflow.parallel.ThreadShare`).
``varpro``
    L-BFGS against variable-projection L-BFGS (the output layer solved by least squares at
    each evaluation) from the same starts: digits r 16 ρ 4 students from Glorot init, the
    digits teacher perturbed by 1e-3 (a fine-tune), and a 577-parameter synthetic student
    beside dense LM (:func:`_varpro`).
``scaling``
    Seconds per LM iteration (chunked Jacobian QR + SVD + one trial) and peak memory of that
    iteration (tracemalloc, NumPy allocations) at ≈ 100, 600 and 2300 parameters, N 30k.

Usage::

    python -m benchmarks.engine [--parts derivatives,convergence,scaling,large_student,threads,varpro]
                                [--students 5] [--budget 60] [--workers 2] [--out FILE]

With the defaults (what ``make bench`` runs) the three parts take about 30 minutes on two
idle cores: the largest JAX Hessian several minutes, scaling ~3 minutes, convergence
``30 students x 60 s / 2 workers`` = 15 minutes. The issue's full convergence run is
``--parts convergence --students 20 --budget 300`` (hours).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from benchmarks._common import machine, read_json, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "engine.json"
DERIV_CASES = ((4, 16), (8, 32), (32, 64))
N_SAMPLES = 30_000
RMSE_OK = 1e-12


def _machine() -> dict[str, Any]:
    return {**machine(), "numpy": np.__version__, "blas_threads": 1}


def _best_time(fn, repeats: int, min_seconds: float = 0.0) -> float:
    """Smallest wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# --- derivatives ---------------------------------------------------------------------------------


def _jax():
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


def _native_kernel() -> str:
    """Which code computes the native gradient of a one-hidden-layer ``g`` network."""
    from ecflow.engines.native.derivatives import _compiled

    kernels = _compiled()
    if kernels is None or not kernels.ENABLED:
        return "numpy"
    import numba

    return f"numba {numba.__version__}, engines/native/kernels.py"


def _derivatives(*, repeats: int = 3) -> dict[str, Any]:
    """Native gradient/Hessian against JAX for :data:`DERIV_CASES` (one thread each)."""
    from ecflow.engines.native.derivatives import Architecture, _hessian, _loss_grad
    from ecflow.networks import glorot_normal

    jax = _jax()
    jnp = jax.numpy
    rows = []
    for d_in, n_hidden in DERIV_CASES:
        rng = np.random.default_rng(0)
        net = glorot_normal((d_in, n_hidden, 1), ["g", "identity"], 0)
        theta = net.flatten() + 0.1 * rng.normal(size=net.n_params)
        x = rng.uniform(-np.sqrt(3), np.sqrt(3), size=(N_SAMPLES, d_in))
        y = rng.normal(size=(N_SAMPLES, 1))
        arch = Architecture.of(net)
        P = arch.n_params
        n_w = n_hidden * d_in

        def unpack(th):
            W = th[:n_w].reshape(n_hidden, d_in)
            b = th[n_w : n_w + n_hidden]
            a = th[n_w + n_hidden : n_w + 2 * n_hidden].reshape(1, n_hidden)
            c = th[n_w + 2 * n_hidden :]
            return W, b, a, c

        def chunk_sse(th, xc, yc):
            W, b, a, c = unpack(th)
            z = xc @ W.T + b
            h = jax.nn.softplus(z) + jax.nn.sigmoid(4.0 * z)
            r = h @ a.T + c - yc
            return jnp.sum(r * r)

        def jloss(th):
            return chunk_sse(th, x, y) / y.size

        # Accumulate Hessians over sample chunks: jax.hessian of the full batch would hold
        # P x N x n_hidden tangents (33 GB at the largest case).
        chunk = int(max(100, min(N_SAMPLES, 2e7 // (P * n_hidden))))
        n_chunks = -(-N_SAMPLES // chunk)
        pad = n_chunks * chunk - N_SAMPLES
        xs = np.concatenate([x, np.zeros((pad, d_in))]).reshape(n_chunks, chunk, d_in)
        ys = np.concatenate([y, np.zeros((pad, 1))]).reshape(n_chunks, chunk, 1)
        mask = np.concatenate([np.ones(N_SAMPLES), np.zeros(pad)]).reshape(n_chunks, chunk, 1)

        def masked_sse(th, xc, yc, mc):
            W, b, a, c = unpack(th)
            z = xc @ W.T + b
            h = jax.nn.softplus(z) + jax.nn.sigmoid(4.0 * z)
            r = (h @ a.T + c - yc) * mc
            return jnp.sum(r * r)

        def jhess(th):
            def add_chunk(H, args):
                return H + jax.hessian(masked_sse)(th, *args), None

            H, _ = jax.lax.scan(add_chunk, jnp.zeros((P, P)), (xs, ys, mask))
            return H / y.size

        jgrad = jax.jit(jax.grad(jloss))
        jhess = jax.jit(jhess)
        th_j = jnp.asarray(theta)
        t0 = time.perf_counter()
        g_j = np.asarray(jgrad(th_j).block_until_ready())
        compile_grad = time.perf_counter() - t0
        t0 = time.perf_counter()
        H_j = np.asarray(jhess(th_j).block_until_ready())
        compile_hess = time.perf_counter() - t0

        t0 = time.perf_counter()
        _, g_n = _loss_grad(arch, theta, x, y)
        first_grad = time.perf_counter() - t0  # numba's import and cache load (or compile)
        H_n = _hessian(arch, theta, x, y)
        agree_g = float(np.max(np.abs(g_n - g_j)) / max(np.max(np.abs(g_j)), 1e-300))
        agree_h = float(np.max(np.abs(H_n - H_j)) / max(np.max(np.abs(H_j)), 1e-300))

        t_ng = _best_time(lambda: _loss_grad(arch, theta, x, y), repeats, 1.0)
        t_jg = _best_time(lambda: jgrad(th_j).block_until_ready(), repeats, 1.0)
        # the largest JAX Hessian takes minutes: one timed call there
        reps_h = repeats if P < 1000 else 1
        t_nh = _best_time(lambda: _hessian(arch, theta, x, y), reps_h)
        t_jh = _best_time(lambda: jhess(th_j).block_until_ready(), reps_h)
        row = {
            "d_in": d_in,
            "n_hidden": n_hidden,
            "n_samples": N_SAMPLES,
            "n_params": P,
            "native_gradient_s": t_ng,
            "jax_gradient_s": t_jg,
            "gradient_speedup": t_jg / t_ng,
            "native_hessian_s": t_nh,
            "jax_hessian_s": t_jh,
            "hessian_speedup": t_jh / t_nh,
            "jax_compile_s": {"gradient": compile_grad, "hessian": compile_hess},
            "native_first_gradient_s": first_grad,
            "jax_hessian_chunk": chunk,
            "max_rel_difference": {"gradient": agree_g, "hessian": agree_h},
        }
        print(
            f"derivatives d_in {d_in} hidden {n_hidden} P {P}: grad {t_ng:.4f}s vs jax "
            f"{t_jg:.4f}s ({row['gradient_speedup']:.2f}x), hessian {t_nh:.3f}s vs jax "
            f"{t_jh:.3f}s ({row['hessian_speedup']:.1f}x)",
            flush=True,
        )
        rows.append(row)
    return {
        "jax": jax.__version__,
        "native_gradient_kernel": _native_kernel(),
        "activation": "g",
        "threads": 1,
        "timing": f"best of >= {repeats} calls (1 for Hessians above 1000 parameters), compile "
        "time excluded",
        "targets": {"gradient_speedup": 1.0, "hessian_speedup": 10.0},
        "cases": rows,
    }


# --- convergence ---------------------------------------------------------------------------------


def _train_student(args: tuple) -> dict[str, Any]:
    """One student (run in a worker process), trained without the stall rule so that what the
    rule would have done can be read off its history (:func:`_stall_verdict`)."""
    d_in, r, teacher_seed, student_seed, rho, schedule, budget, target = args
    from ecflow.engines import TrainConfig, get_engine
    from ecflow.networks import glorot_normal
    from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher

    teacher = synthetic_teacher(TeacherConfig(d_in, (r,), "g"), teacher_seed)
    x = sample_inputs(N_SAMPLES, d_in, 10_000 + teacher_seed)
    y = teacher.forward(x)
    init = glorot_normal((d_in, rho * r, 1), ["g", "identity"], student_seed)
    config = TrainConfig(
        schedule=schedule, max_seconds=float(budget), stall_factor=0.0, target_loss=target
    )
    # What the stall rule reads: the best loss over time across the phases, the subset phase
    # included (its losses reach the caller only through ``progress``; ``history`` holds the
    # full-data losses, flat while the subset phase runs), recorded as the engine's trend is.
    trend: list[tuple[float, float]] = [(0.0, np.inf)]

    def record(t: float, loss: float) -> None:
        if loss < trend[-1][1]:
            trend.append((float(t), float(loss)))

    res = get_engine("native").train(x, y, init, config, progress=record)
    trend[0] = (0.0, trend[1][1] if len(trend) > 1 else res.loss)
    x_test = sample_inputs(10_000, d_in, 20_000 + teacher_seed)
    test_rmse = float(np.sqrt(np.mean((res.network.forward(x_test) - teacher.forward(x_test)) ** 2)))
    return {
        "d_in": d_in,
        "r": r,
        "n_params": init.n_params,
        "rho": rho,
        "schedule": schedule,
        "teacher_seed": teacher_seed,
        "student_seed": student_seed,
        "loss": res.loss,
        "rmse": res.rmse,
        "test_rmse": test_rmse,
        "status": res.status.name,
        "stopped_by": res.stopped_by,
        "steps": res.steps,
        "seconds": res.seconds,
        "history": res.history.tolist(),
        "trend": trend,
    }


def _first_time_below(history, loss: float) -> float | None:
    for t, value in history:
        if value <= loss:
            return float(t)
    return None


def _stall_verdict(run: dict[str, Any], goal: float, budget: float) -> float | None:
    """When the default stall rule (:class:`~ecflow.engines.native.problem.StallRule`) would
    have stopped this run, replayed on its history at the engine's 0.2 s polling; None if never.

    The rule reads the run's trend (best loss over time, the subset phase's included, at the
    0.25 s resolution of the progress callback; the engine records it every 0.05 s); the step
    count at time t is taken proportional to t (the rule only uses it to wait for
    ``min_steps`` and ``creep_steps``)."""
    from ecflow.engines.base import NEAR_ZERO_LOSS, TrainConfig
    from ecflow.engines.native.engine import _STALL_WARMUP, _STALL_WARMUP_SHARE
    from ecflow.engines.native.problem import StallRule

    factor = TrainConfig().stall_factor
    rule = StallRule(
        goal=max(goal, NEAR_ZERO_LOSS), deadline=budget, factor=factor,
        warmup=min(_STALL_WARMUP, _STALL_WARMUP_SHARE * budget),
    )
    hist = [tuple(h) for h in run["trend"]]
    end = run["seconds"]
    t = 0.2
    while t < end:
        seen = [h for h in hist if h[0] <= t]
        best = seen[-1][1]
        steps = int(run["steps"] * t / max(end, 1e-9))
        if rule.hopeless(seen, t, best, steps):
            return t
        t += 0.2
    return None


def _convergence(
    *,
    students: int = 5,
    budget: float = 60.0,
    rhos: tuple[int, ...] = (1, 2, 4),
    schedules: tuple[str, ...] = ("lm-first",),
    workers: int = 2,
) -> dict[str, Any]:
    """Train ``students`` students per (ρ, schedule), student i on teacher seed i, to zero loss
    with the stall rule off; then replay the rule on each history for the false-stop rate."""
    from ecflow.engines.base import NEAR_ZERO_LOSS
    from ecflow.parallel import make_executor
    from ecflow.recover import RecoverConfig

    goal = RecoverConfig().student_loss
    jobs = [
        (4, 4, i, 1000 + i, rho, schedule, budget, None)
        for rho in rhos
        for schedule in schedules
        for i in range(students)
    ]
    t0 = time.perf_counter()
    runs = []
    with make_executor(workers) as ex:
        for res in ex.map(_train_student, jobs):
            for name, g in (("student_loss", goal), ("near_zero", NEAR_ZERO_LOSS)):
                res[f"stall_rule_stops_at_{name}"] = _stall_verdict(res, g, budget)
                res[f"reached_{name}_at"] = _first_time_below(res["history"], g)
            print(
                f"convergence rho {res['rho']} {res['schedule']} teacher {res['teacher_seed']}: "
                f"rmse {res['rmse']:.2e} ({res['stopped_by']}, {res['seconds']:.0f} s); "
                f"rule stops at {res['stall_rule_stops_at_student_loss']}",
                flush=True,
            )
            runs.append(res)
    cells = []
    for rho in rhos:
        for schedule in schedules:
            rs = [r for r in runs if r["rho"] == rho and r["schedule"] == schedule]
            ok = [r for r in rs if r["rmse"] <= RMSE_OK]
            secs = [r["seconds"] for r in rs]
            cell = {
                "rho": rho,
                "schedule": schedule,
                "students": len(rs),
                "reached_rmse_1e-12": len(ok),
                "median_seconds": statistics.median(secs),
                "max_seconds": max(secs),
                "median_seconds_of_successes": statistics.median(
                    [r["seconds"] for r in ok]
                ) if ok else None,
                "losses_of_failures": sorted(r["loss"] for r in rs if r["rmse"] > RMSE_OK),
            }
            for name in ("student_loss", "near_zero"):
                stopped = [r for r in rs if r[f"stall_rule_stops_at_{name}"] is not None]
                false = [
                    r for r in stopped
                    if r[f"reached_{name}_at"] is not None
                    and r[f"reached_{name}_at"] > r[f"stall_rule_stops_at_{name}"]
                ]
                reached = [r for r in rs if r[f"reached_{name}_at"] is not None]
                cell[f"goal_{name}"] = {
                    "reached_with_full_budget": len(reached),
                    "median_seconds_to_reach": statistics.median(
                        [r[f"reached_{name}_at"] for r in reached]
                    ) if reached else None,
                    "stopped_by_stall_rule": len(stopped),
                    "false_stops": len(false),
                    "false_stop_rate": len(false) / len(stopped) if stopped else 0.0,
                    "seconds_saved": sum(
                        r["seconds"] - r[f"stall_rule_stops_at_{name}"] for r in stopped
                    ),
                }
            cells.append(cell)
    for r in runs:
        r.pop("history")
        r.pop("trend")
    return {
        "setup": {
            "teacher": "synthetic g, d_in 4, r 4, d_out 1 (paper A.4); teacher i for student i",
            "n_samples": N_SAMPLES,
            "students_per_cell": students,
            "budget_seconds_per_student": budget,
            "workers": workers,
            "success": f"training RMSE <= {RMSE_OK:g}",
            "false_stop": (
                "a student the default stall rule (replayed on its history) would have stopped "
                "before it reached the goal it then reached with its full budget; goals: the "
                f"recovery student loss {goal:g} and near-zero loss {NEAR_ZERO_LOSS:g}"
            ),
        },
        "wall_seconds": time.perf_counter() - t0,
        "cells": cells,
        "runs": runs,
    }


def _threads(steps: int = 15) -> dict[str, Any]:
    """Seconds per LM step of one student at one and at two BLAS threads (needs two idle
    cores to mean anything)."""
    from threadpoolctl import threadpool_limits

    from ecflow.engines import get_engine
    from ecflow.engines.base import TrainConfig
    from ecflow.networks import glorot_normal
    from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher

    cases = []
    for d_in, r in ((16, 8), (32, 8)):
        teacher = synthetic_teacher(TeacherConfig(d_in, (r,), "g"), 0)
        x = sample_inputs(N_SAMPLES, d_in, 1)
        y = teacher(x)
        init = glorot_normal((d_in, 4 * r, 1), ["g", "identity"], 5)
        row: dict[str, Any] = {"d_in": d_in, "r": r, "rho": 4, "n_params": init.n_params}
        for n in (1, 2):
            with threadpool_limits(limits=n):
                t0 = time.perf_counter()
                res = get_engine("native").train(
                    x, y, init, TrainConfig(max_steps=steps, stall_factor=0.0, max_seconds=300)
                )
                dt = time.perf_counter() - t0
            row[f"seconds_per_step_{n}_threads"] = dt / max(res.steps, 1)
            row["steps"] = int(res.steps)
        row["speedup"] = row["seconds_per_step_1_threads"] / row["seconds_per_step_2_threads"]
        print(f"threads: {init.n_params} params, speedup {row['speedup']:.2f}", flush=True)
        cases.append(row)
    return {"cases": cases, "steps_per_phase": steps, "n_samples": N_SAMPLES}


def _large_student(
    *, students: int = 20, budget: float = 120.0, workers: int = 2
) -> dict[str, Any]:
    """Time to RMSE 1e-6 of students with d_in 16, r 8, ρ 4 (577 parameters, g, N = 30k,
    one BLAS thread each), teacher i for student i, the stall rule off."""
    from ecflow.parallel import make_executor

    target = 1e-12  # MSE of RMSE 1e-6
    jobs = [(16, 8, i, 2000 + i, 4, "lm-first", budget, target) for i in range(students)]
    t0 = time.perf_counter()
    runs = []
    with make_executor(workers) as ex:
        for res in ex.map(_train_student, jobs):
            res["seconds_to_rmse_1e-6"] = _first_time_below(res["history"], target)
            res.pop("history")
            res.pop("trend")
            print(f"large student {res['teacher_seed']}: rmse {res['rmse']:.2e} "
                  f"in {res['seconds']:.0f} s ({res['stopped_by']})", flush=True)
            runs.append(res)
    # students that never got there count as the budget: the median is then a lower bound
    times = [r["seconds_to_rmse_1e-6"] if r["seconds_to_rmse_1e-6"] is not None else np.inf
             for r in runs]
    median = float(np.median(times))
    return {
        "setup": {
            "student": "d_in 16, 32 hidden g neurons (rho 4 x r 8), 577 parameters",
            "n_samples": N_SAMPLES,
            "budget_seconds": budget,
            "workers": workers,
            "blas_threads_per_student": 1,
        },
        "median_seconds_to_rmse_1e-6": median if np.isfinite(median) else None,
        "reached_rmse_1e-6": int(np.sum(np.isfinite(times))),
        "students": len(runs),
        "target_median_seconds": 60.0,
        "wall_seconds": time.perf_counter() - t0,
        "runs": runs,
    }


# --- scaling -------------------------------------------------------------------------------------


def _scaling(*, cases=((4, 16), (8, 64), (32, 64)), iterations: int = 2) -> dict[str, Any]:
    """Seconds per LM iteration and its peak NumPy memory at ≈ 100, 600 and 2300 parameters."""
    from ecflow.engines.native.derivatives import Architecture, _jacobian_qr
    from ecflow.engines.native.levenberg_marquardt import _svd
    from ecflow.engines.native.problem import Problem, dense_bytes
    from ecflow.networks import glorot_normal

    rows = []
    for d_in, n_hidden in cases:
        rng = np.random.default_rng(0)
        net = glorot_normal((d_in, n_hidden, 1), ["g", "identity"], 0)
        x = rng.uniform(-np.sqrt(3), np.sqrt(3), size=(N_SAMPLES, d_in))
        y = rng.normal(size=(N_SAMPLES, 1))
        arch = Architecture.of(net)
        problem = Problem(arch, x, y)
        theta = net.flatten()
        P = arch.n_params

        def iteration():
            R = _jacobian_qr(arch, theta, x, y, problem.qr_chunk)
            U, s, Vt = _svd(R[:P, :P])
            delta = -(Vt.T @ (s / (s * s + 1e-3 * s[0] ** 2) * (U.T @ R[:P, P])))
            problem.sum_sq(theta + delta)

        t = _best_time(iteration, iterations)
        tracemalloc.start()
        iteration()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row = {
            "d_in": d_in,
            "n_hidden": n_hidden,
            "n_params": P,
            "n_samples": N_SAMPLES,
            "seconds_per_lm_iteration": t,
            "peak_memory_mb": peak / 2**20,
            "estimated_dense_memory_mb": dense_bytes(arch, N_SAMPLES) / 2**20,
            "qr_chunk_samples": problem.qr_chunk,
            "dense_jacobian_mb_avoided": N_SAMPLES * (P + 1) * 8 / 2**20,
        }
        print(f"scaling P {P}: {t:.3f} s per LM iteration, peak {row['peak_memory_mb']:.0f} MB", flush=True)
        rows.append(row)
    return {"iteration": "chunked QR of [J | r] + SVD + one trial forward pass", "cases": rows}


# --- variable projection -------------------------------------------------------------------------

VARPRO_MARKS = (30.0, 60.0, 120.0)
"""Elapsed seconds at which the best RMSE of each run is read off its history."""
VARPRO_TARGETS = (1e-3, 1e-4, 1e-6, 1e-10)
"""RMSEs whose first time is read off each history."""


def _rmse_at(history: np.ndarray, t: float) -> float:
    """Best RMSE recorded at or before ``t`` seconds (the history holds best losses)."""
    rows = history[history[:, 0] <= t]
    return float(np.sqrt(rows[-1, 1] if rows.size else history[0, 1]))


def _first_order_run(problem, theta0, method: str, budget: float) -> dict[str, Any]:
    """One phase of :func:`minimize_phase` (``l-bfgs`` or ``l-bfgs-varpro``) from ``theta0``."""
    from ecflow.engines.native.problem import Tracker
    from ecflow.engines.native.quasi_newton import minimize_phase

    loss0 = problem.sum_sq(theta0) / problem.n_residuals
    tracker = Tracker(theta0, loss0, loss_tol=1e-31, grad_tol=0.0)
    out = minimize_phase(
        problem, theta0, tracker, method=method,
        deadline=tracker.start + budget, max_steps=10**9,
    )
    history = tracker.finish()
    return {"method": method, "rule": out.rule, "evaluations": out.steps, "history": history}


def _engine_run(x, y, init, budget: float, label: str, **config) -> dict[str, Any]:
    """``NativeEngine.train`` with the stall rule off and ``config``."""
    from ecflow.engines import TrainConfig, get_engine

    res = get_engine("native").train(
        x, y, init, TrainConfig(max_seconds=budget, stall_factor=0.0, **config)
    )
    return {"method": label, "rule": res.stopped_by, "evaluations": res.steps,
            "history": res.history}


def _varpro_case(name: str, x, y, init, budget: float, *, lm: bool = False) -> dict[str, Any]:
    """Every method from the same start ``init`` on the same pairs, one after the other."""
    from ecflow.engines.native.derivatives import Architecture
    from ecflow.engines.native.problem import Problem

    problem = Problem(Architecture.of(init), x, y)
    theta0 = init.flatten()
    for method in ("l-bfgs", "l-bfgs-varpro"):  # compile (or load) the kernels outside the clock
        _first_order_run(problem, theta0, method, 0.5)
    runs = [_first_order_run(problem, theta0, m, budget) for m in ("l-bfgs", "l-bfgs-varpro")]
    runs.append(_engine_run(x, y, init, budget, "engine first-order path (l-bfgs warm-up, "
                            "then l-bfgs-varpro)", first_order_above=0.0))
    if lm:
        runs.append(_engine_run(x, y, init, budget, "dense lm (engine default schedule)"))
    marks = [t for t in VARPRO_MARKS if t < budget] + [budget]
    rows = []
    for run in runs:
        history = run.pop("history")
        row = {**run, "rmse_final": float(np.sqrt(history[-1, 1])),
               "rmse_at_seconds": {f"{t:g}": _rmse_at(history, t) for t in marks},
               "seconds_to_rmse": {f"{e:g}": _first_time_below(history, e * e)
                                   for e in VARPRO_TARGETS},
               "load_average_after": list(os.getloadavg())}
        print(f"varpro {name}: {row['method']}: rmse {row['rmse_final']:.3e} "
              f"({row['evaluations']} evaluations, {row['rule']})", flush=True)
        rows.append(row)
    plain = rows[0]["rmse_final"]
    return {
        "case": name,
        "n_params": init.n_params,
        "n_residuals": int(y.size),
        "budget_seconds": budget,
        "runs": rows,
        # above 1: the method ends at a lower RMSE than plain L-BFGS in the same time
        "rmse_ratio_plain_over_method": {
            row["method"]: plain / row["rmse_final"] if row["rmse_final"] > 0 else None
            for row in rows[1:]
        },
    }


def _varpro(*, seeds: tuple[int, ...] = (0, 1), budget: float = 120.0,
            finetune_budget: float = 60.0, small_budget: float = 60.0) -> dict[str, Any]:
    """L-BFGS, variable-projection L-BFGS (:mod:`ecflow.engines.native.variable_projection`)
    and the engine's first-order path (the two in turn) from the same starts, on (a) ρ 4 students (64 g neurons, 4 810 parameters) of the digits
    r 16 g teacher (``ecflow teacher train --dataset digits --hidden 16 --activation g
    --seed 0``) on all 1 797 digits images, from Glorot init; (b) that teacher with every
    parameter perturbed by 1e-3 relative (a fine-tune); (c) a synthetic d_in 16 r 8 ρ 4 student
    (577 parameters, N 30k), where the engine's default dense LM runs too. One BLAS thread, one
    run at a time."""
    from threadpoolctl import threadpool_limits

    from ecflow import datasets
    from ecflow.networks import glorot_normal
    from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher, train_classifier

    load_start = list(os.getloadavg())
    cases = []
    with threadpool_limits(limits=1, user_api="blas"):
        teacher = train_classifier("digits", 16, "g", 0).network
        x = datasets.load("digits").x
        y = teacher.forward(x)
        for seed in seeds:
            init = glorot_normal((64, 64, 10), ["g", "identity"], seed)
            cases.append(_varpro_case(f"digits g r16 rho4 seed {seed}", x, y, init, budget))
        rng = np.random.default_rng(0)
        theta = teacher.flatten()
        perturbed = teacher.unflatten(theta * (1.0 + 1e-3 * rng.standard_normal(theta.size)))
        cases.append(_varpro_case("digits g r16 teacher perturbed 1e-3", x, y, perturbed,
                                  finetune_budget))
        small = synthetic_teacher(TeacherConfig(16, (8,), "g"), 0)
        xs = sample_inputs(N_SAMPLES, 16, 10_000)
        init = glorot_normal((16, 32, 1), ["g", "identity"], 2000)
        cases.append(_varpro_case("synthetic d_in 16 r 8 rho 4", xs, small.forward(xs), init,
                                  small_budget, lm=True))
    return {
        "setup": "one BLAS thread; the methods of a case run one after the other from the same "
                 "start in the same process; RMSE = sqrt(MSE) on the training pairs",
        "load_average_at_start": load_start,
        "load_average_at_end": list(os.getloadavg()),
        "cases": cases,
    }


# --- driver --------------------------------------------------------------------------------------

PARTS = {
    "derivatives": _derivatives,
    "convergence": _convergence,
    "scaling": _scaling,
    "large_student": _large_student,
    "threads": _threads,
    "varpro": _varpro,
}


def bench_engine(
    *,
    parts: tuple[str, ...] = ("derivatives", "scaling", "convergence"),
    students: int = 5,
    budget: float = 60.0,
    workers: int = 2,
    out: Path = OUT,
    note: str | None = None,
) -> dict[str, Any]:
    """Run the selected parts and merge them into ``out`` (``benchmarks/results/engine.json``).

    ``note`` (``--note``) is written as the top-level ``notes`` of the file: remarks on a
    measurement go through this option, never by editing the JSON by hand.
    """
    data: dict[str, Any] = {}
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; expected one of: {', '.join(PARTS)}")
        t0 = time.perf_counter()
        if part == "convergence":
            section = _convergence(students=students, budget=budget, workers=workers)
        elif part == "large_student":
            section = _large_student(students=students, budget=budget, workers=workers)
        else:
            section = PARTS[part]()
        section["machine"] = _machine()
        section["run_seconds"] = time.perf_counter() - t0
        section["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data[part] = section
        if note is not None:
            data["notes"] = note
        # re-read just before writing: another run may have added its sections meanwhile
        merged = read_json(out)
        merged.update(data)
        data = merged
        write_json(data, out)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="derivatives,scaling,convergence")
    parser.add_argument("--students", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default=None, help="remark stored as the file's 'notes'")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    bench_engine(
        parts=parts, students=args.students, budget=args.budget, workers=args.workers,
        out=args.out, note=args.note,
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
