"""Variable projection of the output layer: the reduced loss and its gradient against an
independent oracle (a naive forward pass and numpy's least squares), the frozen-parameter
fallbacks, and the L-BFGS phase on the reduced loss."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ecflow.engines.native.derivatives import Architecture
from ecflow.engines.native.problem import Problem, Tracker
from ecflow.engines.native.quasi_newton import minimize_phase
from ecflow.engines.native.variable_projection import (
    OutputProjection,
    ProjectedObjective,
    last_hidden,
    solve_output,
)
from ecflow.networks import glorot_normal, parameter_mask
from test_engines_native import NAIVE

_CASES = [
    ((3, 5, 1), "g"),
    ((3, 5, 3), "tanh"),
    ((3, 5, 4, 1), "tanh"),
    ((3, 5, 4, 3), "g"),
]


def _naive_reduced(u, sizes, act, x, y):
    """Reduced loss ``min_B |[h, 1] B - y|² / y.size`` from a direct forward pass of the hidden
    layers and numpy's SVD least squares; returns the loss and ``B`` (n_last + 1, d_out)."""
    h, k = x, 0
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        W = u[k : k + n_out * n_in].reshape(n_out, n_in)
        k += n_out * n_in
        h = NAIVE[act](h @ W.T + u[k : k + n_out])
        k += n_out
    phi = np.hstack([h, np.ones((h.shape[0], 1))])
    B = np.linalg.lstsq(phi, y, rcond=None)[0]
    r = phi @ B - y
    return float(np.vdot(r, r)) / y.size, B


def _setup(sizes, act, seed=0, n=200):
    rng = np.random.default_rng(seed)
    net = glorot_normal(sizes, [act] * (len(sizes) - 2) + ["identity"], seed)
    x = rng.normal(size=(n, sizes[0]))
    y = rng.normal(size=(n, sizes[-1]))
    return net, x, y


@pytest.mark.parametrize("sizes, act", _CASES)
def test_reduced_gradient_matches_finite_differences(sizes, act):
    net, x, y = _setup(sizes, act)
    problem = Problem(Architecture.of(net), x, y)
    projection = OutputProjection.of(problem)
    tracker = Tracker(net.flatten(), np.inf, loss_tol=0.0, grad_tol=0.0)
    fun = ProjectedObjective(problem, tracker, time.perf_counter() + 60, 10**6, projection)
    u = fun.start(net.flatten())
    value, grad = fun(u)
    assert value == pytest.approx(_naive_reduced(u, sizes, act, x, y)[0], rel=1e-12)
    eps = 1e-6
    fd = np.empty_like(u)
    for i in range(u.size):
        e = np.zeros_like(u)
        e[i] = eps
        fd[i] = (_naive_reduced(u + e, sizes, act, x, y)[0]
                 - _naive_reduced(u - e, sizes, act, x, y)[0]) / (2 * eps)
    # central differences of a loss of order 1 at step 1e-6 carry rounding of ~1e-10
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("sizes, act", _CASES)
def test_completed_output_layer_is_the_least_squares_solution(sizes, act):
    net, x, y = _setup(sizes, act, seed=1)
    problem = Problem(Architecture.of(net), x, y)
    projection = OutputProjection.of(problem)
    u = projection.hidden(net.flatten())
    theta = projection.complete(problem, u)
    np.testing.assert_array_equal(theta[: u.size], u)
    _, B = _naive_reduced(u, sizes, act, x, y)
    n_last = sizes[-2]
    expected = np.concatenate([B[:n_last].T.ravel(), B[n_last]])
    np.testing.assert_allclose(theta[u.size :], expected, rtol=1e-9, atol=1e-12)
    # the optimality that the reduced gradient rests on: ∂L/∂B = 0
    grad = problem.loss_grad(theta)[1]
    assert np.abs(grad[u.size :]).max() < 1e-12 * max(1.0, np.abs(grad[: u.size]).max())


def test_solve_output_handles_duplicated_neurons():
    rng = np.random.default_rng(2)
    h = rng.normal(size=(100, 3))
    h = np.hstack([h, h[:, :1]])  # a duplicated neuron makes [h, 1] rank deficient
    y = h[:, :3] @ np.array([[1.0], [-2.0], [0.5]]) + 0.25
    theta = solve_output(h, y)
    W, b = theta[:4].reshape(1, 4), theta[4:]
    np.testing.assert_allclose(h @ W.T + b, y, atol=1e-12)
    # minimum norm: the duplicated pair shares the weight of the one it copies
    assert W[0, 0] == pytest.approx(W[0, 3], rel=1e-9)


def test_projection_needs_a_free_linear_output_layer():
    net, x, y = _setup((3, 5, 2), "g")
    arch = Architecture.of(net)
    partly_frozen = np.flatnonzero(parameter_mask(net, {-1: "bias"}))
    assert OutputProjection.of(Problem(arch, x, y, partly_frozen, net.flatten())) is None
    only_output = np.flatnonzero(parameter_mask(net, {0: "all"}))
    assert OutputProjection.of(Problem(arch, x, y, only_output, net.flatten())) is None
    hidden_frozen = np.flatnonzero(parameter_mask(net, {0: "bias"}))
    projection = OutputProjection.of(Problem(arch, x, y, hidden_frozen, net.flatten()))
    assert projection is not None and projection.n_output == 2 * 6
    tanh_out = glorot_normal((3, 5, 2), ["g", "tanh"], 0)
    assert OutputProjection.of(Problem(Architecture.of(tanh_out), x, y)) is None


def _phase(problem, theta0, method, steps=200):
    tracker = Tracker(theta0, problem.sum_sq(theta0) / problem.n_residuals, loss_tol=0.0,
                      grad_tol=0.0)
    minimize_phase(problem, theta0, tracker, method=method,
                   deadline=time.perf_counter() + 30, max_steps=steps)
    return tracker


def test_varpro_phase_keeps_frozen_parameters_and_complete_points():
    teacher, x, _ = _setup((3, 4, 2), "tanh", seed=3, n=300)
    y = teacher.forward(x)
    init = glorot_normal((3, 4, 2), ["tanh", "identity"], 4)
    theta0 = init.flatten().copy()
    theta0[:12] = teacher.flatten()[:12]  # frozen first-layer weights, right from the start
    free = np.flatnonzero(parameter_mask(init, {0: "weight"}))
    problem = Problem(Architecture.of(init), x, y, free, theta0)
    tracker = _phase(problem, problem.reduce(theta0), "l-bfgs-varpro")
    best = problem.full(tracker.best_theta)
    np.testing.assert_array_equal(best[:12], theta0[:12])
    projection = OutputProjection.of(problem)
    completed = problem.full(projection.complete(problem, projection.hidden(tracker.best_theta)))
    np.testing.assert_allclose(best, completed, rtol=1e-9, atol=1e-12)
    assert tracker.best_loss < 1e-3 * problem.sum_sq(problem.reduce(theta0)) / problem.n_residuals


def test_varpro_phase_falls_back_to_plain_lbfgs_with_a_frozen_output_bias():
    net, x, y = _setup((3, 5, 2), "g", seed=5)
    free = np.flatnonzero(parameter_mask(net, {-1: "bias"}))
    problem = Problem(Architecture.of(net), x, y, free, net.flatten())
    theta0 = problem.reduce(net.flatten())
    varpro = _phase(problem, theta0, "l-bfgs-varpro", steps=30)
    plain = _phase(problem, theta0, "l-bfgs", steps=30)
    np.testing.assert_array_equal(varpro.best_theta, plain.best_theta)
    np.testing.assert_array_equal(problem.full(varpro.best_theta)[-2:], net.flatten()[-2:])


@pytest.mark.parametrize("act", ["g", "tanh", "sigmoid", "softplus", "relu"])
def test_hidden_activations_by_kernel_and_numpy_match_a_naive_forward(monkeypatch, act):
    kernels = pytest.importorskip("ecflow.engines.native.kernels")
    rng = np.random.default_rng(6)
    net = glorot_normal((5, 7, 2), [act, "identity"], 6)
    x = rng.normal(size=(3 * kernels._BLOCK_ROWS + 17, 5))  # several blocks, a ragged last one
    arch, theta = Architecture.of(net), net.flatten()
    expected = NAIVE[act](x @ net.layers[0].weight.T + net.layers[0].bias)
    fused = kernels.hidden_values(arch, theta, x)
    assert fused is not None
    np.testing.assert_allclose(fused, expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(last_hidden(arch, theta, x), fused)
    monkeypatch.setattr(kernels, "ENABLED", False)
    np.testing.assert_allclose(last_hidden(arch, theta, x), expected, rtol=1e-13, atol=1e-15)
    assert kernels.hidden_values(arch, theta, x) is None
