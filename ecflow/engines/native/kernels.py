"""Compiled kernels for the loss and gradient of a network with one hidden layer.

For ``x (n_samples, d_in)``, hidden weights ``W (n_hidden, d_in)``, ``b (n_hidden,)``, output
weights ``A (d_out, n_hidden)``, ``c (d_out,)`` and identity output::

    z = x Wᵀ + b,   h = σ(z),   ŷ = h Aᵀ + c,   r = ŷ - y,   L = |r|² / (n_samples · d_out)
    ∂L/∂A = ρᵀ h,   ∂L/∂c = Σ_s ρ_s,   δ = (ρ A) ⊙ σ'(z),   ∂L/∂W = δᵀ x,   ∂L/∂b = Σ_s δ_s

with ``ρ = 2 r / (n_samples · d_out)``. The NumPy path of :mod:`.derivatives` evaluates ``σ``
and ``σ'`` as a chain of ufuncs, each a pass over a ``(chunk, n_hidden)`` array; here one
vectorised loop per block of samples computes both with the activation's intermediates in
registers (``g``, ``sigmoid`` and ``softplus`` need a single ``exp(-|z|)``), from branch-free
``exp``/``log1p``/``tanh`` written below so that LLVM can vectorise them; the matrix products
are BLAS calls per block. Results agree with the NumPy path to rounding (about 1e-14 relative
on the gradient); the summation order inside a block differs. The activations run one thread,
like the rest of the engine (one student per core).

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
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

if TYPE_CHECKING:
    from ecflow.engines.native.derivatives import Architecture

__all__ = ["ENABLED", "KERNEL_ACTIVATIONS", "hidden_values", "loss_grad", "sum_sq_residuals"]

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

_jit = numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")
# Elementwise helpers are inlined in numba's IR: LLVM's inliner gives up on the larger
# activations, and a call in a loop keeps that loop scalar.
_inline = numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")


# --- elementary functions, branch-free so that LLVM vectorises the loops that call them ----------
# libm's exp and log1p are scalar calls, which keep every activation loop scalar (NumPy's ufuncs
# and XLA use SIMD versions). These are the textbook reductions with Taylor polynomials, exact to
# about 2 ulp on the ranges used here, in plain arithmetic plus two bit casts. The polynomials
# are evaluated by Estrin's scheme: Horner's chain of dependent multiply-adds left the vector
# loop waiting on latency.


@intrinsic
def _float_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, n):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k · _LN2_HI is exact (fdlibm)
_LN2_LO = 1.90821492927058770002e-10
_ROUND = 6755399441055744.0  # 1.5 · 2^52: adding it rounds to an integer kept in the low bits
_ROUND_BITS = 0x4338000000000000
_SQRT2_M1 = 0.41421356237309503
_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(15))
_ATANH_TAYLOR = tuple(1.0 / (2 * n + 1) for n in range(11))


@_inline
def _exp_neg(x):
    """``exp(x)`` for ``x <= 0`` (NaN stays NaN): ``x = k ln2 + r``, ``|r| <= ln2 / 2``, Taylor
    degree 13 for ``exp(r)`` (truncation below 2e-17), times ``2^k`` built from its bits.
    Below -708 the result stays at ``exp(-708) ≈ 3e-308`` instead of going subnormal."""
    x = -708.0 if x < -708.0 else x
    kr = x * _LOG2E + _ROUND
    k = kr - _ROUND
    r = (x - k * _LN2_HI) - k * _LN2_LO
    c = _EXP_TAYLOR
    r2 = r * r
    r4 = r2 * r2
    p = (
        ((c[0] + c[1] * r) + (c[2] + c[3] * r) * r2)
        + ((c[4] + c[5] * r) + (c[6] + c[7] * r) * r2) * r4
        + (((c[8] + c[9] * r) + (c[10] + c[11] * r) * r2) + (c[12] + c[13] * r) * r4) * (r4 * r4)
    )
    return p * _bits_float((_float_bits(kr) - _ROUND_BITS + 1023) << 52)


@_inline
def _log1p_unit(e):
    """``log(1 + e)`` for ``0 <= e <= 1``: ``2 atanh(t / (2 + t))`` with ``t = e``, or
    ``ln 2 + log1p(t)`` with ``t = (e - 1) / 2`` above ``√2 - 1``; either way
    ``|s| = |t / (2 + t)| <= 0.1716`` and the series in ``s²`` is truncated below 1e-17."""
    big = e > _SQRT2_M1
    t = (e - 1.0) * 0.5 if big else e
    s = t / (2.0 + t)
    w = s * s
    c = _ATANH_TAYLOR
    w2 = w * w
    w4 = w2 * w2
    p = (
        ((c[0] + c[1] * w) + (c[2] + c[3] * w) * w2)
        + ((c[4] + c[5] * w) + (c[6] + c[7] * w) * w2) * w4
        + ((c[8] + c[9] * w) + c[10] * w2) * (w4 * w4)
    )
    return 2.0 * s * p + (_LN2 if big else 0.0)


# --- activations: (σ(z), σ'(z)) from one exp(-|z|) where the function allows ---------------------
# The formulas match the ufunc kernels of ecflow.activations to a few ulp: softplus is
# max(z, 0) + log1p(e), the logistic is 1/(1 + e) or e/(1 + e), and its derivative e/(1 + e)²
# (exact where s(1 - s) cancels).


@_inline
def _g(z):
    e = _exp_neg(-abs(z))
    p = 1.0 / (1.0 + e)
    e4 = (e * e) * (e * e)  # exp(-4|z|) to a few ulp, without a second exp
    q = 1.0 / (1.0 + e4)
    s = p if z >= 0.0 else e * p
    s4 = q if z >= 0.0 else e4 * q
    return max(z, 0.0) + _log1p_unit(e) + s4, s + 4.0 * (e4 * q * q)


@_inline
def _sigmoid(z):
    e = _exp_neg(-abs(z))
    p = 1.0 / (1.0 + e)
    return (p if z >= 0.0 else e * p), e * p * p


@_inline
def _softplus(z):
    e = _exp_neg(-abs(z))
    p = 1.0 / (1.0 + e)
    return max(z, 0.0) + _log1p_unit(e), (p if z >= 0.0 else e * p)


@_inline
def _expm1_small(w):
    """``exp(w) - 1`` for ``|w| <= 1/2``: Taylor degree 14 (truncation below 5e-17 relative)."""
    c = _EXP_TAYLOR
    w2 = w * w
    w4 = w2 * w2
    p = (
        ((c[1] + c[2] * w) + (c[3] + c[4] * w) * w2)
        + ((c[5] + c[6] * w) + (c[7] + c[8] * w) * w2) * w4
        + (((c[9] + c[10] * w) + (c[11] + c[12] * w) * w2) + (c[13] + c[14] * w) * w4) * (w4 * w4)
    )
    return p * w


@_inline
def _tanh(z):
    # tanh|z| = -m / (2 + m) with m = expm1(-2|z|); below |z| = 1/4 the series keeps m
    # accurate where exp(-2|z|) - 1 would cancel.
    w = -2.0 * abs(z)
    m = _expm1_small(w) if w > -0.5 else _exp_neg(w) - 1.0
    t = -m / (2.0 + m)
    t = t if z >= 0.0 else -t
    return t, 1.0 - t * t


@_inline
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
                F[s, i] = _tanh(Z[s, i] + b[i])[0]
    else:
        for s in range(m):
            for i in range(n_hidden):
                F[s, i] = max(Z[s, i] + b[i], 0.0)


# --- loss and gradient ---------------------------------------------------------------------------


@_jit
def _residuals(Y, c, y, scale, R):
    """``R = scale · (Y + c - y)`` for one block; returns ``|Y + c - y|²``."""
    m, d_out = Y.shape
    sse = 0.0
    for s in range(m):
        for k in range(d_out):
            r = Y[s, k] + c[k] - y[s, k]
            sse += r * r
            R[s, k] = scale * r
    return sse


@_jit
def _loss_grad_shallow(kind, theta, x, y, n_hidden, block, grad):
    """``|r|²`` returned, ``∇L`` written into ``grad`` (n_params,), zeroed by the caller.

    Per block of samples: ``Z = x Wᵀ`` (BLAS), ``F = σ(Z + b)`` and ``D = σ'(Z + b)`` in one
    loop, ``ŷ = F Aᵀ + c``, then ``ρ``, ``δ = (ρ A) ⊙ D`` and the four gradient blocks, all
    products by BLAS so that every elementwise loop is a vector loop.
    """
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
    gb = np.zeros(n_hidden)
    gA = np.zeros((d_out, n_hidden))
    gc = np.zeros(d_out)
    scale = 2.0 / (n * d_out)
    Z = np.empty((block, n_hidden))
    F = np.empty((block, n_hidden))
    D = np.empty((block, n_hidden))
    Y = np.empty((block, d_out))
    R = np.empty((block, d_out))
    sse = 0.0
    for start in range(0, n, block):
        m = min(block, n - start)
        xb = x[start : start + m]
        Zb, Fb, Db, Rb = Z[:m], F[:m], D[:m], R[:m]
        np.dot(xb, W.T, Zb)
        _activate(kind, Zb, b, Fb, Db)
        np.dot(Fb, A.T, Y[:m])
        sse += _residuals(Y[:m], c, y[start : start + m], scale, Rb)
        gA += np.dot(Rb.T, Fb)
        for s in range(m):
            for k in range(d_out):
                gc[k] += Rb[s, k]
        np.dot(Rb, A, Zb)  # Zb is free again: it now holds ρ A
        for s in range(m):
            for i in range(n_hidden):
                Db[s, i] *= Zb[s, i]
                gb[i] += Db[s, i]
        gW += np.dot(Db.T, xb)
    grad[:n_w] = gW.ravel()
    grad[n_w:o_a] = gb
    grad[o_a:o_c] = gA.ravel()
    grad[o_c:] = gc
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
    Y = np.empty((block, d_out))
    R = np.empty((block, d_out))
    sse = 0.0
    for start in range(0, n, block):
        m = min(block, n - start)
        np.dot(x[start : start + m], W.T, Z[:m])
        _value(kind, Z[:m], b, F[:m])
        np.dot(F[:m], A.T, Y[:m])
        sse += _residuals(Y[:m], c, y[start : start + m], 1.0, R[:m])
    return sse


@_jit
def _hidden_shallow(kind, theta, x, n_hidden, block, out):
    """``out = σ(x Wᵀ + b)`` (n_samples, n_hidden), the forward half before the output layer."""
    n, d_in = x.shape
    n_w = n_hidden * d_in
    W = theta[:n_w].reshape((n_hidden, d_in))
    b = theta[n_w : n_w + n_hidden]
    Z = np.empty((block, n_hidden))
    for start in range(0, n, block):
        m = min(block, n - start)
        np.dot(x[start : start + m], W.T, Z[:m])
        _value(kind, Z[:m], b, out[start : start + m])


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


def hidden_values(arch: Architecture, theta: np.ndarray, x: np.ndarray) -> np.ndarray | None:
    """The hidden activations ``σ(x Wᵀ + b)`` ((n_samples, n_hidden), float64) by the compiled
    kernel, or None when ``arch`` has none (shapes as :func:`loss_grad`; the output layer's
    entries of ``theta`` are not read)."""
    kind = _kind(arch)
    if kind is None:
        return None
    out = np.empty((x.shape[0], arch.sizes[1]))
    _hidden_shallow(
        kind, np.ascontiguousarray(theta, dtype=np.float64), np.ascontiguousarray(x),
        arch.sizes[1], _BLOCK_ROWS, out,
    )
    return out
