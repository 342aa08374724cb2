"""The matrix-free LM of engines/native/matrix_free_lm.py: its J·v, Jᵀ·u and diag(JᵀJ) against
the dense Jacobian and finite differences, and the phase on small realisable problems."""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_engines_native import _problem, fd_jacobian, naive_forward

from ecflow.engines.native import Architecture, residual_jacobian
from ecflow.engines.native.matrix_free_lm import Linearisation, matrix_free_lm
from ecflow.engines.native.problem import Problem, Tracker
from ecflow.networks import glorot_normal, parameter_mask
from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher

ACTS = ["g", "tanh", "sigmoid", "softplus", "relu", "gelu"]


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("d_out", [1, 3])
@pytest.mark.parametrize("act", ACTS)
def test_products_match_the_dense_jacobian(act, depth, d_out):
    net, sizes, acts, x, y = _problem(act, depth, d_out, seed=40 + depth + d_out)
    problem = Problem(Architecture.of(net), x, y)
    lin = Linearisation(problem, net.flatten())
    r, J = residual_jacobian(net, x, y)
    rng = np.random.default_rng(depth)
    v, u = rng.normal(size=J.shape[1]), rng.normal(size=J.shape[0])
    scale = np.max(np.abs(J))
    np.testing.assert_allclose(lin.residuals.ravel(), r, atol=1e-13)
    np.testing.assert_allclose(lin.matvec(v), J @ v, atol=1e-12 * scale * np.abs(v).sum())
    np.testing.assert_allclose(lin.rmatvec(u), J.T @ u, atol=1e-12 * scale * np.abs(u).sum())
    np.testing.assert_allclose(lin.column_norms_sq(), np.sum(J * J, axis=0), rtol=1e-10,
                               atol=1e-12 * scale**2)


@pytest.mark.parametrize("act", ["g", "tanh", "softplus"])
def test_products_match_finite_differences_of_a_naive_forward_pass(act):
    net, sizes, acts, x, y = _problem(act, 2, 2, seed=7)
    theta = net.flatten()
    J_fd = fd_jacobian(lambda t: (naive_forward(t, sizes, acts, x) - y).ravel(), theta)
    lin = Linearisation(Problem(Architecture.of(net), x, y), theta)
    v = np.random.default_rng(0).normal(size=theta.size)
    np.testing.assert_allclose(lin.matvec(v), J_fd @ v, atol=1e-6 * np.abs(J_fd).max() * np.abs(v).sum())


def test_products_of_the_free_parameters_only():
    net, sizes, acts, x, y = _problem("tanh", 2, 2, seed=3)
    free_mask = parameter_mask(net, {0: "weight"})
    free = np.flatnonzero(free_mask)
    problem = Problem(Architecture.of(net), x, y, free, net.flatten())
    lin = Linearisation(problem, net.flatten()[free])
    _, J = residual_jacobian(net, x, y)
    Jf = J[:, free]
    rng = np.random.default_rng(1)
    v, u = rng.normal(size=free.size), rng.normal(size=J.shape[0])
    np.testing.assert_allclose(lin.matvec(v), Jf @ v, atol=1e-11)
    np.testing.assert_allclose(lin.rmatvec(u), Jf.T @ u, atol=1e-11)
    np.testing.assert_allclose(lin.column_norms_sq(), np.sum(Jf * Jf, axis=0), rtol=1e-10, atol=1e-14)


def _run(problem, theta, seconds, **kw):
    loss0 = problem.sum_sq(theta) / problem.n_residuals
    tracker = Tracker(theta, loss0, loss_tol=kw.pop("loss_tol", 1e-28), grad_tol=0.0)
    out = matrix_free_lm(problem, theta, tracker, deadline=time.perf_counter() + seconds,
                         max_steps=kw.pop("max_steps", 10_000), patience=50, **kw)
    return out, tracker


@pytest.mark.parametrize("act,hidden", [("g", (4,)), ("tanh", (5, 3))])
def test_the_phase_fits_a_realisable_problem_near_its_teacher(act, hidden):
    teacher = synthetic_teacher(TeacherConfig(3, hidden, act), 1)
    x = sample_inputs(600, 3, 2)
    y = teacher.forward(x)
    theta = teacher.flatten()
    start = theta + 1e-3 * np.random.default_rng(0).normal(size=theta.size)
    problem = Problem(Architecture.of(teacher), x, y)
    out, tracker = _run(problem, start, 60.0)
    assert out.rule == "loss_tol", out
    assert tracker.best_loss <= 1e-28
    assert tracker.best_loss == pytest.approx(problem.sum_sq(tracker.best_theta) / y.size, rel=1e-6)


def test_the_phase_lowers_the_loss_of_a_student_from_a_random_start():
    teacher = synthetic_teacher(TeacherConfig(4, (3,), "g"), 0)
    x = sample_inputs(800, 4, 1)
    y = teacher.forward(x)
    student = glorot_normal((4, 6, 1), ["g", "identity"], 3)
    problem = Problem(Architecture.of(student), x, y)
    theta = student.flatten()
    loss0 = problem.sum_sq(theta) / y.size
    out, tracker = _run(problem, theta, 60.0, max_steps=150)
    assert tracker.best_loss < 1e-3 * loss0
    assert out.steps <= 150


def test_the_phase_honours_its_step_budget_and_stop_flag():
    teacher = synthetic_teacher(TeacherConfig(2, (3,), "g"), 0)
    x = sample_inputs(300, 2, 1)
    problem = Problem(Architecture.of(teacher), x, teacher.forward(x))
    theta = glorot_normal((2, 3, 1), ["g", "identity"], 0).flatten()
    out, _ = _run(problem, theta, 60.0, max_steps=3)
    assert out.rule == "max_steps" and out.steps == 3
    tracker = Tracker(theta, 1.0, loss_tol=0.0, grad_tol=0.0, stop=lambda: True)
    out = matrix_free_lm(problem, theta, tracker, deadline=time.perf_counter() + 60,
                         max_steps=100, patience=50)
    assert out.rule == "stopped"
