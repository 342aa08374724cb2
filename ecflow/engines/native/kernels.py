"""Compiled kernels for the loss and gradient of a network with one hidden layer.

For ``x (n_samples, d_in)``, hidden weights ``W (n_hidden, d_in)``, ``b (n_hidden,)``, output
weights ``A (d_out, n_hidden)``, ``c (d_out,)`` and identity output::

    z = x Wᵀ + b,   h = σ(z),   ŷ = h Aᵀ + c,   r = ŷ - y,   L = |r|² / (n_samples · d_out)
    ∂L/∂A = ρᵀ h,   ∂L/∂c = Σ_s ρ_s,   δ = (ρ A) ⊙ σ'(z),   ∂L/∂W = δᵀ x,   ∂L/∂b = Σ_s δ_s

with ``ρ = 2 r / (n_samples · d_out)``. The NumPy path of :mod:`.derivatives` evaluates ``σ``
and ``σ'`` as a chain of ufuncs, each a pass over a ``(chunk, n_hidden)`` array; here one loop
over each block of samples computes ``σ(z)``, ``σ'(z)``, the residuals and ``δ`` with the
activation's intermediates in registers (``g``, ``sigmoid`` and ``softplus`` need a single
``exp(-|z|)``), and the two products with ``x`` stay BLAS calls. Results agree with the NumPy
path to rounding (about 1e-15 relative); the summation order inside a block differs.

The kernels are compiled by numba on first use and cached on disk (``cache=True``), so a new
process loads machine code instead of compiling. numba is imported with this module: callers
import it lazily and fall back to NumPy when the import fails. Setting the environment variable
``ECFLOW_NUMBA=0`` before the first call, or :data:`ENABLED` to False, turns the kernels off.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from ecflow.engines.native.derivatives import Architecture

__all__ = ["ENABLED", "KERNEL_ACTIVATIONS", "loss_grad", "sum_sq_residuals"]

ENABLED: bool = os.environ.get("ECFLOW_NUMBA", "1").strip() not in ("0", "false", "no", "off")
"""Whether :func:`loss_grad` and :func:`sum_sq_residuals` use the compiled kernels."""

_BLOCK_ROWS = 256
"""Samples per block: the three ``(block, n_hidden)`` work arrays stay in L1/L2 cache."""

_G, _SIGMOID, _SOFTPLUS, _TANH, _RELU = range(5)
KERNEL_ACTIVATIONS: dict[str, int] = {
    "g": _G,
    "sigmoid": _SIGMOID,
    "softplus": _SOFTPLUS,
    "tanh": _TANH,
    "relu": _RELU,
}
"""Activations with a compiled kernel, by file name (the others take the NumPy path)."""

_jit = numba.njit(cache=True, fastmath=False, nogil=True)


# --- activations: (σ(z), σ'(z)) from one exp(-|z|) where the function allows ---------------------
# The formulas match the ufunc kernels of ecflow.activations to a few ulp: softplus is
# max(z, 0) + log1p(e), the logistic is 1/(1 + e) or e/(1 + e), and its derivative e/(1 + e)²
# (exact where s(1 - s) cancels).


@_jit
def _log1p(e):
    """``log(1 + e)`` for ``e >= 0`` to a few ulp (Goldberg 1991, thm. 4) by the inlined ``log``
    instead of libm's ``log1p``, which costs about three ``log`` calls."""
    u = 1.0 + e
    if u == 1.0:
        return e
    return math.log(u) * (e / (u - 1.0))


@_jit
def _g(z):
    e = math.exp(-abs(z))
    p = 1.0 / (1.0 + e)
    e4 = (e * e) * (e * e)  # exp(-4|z|) to a few ulp, without a second exp
    q = 1.0 / (1.0 + e4)
    s = p if z >= 0.0 else e * p
    s4 = q if z >= 0.0 else e4 * q
    return max(z, 0.0) + _log1p(e) + s4, s + 4.0 * (e4 * q * q)


@_jit
def _sigmoid(z):
    e = math.exp(-abs(z))
    p = 1.0 / (1.0 + e)
    return (p if z >= 0.0 else e * p), e * p * p


@_jit
def _softplus(z):
    e = math.exp(-abs(z))
    p = 1.0 / (1.0 + e)
    return max(z, 0.0) + _log1p(e), (p if z >= 0.0 else e * p)


@_jit
def _tanh(z):
    t = math.tanh(z)
    return t, 1.0 - t * t


@_jit
def _relu(z):
    return (z, 1.0) if z > 0.0 else (0.0, 0.0)


@_jit
def _activate(kind, Z, b, F, D):
    """``F = σ(Z + b)``, ``D = σ'(Z + b)``; one branch per call so each loop body is fixed."""
    m, n_hidden = Z.shape
    if kind == _G:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i], D[s, i] = _g(Z[s, i] + b[i])
    elif kind == _SIGMOID:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i], D[s, i] = _sigmoid(Z[s, i] + b[i])
    elif kind == _SOFTPLUS:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i], D[s, i] = _softplus(Z[s, i] + b[i])
    elif kind == _TANH:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i], D[s, i] = _tanh(Z[s, i] + b[i])
    else:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i], D[s, i] = _relu(Z[s, i] + b[i])


@_jit
def _value(kind, Z, b, F):
    """``F = σ(Z + b)`` (the loss alone needs no derivative)."""
    m, n_hidden = Z.shape
    if kind == _G:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i] = _g(Z[s, i] + b[i])[0]
    elif kind == _SIGMOID:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i] = _sigmoid(Z[s, i] + b[i])[0]
    elif kind == _SOFTPLUS:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i] = _softplus(Z[s, i] + b[i])[0]
    elif kind == _TANH:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i] = math.tanh(Z[s, i] + b[i])
    else:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i] = max(Z[s, i] + b[i], 0.0)


# --- loss and gradient ---------------------------------------------------------------------------


@_jit
def _loss_grad_shallow(kind, theta, x, y, n_hidden, block, grad):
    """``|r|²`` returned, ``∇L`` written into ``grad`` (n_params,), zeroed by the caller."""
    n, d_in = x.shape
    d_out = y.shape[1]
    n_w = n_hidden * d_in
    o_a = n_w + n_hidden
    o_c = o_a + d_out * n_hidden
    W = theta[:n_w].reshape((n_hidden, d_in))
    b = theta[n_w:o_a]
    A = theta[o_a:o_c].reshape((d_out, n_hidden))
    c = theta[o_c:]
    gW = np.zeros((n_hidden, d_in))
    gb = grad[n_w:o_a]
    gA = grad[o_a:o_c].reshape((d_out, n_hidden))
    gc = grad[o_c:]
    scale = 2.0 / (n * d_out)
    Z = np.empty((block, n_hidden))
    F = np.empty((block, n_hidden))
    D = np.empty((block, n_hidden))
    rho = np.empty(d_out)
    sse = 0.0
    for start in range(0, n, block):
        m = min(block, n - start)
        xb = x[start : start + m]
        np.dot(xb, W.T, Z[:m])
        _activate(kind, Z[:m], b, F[:m], D[:m])
        for s in range(m):
            for k in range(d_out):
                yhat = c[k]
                for i in range(n_hidden):
                    yhat += A[k, i] * F[s, i]
                r = yhat - y[start + s, k]
                sse += r * r
                rho[k] = scale * r
                gc[k] += rho[k]
                for i in range(n_hidden):
                    gA[k, i] += rho[k] * F[s, i]
            for i in range(n_hidden):
                back = 0.0
                for k in range(d_out):
                    back += rho[k] * A[k, i]
                D[s, i] *= back
                gb[i] += D[s, i]
        gW += np.dot(D[:m].T, xb)
    grad[:n_w] = gW.ravel()
    return sse


@_jit
def _sum_sq_shallow(kind, theta, x, y, n_hidden, block):
    """``|r|²`` by the forward half of :func:`_loss_grad_shallow`."""
    n, d_in = x.shape
    d_out = y.shape[1]
    n_w = n_hidden * d_in
    o_a = n_w + n_hidden
    o_c = o_a + d_out * n_hidden
    W = theta[:n_w].reshape((n_hidden, d_in))
    b = theta[n_w:o_a]
    A = theta[o_a:o_c].reshape((d_out, n_hidden))
    c = theta[o_c:]
    Z = np.empty((block, n_hidden))
    F = np.empty((block, n_hidden))
    sse = 0.0
    for start in range(0, n, block):
        m = min(block, n - start)
        np.dot(x[start : start + m], W.T, Z[:m])
        _value(kind, Z[:m], b, F[:m])
        for s in range(m):
            for k in range(d_out):
                yhat = c[k]
                for i in range(n_hidden):
                    yhat += A[k, i] * F[s, i]
                r = yhat - y[start + s, k]
                sse += r * r
    return sse


# --- dispatch ------------------------------------------------------------------------------------


def _kind(arch: Architecture) -> int | None:
    """Kernel code of ``arch``, or None where the NumPy path must serve."""
    if not ENABLED or arch.n_layers != 2 or arch.activations[1].name != "identity":
        return None
    return KERNEL_ACTIVATIONS.get(arch.activations[0].name)


def loss_grad(
    arch: Architecture, theta: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray] | None:
    """``(L, ∇L)`` by the compiled kernel, or None when ``arch`` has none (see :func:`_kind`).

    Parameters
    ----------
    arch : Architecture
    theta : ndarray of shape (n_params,), float64
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64

    Returns
    -------
    (float, ndarray of shape (n_params,), float64) or None
    """
    kind = _kind(arch)
    if kind is None:
        return None
    grad = np.zeros(arch.n_params)
    sse = _loss_grad_shallow(
        kind, np.ascontiguousarray(theta, dtype=np.float64), np.ascontiguousarray(x),
        np.ascontiguousarray(y), arch.sizes[1], _BLOCK_ROWS, grad,
    )
    return sse / y.size, grad


def sum_sq_residuals(
    arch: Architecture, theta: np.ndarray, x: np.ndarray, y: np.ndarray
) -> float | None:
    """``|r|²`` by the compiled kernel, or None when ``arch`` has none (shapes as
    :func:`loss_grad`)."""
    kind = _kind(arch)
    if kind is None:
        return None
    return _sum_sq_shallow(
        kind, np.ascontiguousarray(theta, dtype=np.float64), np.ascontiguousarray(x),
        np.ascontiguousarray(y), arch.sizes[1], _BLOCK_ROWS,
    )
