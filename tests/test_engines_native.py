"""Native engine: derivatives against finite differences of a naive forward pass, training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import special

from ecflow.engines import TrainConfig, TrainStatus, get_engine
from ecflow.engines.base import judge_training, loss_floor
from ecflow.engines.native import (
    NativeEngine,
    hessian,
    jacobian_qr,
    loss,
    loss_and_gradient,
    residual_jacobian,
    residuals,
)
from ecflow.networks import MLP, glorot_normal
from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher

# --- an independent oracle: activations written from their textbook definitions ---------------

_SELU_L, _SELU_A = 1.0507009873554805, 1.6732632423543772


def _softplus(z):
    return np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0)


NAIVE = {
    "g": lambda z: _softplus(z) + 1.0 / (1.0 + np.exp(-4.0 * z)),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "softplus": _softplus,
    "relu": lambda z: np.maximum(z, 0.0),
    "gelu": lambda z: 0.5 * z * (1.0 + special.erf(z / np.sqrt(2.0))),
    "selu": lambda z: np.where(z > 0, _SELU_L * z, _SELU_L * _SELU_A * (np.exp(z) - 1.0)),
    "mish": lambda z: z * np.tanh(_softplus(z)),
    "identity": lambda z: z,
}


def naive_forward(theta, sizes, acts, x):
    """The MLP written out directly from the flat parameter layout."""
    h, k = x, 0
    for n_in, n_out, a in zip(sizes[:-1], sizes[1:], acts):
        W = theta[k : k + n_out * n_in].reshape(n_out, n_in)
        k += n_out * n_in
        b = theta[k : k + n_out]
        k += n_out
        h = NAIVE[a](h @ W.T + b)
    return h


def naive_loss(theta, sizes, acts, x, y):
    r = naive_forward(theta, sizes, acts, x) - y
    return float(np.mean(r * r))


def fd_gradient(f, theta, h=1e-6):
    g = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


def fd_jacobian(f, theta, h=1e-6):
    cols = []
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        cols.append(((f(theta + e) - f(theta - e)) / (2 * h)).ravel())
    return np.stack(cols, axis=1)


def fd_hessian(f, theta, h=1e-4):
    """Second central differences of a scalar function (independent of any gradient code)."""
    P = theta.size
    H = np.empty((P, P))
    E = np.eye(P) * h
    f0 = f(theta)
    for i in range(P):
        H[i, i] = (f(theta + E[i]) - 2 * f0 + f(theta - E[i])) / h**2
        for j in range(i):
            v = (
                f(theta + E[i] + E[j])
                - f(theta + E[i] - E[j])
                - f(theta - E[i] + E[j])
                + f(theta - E[i] - E[j])
            ) / (4 * h**2)
            H[i, j] = H[j, i] = v
    return H


def _problem(act, depth, d_out, seed, *, zero_loss=False, n=40):
    rng = np.random.default_rng(seed)
    d_in = 3
    sizes = (d_in,) + (4, 3, 3)[:depth] + (d_out,)
    acts = [act] * depth + ["identity"]
    net = glorot_normal(sizes, acts, seed)
    net = net.unflatten(net.flatten() + 0.3 * rng.normal(size=net.n_params))
    x = rng.uniform(-1.5, 1.5, size=(n * 3, d_in))
    if act in ("relu", "selu"):
        # stay away from the kink at 0, where finite differences are meaningless
        h, keep = x, np.ones(x.shape[0], bool)
        for layer in net.layers[:-1]:
            z = h @ layer.weight.T + layer.bias
            keep &= np.min(np.abs(z), axis=1) > 0.05
            h = NAIVE[act](z)
        x = x[keep]
    x = x[:n]
    y = net.forward(x) if zero_loss else rng.normal(size=(x.shape[0], d_out))
    return net, sizes, acts, x, y


ACTS = ["g", "tanh", "sigmoid", "softplus", "relu", "gelu", "selu", "mish"]


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
def test_gradient_and_jacobian_match_finite_differences(act, depth):
    d_out = 2 if depth == 2 else 1
    net, sizes, acts, x, y = _problem(act, depth, d_out, seed=depth)
    theta = net.flatten()
    value, grad = loss_and_gradient(net, x, y)
    assert value == pytest.approx(naive_loss(theta, sizes, acts, x, y), rel=1e-12)
    g_fd = fd_gradient(lambda t: naive_loss(t, sizes, acts, x, y), theta)
    assert np.max(np.abs(grad - g_fd)) <= 1e-7 * max(1.0, np.max(np.abs(g_fd)))
    r, J = residual_jacobian(net, x, y)
    np.testing.assert_allclose(r, (naive_forward(theta, sizes, acts, x) - y).ravel(), atol=1e-13)
    J_fd = fd_jacobian(lambda t: naive_forward(t, sizes, acts, x), theta)
    assert np.max(np.abs(J - J_fd)) <= 1e-7 * max(1.0, np.max(np.abs(J_fd)))
    np.testing.assert_allclose(2 * J.T @ r / r.size, grad, atol=1e-13)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
def test_hessian_matches_second_differences(act, depth):
    d_out = 2 if depth == 3 else 1
    net, sizes, acts, x, y = _problem(act, depth, d_out, seed=10 + depth, n=25)
    theta = net.flatten()
    H = hessian(net, x, y)
    assert H.shape == (net.n_params, net.n_params)
    np.testing.assert_array_equal(H, H.T)
    H_fd = fd_hessian(lambda t: naive_loss(t, sizes, acts, x, y), theta)
    scale = max(1.0, np.max(np.abs(H_fd)))
    assert np.max(np.abs(H - H_fd)) <= 2e-5 * scale
    # the second-order term is really there: H differs from Gauss-Newton away from zero loss
    r, J = residual_jacobian(net, x, y)
    gauss_newton = 2 * J.T @ J / r.size
    assert np.max(np.abs(H - gauss_newton)) > 1e-3 * scale


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ["g", "tanh", "gelu"])
def test_derivatives_at_a_zero_loss_point(act, depth):
    net, sizes, acts, x, y = _problem(act, depth, 1, seed=20 + depth, zero_loss=True)
    theta = net.flatten()
    value, grad = loss_and_gradient(net, x, y)
    assert value <= loss_floor(y, sizes)
    assert np.max(np.abs(grad)) <= 1e-14
    H = hessian(net, x, y)
    r, J = residual_jacobian(net, x, y)
    np.testing.assert_allclose(H, 2 * J.T @ J / r.size, atol=1e-12)  # r = 0: Gauss-Newton exact
    H_fd = fd_hessian(lambda t: naive_loss(t, sizes, acts, x, y), theta)
    assert np.max(np.abs(H - H_fd)) <= 2e-5 * max(1.0, np.max(np.abs(H_fd)))


def test_hessian_chunking_does_not_change_the_result():
    from ecflow.engines.native.derivatives import Architecture, _hessian

    net, _, _, x, y = _problem("tanh", 2, 2, seed=5, n=37)
    arch = Architecture.of(net)
    full = _hessian(arch, net.flatten(), x, y, chunk=1000)
    chunked = _hessian(arch, net.flatten(), x, y, chunk=5)
    np.testing.assert_allclose(chunked, full, atol=1e-13)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_jacobian_qr_reproduces_normal_equations(chunk):
    net, _, _, x, y = _problem("g", 2, 2, seed=3, n=30)
    r, J = residual_jacobian(net, x, y)
    R = jacobian_qr(net, x, y, chunk=chunk)
    P = net.n_params
    assert R.shape == (P + 1, P + 1)
    np.testing.assert_allclose(np.tril(R, -1), 0.0)
    np.testing.assert_allclose(R[:P, :P].T @ R[:P, :P], J.T @ J, atol=1e-11)
    np.testing.assert_allclose(R[:P, :P].T @ R[:P, P], J.T @ r, atol=1e-11)
    assert np.sum(R[:, P] ** 2) == pytest.approx(r @ r, rel=1e-12)


def test_derivative_entry_points_validate():
    net, _, _, x, y = _problem("g", 1, 1, seed=0)
    with pytest.raises(TypeError, match="network must be an MLP"):
        loss("net", x, y)
    with pytest.raises(ValueError, match="do not match"):
        loss_and_gradient(net, x[:, :2], y)
    with pytest.raises(ValueError, match="same number of samples"):
        residuals(net, x, y[:-1])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hessian(net, bad, y)
    with pytest.raises(ValueError, match="chunk"):
        jacobian_qr(net, x, y, chunk=0)
    with pytest.raises(TypeError, match="floating"):
        residual_jacobian(net, x.astype(int), y)


# --- training ------------------------------------------------------------------------------------


def _teacher_problem(d_in=2, r=2, rho=2, n=500, seed=0, act="g"):
    teacher = synthetic_teacher(TeacherConfig(d_in, (r,), act), seed)
    x = sample_inputs(n, d_in, seed + 100)
    init = glorot_normal((d_in, rho * r, 1), [act, "identity"], seed)
    return teacher, x, teacher.forward(x), init


def test_lm_reaches_machine_precision_on_a_small_realisable_problem():
    teacher, x, y, init = _teacher_problem()
    res = get_engine("native").train(x, y, init, TrainConfig(max_seconds=30))
    assert res.status.converged, res
    assert res.rmse <= 1e-12
    assert res.stopped_by.startswith("lm:")
    assert res.steps < 500  # converges superlinearly: ~30 steps
    x_test = sample_inputs(2000, 2, 7)
    assert np.sqrt(np.mean((res.network.forward(x_test) - teacher.forward(x_test)) ** 2)) < 1e-10
    # the reported numbers describe the returned network
    # at the rounding floor two summation orders differ by the floor itself
    floor = loss_floor(y, init.sizes)
    assert res.loss == pytest.approx(loss(res.network, x, y), rel=1e-6, abs=floor)
    assert res.engine == "native" and isinstance(res.network, MLP)
    h = res.history
    assert h.ndim == 2 and h.shape[1] == 2 and h.shape[0] >= 2
    assert np.all(np.diff(h[:, 0]) >= 0) and np.all(np.diff(h[:, 1]) <= 0)
    assert h[-1, 1] == pytest.approx(res.loss, rel=1e-6, abs=floor)


@pytest.mark.parametrize(
    "schedule,optimizer",
    [
        ("lm-first", "lm"),
        ("lm-first", "trust-exact"),
        ("lm-first", "bfgs"),
        ("flow-first", "lm"),
        ("flow-first", "trust-exact"),
        ("flow-first", "bfgs"),
    ],
)
def test_every_schedule_and_optimizer_improves_the_loss(schedule, optimizer):
    # rho = 1 with 3 neurons: LM stalls in a local minimum for this seed, so lm-first also runs
    # the flow and the second-phase optimizer
    _, x, y, init = _teacher_problem(d_in=2, r=3, rho=1, n=300, seed=3)
    loss0 = loss(init, x, y)
    config = TrainConfig(
        schedule=schedule, optimizer=optimizer, max_seconds=3.0, flow_seconds=1.0, polish_seconds=1.0
    )
    res = NativeEngine().train(x, y, init, config)
    assert res.loss < 0.1 * loss0
    assert res.loss == pytest.approx(loss(res.network, x, y), rel=1e-9)
    assert res.status in (TrainStatus.MAX_TIME, TrainStatus.STALLED) or res.converged
    assert res.steps > 0
    if schedule == "flow-first":
        assert not res.stopped_by.startswith("lm") or optimizer == "lm"
    phase = res.stopped_by.split(":")[0]
    assert phase in ("lm", "flow", optimizer)


def test_lm_first_runs_flow_and_polish_after_a_stall():
    _, x, y, init = _teacher_problem(d_in=2, r=3, rho=1, n=300, seed=3)
    # stall rule off: on a loaded machine it may end LM as hopeless before the flow; a whole
    # budget far above LM's ~0.2 s to its stall, so that the flow and the polish always run
    config = TrainConfig(
        optimizer="bfgs", max_seconds=60.0, flow_seconds=0.5, polish_seconds=0.5, stall_factor=0.0
    )
    res = NativeEngine().train(x, y, init, config)
    # the polish stalls in the local minimum, or (under load) runs out its own 0.5 s
    assert res.status in (TrainStatus.STALLED, TrainStatus.MAX_TIME), res
    assert res.stopped_by.split(":")[0] in ("flow", "bfgs")


def test_flow_first_with_each_ode_method():
    _, x, y, init = _teacher_problem(n=200)
    loss0 = loss(init, x, y)
    for method in ("BDF", "Radau", "LSODA"):
        config = TrainConfig(
            schedule="flow-first", ode_method=method, max_seconds=1.0, flow_seconds=1.0,
            polish_seconds=0.0,
        )
        res = NativeEngine().train(x, y, init, config)
        assert res.loss < 0.5 * loss0, method


def test_large_student_falls_back_to_lbfgs_and_says_so():
    # large enough that the plain warm-up does not reach loss_tol by itself
    _, x, y, init = _teacher_problem(d_in=4, r=4, n=500)
    loss0 = loss(init, x, y)
    config = TrainConfig(max_seconds=1.0, memory_budget_mb=1e-4, stall_factor=0.0)
    res = NativeEngine().train(x, y, init, config)
    assert any("L-BFGS" in note and "variable projection" in note for note in res.notes)
    # plain L-BFGS for the warm-up, then the output layer by least squares to the end
    assert res.stopped_by.startswith("l-bfgs-varpro:")
    assert res.loss < 0.1 * loss0
    # the point returned is a projected one: the output layer minimises the loss exactly
    grad = loss_and_gradient(res.network, x, y)[1]
    n_output = init.layers[-1].weight.size + init.layers[-1].bias.size
    grad0 = loss_and_gradient(init, x, y)[1]
    assert np.abs(grad[-n_output:]).max() < 1e-9 * np.abs(grad0[-n_output:]).max()
    normal = NativeEngine().train(x, y, init, TrainConfig(max_seconds=1.0))
    assert normal.notes == ()


def test_budgets_and_progress():
    _, x, y, init = _teacher_problem(d_in=2, r=3, rho=2, n=300, seed=1)
    res = NativeEngine().train(x, y, init, TrainConfig(max_steps=3))
    assert res.status is TrainStatus.MAX_STEPS
    assert res.steps <= 3
    calls = []
    res = NativeEngine().train(
        x, y, init,
        TrainConfig(max_seconds=0.5, patience=10**6, loss_tol=0.0, grad_tol=0.0, stall_factor=0.0),
        progress=lambda t, l: calls.append((t, l)),
    )
    # no tolerance can end it: the clock does, or (on a fast machine) LM's stall in the local
    # minimum at MSE 4e-4 that this student reaches after ~10 000 steps
    assert res.status in (TrainStatus.MAX_TIME, TrainStatus.STALLED), res
    assert len(calls) >= 2
    assert all(l >= res.loss for _, l in calls)


def test_train_does_not_mutate_init_and_is_deterministic():
    _, x, y, init = _teacher_problem(n=200)
    before = init.flatten().copy()
    config = TrainConfig(max_steps=20)
    a = NativeEngine().train(x, y, init, config)
    b = NativeEngine().train(x, y, init, config)
    np.testing.assert_array_equal(init.flatten(), before)
    np.testing.assert_array_equal(a.network.flatten(), b.network.flatten())


def test_train_validates_inputs():
    _, x, y, init = _teacher_problem(n=50)
    eng = NativeEngine()
    cfg = TrainConfig(max_seconds=1.0)
    bad = y.copy()
    bad[3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        eng.train(x, bad, init, cfg)
    with pytest.raises(ValueError, match="same number of samples"):
        eng.train(x, y[:-1], init, cfg)
    with pytest.raises(ValueError, match="do not match"):
        eng.train(np.hstack([x, x]), y, init, cfg)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        eng.train(x, y, init, {"max_seconds": 1})
    with pytest.raises(TypeError, match="init must be an MLP"):
        eng.train(x, y, init.flatten(), cfg)
    with pytest.raises(TypeError, match="progress"):
        eng.train(x, y, init, cfg, progress=3)
    huge = init.unflatten(init.flatten() * 1e300)
    with pytest.raises(ValueError, match="overflow"):
        eng.train(x, y, huge, cfg)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"schedule": "sideways"}, "schedule"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"ode_method": "RK45"}, "ode_method"),
        ({"loss_tol": -1.0}, "loss_tol"),
        ({"grad_tol": float("nan")}, "grad_tol"),
        ({"flow_seconds": -1.0}, "flow_seconds"),
        ({"max_seconds": 0.0}, "max_seconds"),
        ({"max_steps": 0}, "max_steps"),
        ({"patience": True}, "patience"),
        ({"memory_budget_mb": float("inf")}, "memory_budget_mb"),
    ],
)
def test_train_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_get_engine_native():
    assert isinstance(get_engine("native"), NativeEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        get_engine("torch")


@pytest.mark.parametrize("out_act", ["identity", "tanh", "softplus"])
def test_shallow_hessian_kernel_matches_the_general_sweep(out_act):
    from ecflow.engines.native.derivatives import (
        Architecture,
        _hessian_chunk,
        _hessian_chunk_shallow,
    )

    rng = np.random.default_rng(4)
    net = glorot_normal((3, 5, 2), ["g", out_act], 0)
    net = net.unflatten(net.flatten() + 0.3 * rng.normal(size=net.n_params))
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    arch = Architecture.of(net)
    params = arch.unpack(net.flatten())
    general = np.zeros((net.n_params, net.n_params))
    shallow = np.zeros_like(general)
    _hessian_chunk(arch, params, x, y, general)
    _hessian_chunk_shallow(arch, params, x, y, shallow)
    np.testing.assert_allclose(shallow + shallow.T, general + general.T, atol=1e-11)


def test_lm_first_on_a_sample_subset_then_all_samples():
    # 8000 samples >= 2 x 4000: the first LM phase runs on a subset
    teacher, x, y, init = _teacher_problem(n=8000, seed=2)
    calls = []
    res = NativeEngine().train(
        x, y, init, TrainConfig(max_seconds=30), progress=lambda t, l: calls.append(t)
    )
    assert res.status.converged and res.rmse <= 1e-12, res
    assert res.loss == pytest.approx(loss(res.network, x, y), rel=1e-6, abs=loss_floor(y, init.sizes))
    assert calls and calls == sorted(calls)


def test_reason_tells_a_near_zero_stall_from_a_local_minimum():
    _, x, y, init = _teacher_problem(d_in=2, r=3, rho=1, n=300, seed=3)
    config = TrainConfig(optimizer="bfgs", max_seconds=3.0, flow_seconds=0.5, polish_seconds=0.5)
    res = NativeEngine().train(x, y, init, config)
    assert res.status is TrainStatus.STALLED and res.loss > 1e-6
    assert res.reason == TrainStatus.STALLED.message
    near = dataclasses.replace(res, loss=1e-24, rmse=1e-12)
    assert "near zero loss" in near.reason and "local minimum" in near.reason
    assert "likely a local minimum" not in near.reason
    done = dataclasses.replace(res, loss=1e-32, status=TrainStatus.CONVERGED_LOSS)
    assert done.reason == TrainStatus.CONVERGED_LOSS.message


# --- compiled one-hidden-layer kernels (engines/native/kernels.py) --------------------------------

KERNEL_ACTS = ["g", "tanh", "sigmoid", "softplus", "relu"]


@pytest.fixture
def kernels():
    return pytest.importorskip("ecflow.engines.native.kernels")


def _numpy_path(monkeypatch, kernels, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(kernels, "ENABLED", False)
        return fn(*args)


@pytest.mark.parametrize("zero_loss", [False, True])
@pytest.mark.parametrize("d_out", [1, 2])
@pytest.mark.parametrize("act", KERNEL_ACTS)
def test_kernel_matches_numpy_path_and_finite_differences(kernels, monkeypatch, act, d_out, zero_loss):
    from ecflow.engines.native.derivatives import Architecture, _loss_grad, _sum_sq_residuals

    net, sizes, acts, x, y = _problem(act, 1, d_out, seed=30 + d_out, zero_loss=zero_loss)
    arch, theta = Architecture.of(net), net.flatten()
    fused = kernels.loss_grad(arch, theta, x, y)
    assert fused is not None, "a one-hidden-layer network with this activation has a kernel"
    value, grad = fused
    value_np, grad_np = _numpy_path(monkeypatch, kernels, _loss_grad, arch, theta, x, y)
    sse = kernels.sum_sq_residuals(arch, theta, x, y)
    sse_np = _numpy_path(monkeypatch, kernels, _sum_sq_residuals, arch, theta, x, y)
    g_fd = fd_gradient(lambda t: naive_loss(t, sizes, acts, x, y), theta)
    if zero_loss:
        floor = loss_floor(y, sizes)
        assert value <= floor and sse <= floor * y.size
        assert np.max(np.abs(grad)) <= 1e-14
        assert np.max(np.abs(grad_np)) <= 1e-14
    else:
        assert value == pytest.approx(value_np, rel=1e-12)
        assert value == pytest.approx(naive_loss(theta, sizes, acts, x, y), rel=1e-12)
        assert sse == pytest.approx(sse_np, rel=1e-12)
        assert np.max(np.abs(grad - grad_np)) <= 1e-12 * np.max(np.abs(grad_np))
    assert np.max(np.abs(grad - g_fd)) <= 1e-7 * max(1.0, np.max(np.abs(g_fd)))
    # the public entry point dispatches to the kernel
    np.testing.assert_array_equal(loss_and_gradient(net, x, y)[1], grad)


@pytest.mark.parametrize("act", KERNEL_ACTS)
def test_kernel_over_several_blocks_and_large_inputs(kernels, monkeypatch, act):
    from ecflow.engines.native.derivatives import Architecture, _loss_grad, _sum_sq_residuals

    rng = np.random.default_rng(5)
    net = glorot_normal((5, 7, 2), [act, "identity"], 5)
    # a ragged last block, and |z| up to ~1e3 where the activations saturate
    x = rng.normal(size=(3 * kernels._BLOCK_ROWS + 17, 5)) * np.array([1.0, 1.0, 1.0, 1.0, 300.0])
    y = rng.normal(size=(x.shape[0], 2))
    arch, theta = Architecture.of(net), net.flatten()
    value, grad = kernels.loss_grad(arch, theta, x, y)
    value_np, grad_np = _numpy_path(monkeypatch, kernels, _loss_grad, arch, theta, x, y)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx(value_np, rel=1e-12)
    assert np.max(np.abs(grad - grad_np)) <= 1e-12 * np.max(np.abs(grad_np))
    sse_np = _numpy_path(monkeypatch, kernels, _sum_sq_residuals, arch, theta, x, y)
    assert kernels.sum_sq_residuals(arch, theta, x, y) == pytest.approx(sse_np, rel=1e-12)


@pytest.mark.parametrize(
    "sizes, acts",
    [
        ((3, 4, 1), ["gelu", "identity"]),  # no kernel for this activation
        ((3, 4, 1), ["g", "tanh"]),  # output layer not the identity
        ((3, 4, 3, 1), ["g", "g", "identity"]),  # deep: NumPy path
    ],
)
def test_kernel_declines_what_it_does_not_cover(kernels, sizes, acts):
    from ecflow.engines.native.derivatives import Architecture

    net = glorot_normal(sizes, acts, 0)
    x, y = np.ones((3, 3)), np.ones((3, 1))
    assert kernels.loss_grad(Architecture.of(net), net.flatten(), x, y) is None
    assert kernels.sum_sq_residuals(Architecture.of(net), net.flatten(), x, y) is None


def test_kernel_switch_and_fallback_without_numba(kernels, monkeypatch):
    import sys

    from ecflow.engines.native import derivatives

    net, _, _, x, y = _problem("g", 1, 1, seed=40)
    arch = derivatives.Architecture.of(net)
    monkeypatch.setattr(kernels, "ENABLED", False)
    assert kernels.loss_grad(arch, net.flatten(), x, y) is None
    monkeypatch.setattr(kernels, "ENABLED", True)
    expected = loss_and_gradient(net, x, y)
    # an import error of numba leaves the NumPy path, silently
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "ecflow.engines.native.kernels")
    monkeypatch.delattr(sys.modules["ecflow.engines.native"], "kernels")
    derivatives._compiled.cache_clear()
    try:
        assert derivatives._compiled() is None
        value, grad = loss_and_gradient(net, x, y)
        assert loss(net, x, y) == pytest.approx(value, rel=1e-12)
    finally:
        derivatives._compiled.cache_clear()
    assert value == pytest.approx(expected[0], rel=1e-12)
    assert np.max(np.abs(grad - expected[1])) <= 1e-12 * np.max(np.abs(expected[1]))


@pytest.mark.parametrize("act", KERNEL_ACTS)
def test_kernel_activations_match_the_ufunc_kernels(kernels, act):
    from ecflow.activations import get_activation

    rng = np.random.default_rng(6)
    z = np.concatenate(
        [
            rng.normal(0.0, 3.0, 20_000),
            rng.uniform(-750.0, 750.0, 2_000),
            np.sign(rng.normal(size=2_000)) * 10.0 ** rng.uniform(-300, 0, 2_000),
            [0.0, -0.0, 0.25, -0.25, 1e3, -1e3, np.sqrt(2.0) - 1.0],
        ]
    )
    f, df, _ = get_activation(act).fused(z)
    F, D = np.empty((1, z.size)), np.empty((1, z.size))
    kernels._activate(kernels.KERNEL_ACTIVATIONS[act], z[None, :], np.zeros(z.size), F, D)
    # relative 1e-14 except where the value is below the smallest normal number (exp(-708)
    # is kept there instead of a subnormal); an absolute 1e-15 where NumPy's σ'(z) = 1 - σ²
    # or s (1 - s) cancels
    assert np.all(np.abs(F[0] - f) <= 1e-14 * np.abs(f) + 1e-300)
    assert np.all(np.abs(D[0] - df) <= 1e-14 * np.abs(df) + 1e-15)
    V = np.empty((1, z.size))
    kernels._value(kernels.KERNEL_ACTIVATIONS[act], z[None, :], np.zeros(z.size), V)
    np.testing.assert_array_equal(V, F)


# --- the Float64 rounding floor (engines/base.py: loss_floor, judge_training) --------------------


def _scaled_teacher_start(scale, seed=3):
    """A g 2-4-1 teacher with its outputs scaled by ``scale``, and a start 1e-6 away from it."""
    teacher = synthetic_teacher(TeacherConfig(2, (4,), "g"), seed)
    last = teacher.layers[-1]
    teacher = MLP(teacher.layers[:-1] + (type(last)(last.weight * scale, last.bias * scale,
                                                    last.activation),))
    x = sample_inputs(500, 2, seed + 1)
    theta = teacher.flatten()
    rng = np.random.default_rng(seed)
    init = teacher.unflatten(theta + 1e-6 * np.abs(theta) * rng.standard_normal(theta.size))
    return x, teacher.forward(x), init


def test_loss_floor_follows_the_scale_of_the_targets_and_the_sums_of_the_network():
    y = np.random.default_rng(0).normal(size=(50, 2))
    base = loss_floor(y, (3, 5, 2))
    assert base > 0
    assert loss_floor(10 * y, (3, 5, 2)) == pytest.approx(100 * base, rel=1e-12)
    # n_ops = (3 + 1) + (5 + 1) = 10 against (3 + 1) + (5 + 1) + (4 + 1) = 15
    assert loss_floor(y, (3, 5, 4, 2)) == pytest.approx(1.5 * base, rel=1e-12)
    assert loss_floor(np.zeros((4, 1)), (2, 3, 1)) == 0.0
    eps = np.finfo(np.float64).eps
    assert base == pytest.approx((2.0 * np.sqrt(10) * eps * np.sqrt(np.mean(y**2))) ** 2)


@pytest.mark.parametrize("scale", [1.0, 10.0, 1000.0])
def test_a_student_at_the_rounding_floor_has_converged_whatever_loss_tol_says(scale):
    # loss_tol 0 cannot be met: only the floor can say the student is done
    x, y, init = _scaled_teacher_start(scale)
    res = NativeEngine().train(x, y, init, TrainConfig(loss_tol=0.0, grad_tol=0.0, max_seconds=30))
    assert res.status is TrainStatus.CONVERGED_LOSS, res
    assert res.stopped_by == "lm: loss_floor"  # no flow round after a stall at the floor
    assert res.loss <= loss_floor(y, init.sizes)
    assert "rounding floor" in res.reason and "may lower it" not in res.reason
    # the default loss_tol (1e-31) is below the floor of large outputs: still converged
    res = NativeEngine().train(x, y, init, TrainConfig(max_seconds=30))
    assert res.status is TrainStatus.CONVERGED_LOSS, res


def test_judge_training_puts_the_floor_beside_loss_tol():
    cfg = TrainConfig(loss_tol=1e-31, grad_tol=1e-16, target_loss=1e-14)
    assert judge_training(1e-32, 1.0, cfg, 1e-30, "stalled") == (TrainStatus.CONVERGED_LOSS, "loss_tol")
    assert judge_training(1e-30, 1.0, cfg, 1e-30, "stalled") == (TrainStatus.CONVERGED_LOSS, "loss_floor")
    assert judge_training(1e-20, 1.0, cfg, 1e-30, "stalled") == (TrainStatus.REACHED_TARGET, "target_loss")
    assert judge_training(1e-10, 1e-17, cfg, 1e-30, "stalled") == (TrainStatus.CONVERGED_GRAD, "grad_tol")
    assert judge_training(1e-10, 1.0, cfg, 1e-30, "stalled") == (None, "stalled")
