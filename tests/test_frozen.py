"""Frozen parameters: restricted derivatives against finite differences, training with a mask."""

from __future__ import annotations

import numpy as np
import pytest

# The naive oracle (activations from their textbook definitions, the flat layout written out)
# and the finite differences are those of the engine's own tests: one oracle for both files.
from test_engines_native import _problem, fd_gradient, fd_hessian, fd_jacobian, naive_forward, naive_loss

from ecflow.engines import TrainConfig
from ecflow.engines.base import check_free, loss_floor
from ecflow.engines.native import Architecture, NativeEngine, loss, loss_and_gradient
from ecflow.engines.native.derivatives import _hessian
from ecflow.engines.native.problem import Problem
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP, glorot_normal, parameter_mask
from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher

ACTS = ["g", "tanh", "softplus", "gelu"]


def _masks(net: MLP, seed: int) -> list[np.ndarray]:
    """A layer's weights frozen, the output biases frozen, and a random subset frozen."""
    rng = np.random.default_rng(seed)
    scattered = rng.random(net.n_params) < 0.6
    scattered[rng.integers(net.n_params)] = True
    return [parameter_mask(net, {0: "weight"}), parameter_mask(net, {-1: "bias"}), scattered]


def _restricted(net, x, y, free):
    """The problem over the free parameters (indices) and the reduced θ."""
    idx = np.flatnonzero(free)
    problem = Problem(Architecture.of(net), x, y, idx, net.flatten())
    return problem, net.flatten()[idx], idx


def _on_free(f, theta_full, idx):
    """``f`` as a function of the free parameters only (the others held at ``theta_full``)."""

    def g(t):
        th = theta_full.copy()
        th[idx] = t
        return f(th)

    return g


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
def test_restricted_gradient_and_jacobian_match_finite_differences(act, depth):
    d_out = 2 if depth == 2 else 1
    net, sizes, acts, x, y = _problem(act, depth, d_out, seed=depth)
    theta = net.flatten()
    value_full, grad_full = loss_and_gradient(net, x, y)
    for free in _masks(net, depth):
        problem, t, idx = _restricted(net, x, y, free)
        assert problem.n_params == idx.size
        np.testing.assert_array_equal(problem.full(t), theta)

        value, grad = problem.loss_grad(t)
        assert grad.shape == (idx.size,)
        assert value == value_full
        np.testing.assert_array_equal(grad, grad_full[idx])
        g_fd = fd_gradient(_on_free(lambda th: naive_loss(th, sizes, acts, x, y), theta, idx), t)
        assert np.max(np.abs(grad - g_fd)) <= 1e-7 * max(1.0, np.max(np.abs(g_fd)))

        # the Jacobian enters LM only through [J_free | r]ᵀ[J_free | r]: from the normal
        # equations and from the QR's R, both against finite differences over the free columns
        J_fd = fd_jacobian(_on_free(lambda th: naive_forward(th, sizes, acts, x), theta, idx), t)
        r = (naive_forward(theta, sizes, acts, x) - y).ravel()
        G, Jtr, sse = problem.jacobian_normal(t)
        scale = max(1.0, np.max(np.abs(J_fd.T @ J_fd)))
        assert G.shape == (idx.size, idx.size)
        assert np.max(np.abs(G - J_fd.T @ J_fd)) <= 1e-7 * scale
        assert np.max(np.abs(Jtr - J_fd.T @ r)) <= 1e-7 * max(1.0, np.max(np.abs(J_fd.T @ r)))
        assert sse == pytest.approx(r @ r, rel=1e-12)
        R = problem.jacobian_qr(t)
        assert R.shape == (idx.size + 1, idx.size + 1)
        assert np.allclose(R, np.triu(R))
        A = np.hstack([J_fd, r[:, None]])
        assert np.max(np.abs(R.T @ R - A.T @ A)) <= 1e-7 * max(1.0, np.max(np.abs(A.T @ A)))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
def test_restricted_hessian_matches_second_differences(act, depth):
    d_out = 2 if depth == 2 else 1
    net, sizes, acts, x, y = _problem(act, depth, d_out, seed=depth, n=30)
    theta = net.flatten()
    H_full = _hessian(Architecture.of(net), theta, x, y)
    for free in _masks(net, depth + 10):
        problem, t, idx = _restricted(net, x, y, free)
        H = problem.hessian(t)
        assert H.shape == (idx.size, idx.size)
        np.testing.assert_array_equal(H, H_full[np.ix_(idx, idx)])
        H_fd = fd_hessian(_on_free(lambda th: naive_loss(th, sizes, acts, x, y), theta, idx), t)
        assert np.max(np.abs(H - H_fd)) <= 2e-5 * max(1.0, np.max(np.abs(H_fd)))


def test_unrestricted_problem_copies_nothing():
    net, _, _, x, y = _problem("tanh", 2, 2, seed=0)
    problem = Problem(Architecture.of(net), x, y)
    theta = net.flatten()
    assert problem.full(theta) is theta and problem.reduce(theta) is theta
    assert problem.n_params == net.n_params


# --- masks ---------------------------------------------------------------------------------------


def test_parameter_mask_by_layer_and_part():
    net = glorot_normal((3, 4, 2, 1), ["tanh", "tanh", "identity"], 0)
    # layout: W0 (12), b0 (4), W1 (8), b1 (2), W2 (2), b2 (1)
    expect = np.ones(29, bool)
    expect[:12] = False
    np.testing.assert_array_equal(parameter_mask(net, {0: "weight"}), expect)
    expect = np.ones(29, bool)
    expect[12:16] = False
    expect[28] = False
    np.testing.assert_array_equal(parameter_mask(net, {0: "bias", -1: ("bias",)}), expect)
    expect = np.ones(29, bool)
    expect[16:26] = False
    np.testing.assert_array_equal(parameter_mask(net, {1: "all"}), expect)
    np.testing.assert_array_equal(parameter_mask(net, {1: ["weight", "bias"]}), expect)
    assert parameter_mask(net, {}).all()
    # the mask follows MLP.flatten: freezing a layer's weights leaves exactly its weight entries
    theta = net.flatten()
    np.testing.assert_array_equal(theta[~parameter_mask(net, {1: "weight"})], net.layers[1].weight.ravel())


@pytest.mark.parametrize(
    "frozen,error",
    [
        ({3: "weight"}, InputError),
        ({-4: "bias"}, InputError),
        ({True: "bias"}, InputError),
        ({0: "weights"}, InputError),
        ({0: ()}, InputError),
        ([0], InputTypeError),
    ],
)
def test_parameter_mask_rejects_bad_input(frozen, error):
    net = glorot_normal((3, 4, 2, 1), ["tanh", "tanh", "identity"], 0)
    with pytest.raises(error):
        parameter_mask(net, frozen)


def test_check_free():
    assert check_free(None, 5) is None
    assert check_free(np.ones(5, bool), 5) is None  # all free: the unrestricted path
    np.testing.assert_array_equal(check_free(np.array([1, 0, 1, 1, 0], bool), 5), [0, 2, 3])


# --- training ------------------------------------------------------------------------------------


def _frozen_problem(n=300, seed=0):
    """A realisable problem: a 2-3-1 teacher; the student starts at the teacher's first-layer
    weights (frozen) with its first-layer biases and second layer perturbed (free)."""
    teacher = synthetic_teacher(TeacherConfig(2, (3,), "g"), seed)
    x = sample_inputs(n, 2, seed + 100)
    free = parameter_mask(teacher, {0: "weight"})
    rng = np.random.default_rng(seed)
    theta = teacher.flatten()
    init = teacher.unflatten(theta + np.where(free, 0.3 * rng.normal(size=theta.size), 0.0))
    return x, teacher.forward(x), init, free


def _check_frozen(res, init, free, x, y):
    np.testing.assert_array_equal(res.network.flatten()[~free], init.flatten()[~free])
    floor = loss_floor(y, init.sizes)  # two summation orders differ by up to the floor
    assert res.loss == pytest.approx(loss(res.network, x, y), rel=1e-6, abs=floor)


@pytest.mark.parametrize(
    "schedule,optimizer,flow_seconds",
    [
        ("lm-first", "lm", 1.0),
        # flow-first without a flow: the second-phase optimizer alone from the initial point
        ("flow-first", "lm", 0.0),
        ("flow-first", "trust-exact", 0.0),
        ("flow-first", "bfgs", 0.0),
        # the gradient flow (on the exact restricted Hessian), then the polish
        ("flow-first", "trust-exact", 0.3),
    ],
)
def test_training_with_frozen_weights_reaches_zero_loss(schedule, optimizer, flow_seconds):
    x, y, init, free = _frozen_problem()
    config = TrainConfig(
        schedule=schedule, optimizer=optimizer, flow_seconds=flow_seconds, polish_seconds=5.0,
        max_seconds=5.0 + flow_seconds, target_loss=1e-24,
    )
    res = NativeEngine().train(x, y, init, config, free=free)
    _check_frozen(res, init, free, x, y)
    assert res.converged, res
    assert res.loss <= 1e-24
    phase = res.stopped_by.split(":")[0]
    if flow_seconds == 0.0 or schedule == "lm-first":
        assert phase == optimizer
    else:
        assert phase in ("flow", optimizer)


def test_lbfgs_path_with_frozen_weights():
    x, y, init, free = _frozen_problem()
    config = TrainConfig(max_seconds=5.0, memory_budget_mb=1e-4, target_loss=1e-24)
    res = NativeEngine().train(x, y, init, config, free=free)
    assert any("L-BFGS" in note for note in res.notes)
    # the output layer is free: after the warm-up the variable-projection phase may end it
    assert res.stopped_by.split(":")[0] in ("l-bfgs", "l-bfgs-varpro")
    _check_frozen(res, init, free, x, y)
    assert res.loss <= 1e-24


def test_first_order_path_with_a_frozen_output_bias_is_plain_lbfgs():
    x, y, init, _ = _frozen_problem()
    free = parameter_mask(init, {-1: "bias"})
    config = TrainConfig(max_seconds=1.0, memory_budget_mb=1e-4)
    res = NativeEngine().train(x, y, init, config, free=free)
    assert res.stopped_by.startswith("l-bfgs:")
    _check_frozen(res, init, free, x, y)
    assert res.loss < loss(init, x, y)


def test_lm_first_flow_and_polish_after_a_stall_keep_frozen_values():
    # the stalling problem of the engine tests (rho = 1, 3 neurons) with the first-layer biases
    # and the output bias frozen: LM stalls, the flow and BFGS run on the free parameters
    teacher = synthetic_teacher(TeacherConfig(2, (3,), "g"), 3)
    x = sample_inputs(300, 2, 103)
    y = teacher.forward(x)
    init = glorot_normal((2, 3, 1), ["g", "identity"], 3)
    init = init.unflatten(init.flatten() + 0.1)  # non-zero frozen biases
    free = parameter_mask(init, {0: "bias", 1: "bias"})
    config = TrainConfig(optimizer="bfgs", max_seconds=2.0, flow_seconds=0.4, polish_seconds=0.4)
    res = NativeEngine().train(x, y, init, config, free=free)
    _check_frozen(res, init, free, x, y)
    assert res.stopped_by.split(":")[0] in ("flow", "bfgs")
    assert res.loss < loss(init, x, y)
    assert res.grad_norm == pytest.approx(
        np.linalg.norm(loss_and_gradient(res.network, x, y)[1][free]), rel=1e-9
    )


def test_lm_on_a_sample_subset_keeps_frozen_values():
    # 8000 samples >= 2 x 4000: lm-first starts on a subset of the samples
    x, y, init, free = _frozen_problem(n=8000)
    progress = []
    res = NativeEngine().train(
        x, y, init, TrainConfig(max_seconds=10.0, target_loss=1e-24), free=free,
        progress=lambda t, v: progress.append(v),
    )
    _check_frozen(res, init, free, x, y)
    assert res.loss <= 1e-24


def test_all_free_mask_trains_like_no_mask():
    x, y, init, _ = _frozen_problem()
    config = TrainConfig(max_seconds=5.0, target_loss=1e-20)
    plain = NativeEngine().train(x, y, init, config)
    masked = NativeEngine().train(x, y, init, config, free=np.ones(init.n_params, bool))
    np.testing.assert_array_equal(plain.network.flatten(), masked.network.flatten())
    assert plain.steps == masked.steps


@pytest.mark.parametrize(
    "free",
    [
        np.ones(12, bool),  # wrong length (13 parameters)
        np.ones((13, 1), bool),
        np.ones(13, dtype=np.int64),  # not boolean
        [1.0] * 13,
        np.zeros(13, bool),  # everything frozen
    ],
)
def test_bad_masks_raise(free):
    x, y, init, _ = _frozen_problem(n=50)
    with pytest.raises(InputError):
        NativeEngine().train(x, y, init, TrainConfig(max_seconds=1.0), free=free)
