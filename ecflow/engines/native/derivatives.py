"""Exact derivatives of the MSE loss of an MLP: residuals, Jacobian, gradient, Hessian.

Notation (for one network with ``L`` layers, ``l = 0 .. L-1``)::

    h_0 = x,   z_l = h_l W_l^T + b_l,   h_{l+1} = σ_l(z_l),   ŷ = h_L
    r = vec(ŷ - y)                       residuals, length n_samples · d_out (sample-major)
    L(θ) = |r|² / (n_samples · d_out)    the MSE loss
    J = ∂r/∂θ                            residual Jacobian, (n_samples · d_out, n_params)
    ∇L = 2 Jᵀ r / (n_samples · d_out)
    ∇²L = 2 (JᵀJ + Σ_{s,k} r_{s,k} ∇²ŷ_{s,k}) / (n_samples · d_out)

``θ`` is :meth:`ecflow.networks.MLP.flatten` (per layer ``W_l`` row-major, then ``b_l``), so the
columns of ``J`` and the rows of ``∇L`` follow that order.

Each activation kernel returns ``(σ, σ', σ'')`` in one pass (:class:`~ecflow.activations.Activation`),
so one forward pass serves every derivative. The Jacobian is built by reverse mode, one sweep
per output (``d_out`` sweeps). The second-order term ``Σ r ∇²ŷ`` is the Hessian of
``F(θ) = Σ_{s,k} c_{s,k} ŷ_{s,k}`` with ``c = r`` held fixed; it is computed exactly by
forward-over-reverse differentiation carrying all ``n_params`` tangent directions at once for a
chunk of samples (Pearlmutter's R-operator, vectorised over directions), so every product is a
BLAS call on a ``(neurons, samples · directions)`` matrix. Its cost is ``O(n_samples ·
n_params · Σ n_l)`` like that of ``JᵀJ``; samples are processed in chunks so memory stays
bounded.

The public functions validate their inputs; the ``_``-prefixed kernels trust them (they are
called thousands of times per training).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from ecflow.activations import Activation
from ecflow.networks import MLP, check_xy

__all__ = [
    "Architecture",
    "residuals",
    "loss",
    "loss_and_gradient",
    "residual_jacobian",
    "hessian",
    "jacobian_qr",
]

_BYTES = 8
# Working-set target of one chunk of samples (Jacobian rows or Hessian tangents): large enough
# that BLAS calls are efficient, small enough to stay in a modest share of memory.
_CHUNK_BYTES = 48 * 2**20
_HESSIAN_ROWS_SHALLOW = 2048
_TPQRT_BLOCK = 32
"""Block size of the triangular-pentagonal QR (LAPACK's usual 32-64)."""
_CACHE_ROWS = 2048
"""Samples per chunk of the loss and gradient sweeps: elementwise activation kernels run 1.5-2x
faster on arrays that stay in cache than on full 30k-sample arrays."""


@dataclass(frozen=True, eq=False)
class Architecture:
    """Layer sizes, activations and flat-parameter offsets of an MLP.

    Attributes
    ----------
    sizes : tuple of int
        ``(d_in, n_1, ..., d_out)``.
    activations : tuple of Activation
        One per layer.
    offsets : tuple of int
        ``offsets[l]`` is where layer ``l``'s block starts in ``θ``; ``offsets[-1] = n_params``.
    """

    sizes: tuple[int, ...]
    activations: tuple[Activation, ...]
    offsets: tuple[int, ...]

    @classmethod
    def of(cls, network: MLP) -> Architecture:
        sizes = network.sizes
        offs = [0]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            offs.append(offs[-1] + n_out * n_in + n_out)
        return cls(tuple(sizes), network.activations, tuple(offs))

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        return self.offsets[-1]

    @property
    def d_out(self) -> int:
        return self.sizes[-1]

    def unpack(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``[(W_l (n_out, n_in), b_l (n_out,)), ...]`` into ``theta`` (no copies)."""
        params = []
        for l in range(self.n_layers):
            n_in, n_out, o = self.sizes[l], self.sizes[l + 1], self.offsets[l]
            params.append(
                (theta[o : o + n_out * n_in].reshape(n_out, n_in), theta[o + n_out * n_in : o + n_out * (n_in + 1)])
            )
        return params


# --- private kernels (trust their inputs) --------------------------------------------------------


def _forward(arch: Architecture, params, x: np.ndarray):
    """Hidden values ``h_0 .. h_L`` and ``σ'(z_l)``, ``σ''(z_l)`` per layer, each (m, n)."""
    hs, dfs, d2fs = [x], [], []
    for (W, b), act in zip(params, arch.activations):
        z = hs[-1] @ W.T
        z += b
        f, df, d2f = act.fused(z)
        hs.append(f)
        dfs.append(df)
        d2fs.append(d2f)
    return hs, dfs, d2fs


def _predict(arch: Architecture, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    h = x
    for (W, b), act in zip(arch.unpack(theta), arch.activations):
        z = h @ W.T
        z += b
        h = act.fused(z)[0]
    return h


@functools.cache
def _compiled():
    """:mod:`.kernels`, imported on first use (numba's import takes about a second), or None
    where numba is missing: the NumPy path then serves every architecture."""
    try:
        from ecflow.engines.native import kernels
    except ImportError:
        return None
    return kernels


def _sum_sq_residuals(arch: Architecture, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """``|r|²`` (the loss times ``n_samples · d_out``); one hidden layer takes the compiled
    kernel of :mod:`.kernels` where there is one."""
    kernels = _compiled()
    total = None if kernels is None else kernels.sum_sq_residuals(arch, theta, x, y)
    if total is not None:
        return total
    total = 0.0
    for start in range(0, x.shape[0], _CACHE_ROWS):
        r = _predict(arch, theta, x[start : start + _CACHE_ROWS])
        r -= y[start : start + _CACHE_ROWS]
        total += float(np.vdot(r, r))
    return total


def _loss_grad(arch: Architecture, theta: np.ndarray, x: np.ndarray, y: np.ndarray):
    """``(L, ∇L)`` by one forward and one reverse sweep (in cache-sized chunks of samples);
    one hidden layer takes the fused compiled kernel of :mod:`.kernels` where there is one."""
    kernels = _compiled()
    fused = None if kernels is None else kernels.loss_grad(arch, theta, x, y)
    if fused is not None:
        return fused
    params = arch.unpack(theta)
    n_res = y.size
    scale = 2.0 / n_res
    sse = 0.0
    grad = np.zeros(arch.n_params)
    for start in range(0, x.shape[0], _CACHE_ROWS):
        hs, dfs, _ = _forward(arch, params, x[start : start + _CACHE_ROWS])
        r = hs[-1] - y[start : start + _CACHE_ROWS]
        sse += float(np.vdot(r, r))
        delta = r * dfs[-1]
        delta *= scale
        for l in range(arch.n_layers - 1, -1, -1):
            W = params[l][0]
            o, n_w = arch.offsets[l], W.size
            grad[o : o + n_w] += (delta.T @ hs[l]).ravel()
            grad[o + n_w : arch.offsets[l + 1]] += delta.sum(axis=0)
            if l > 0:
                delta = delta @ W
                delta *= dfs[l - 1]
    return sse / n_res, grad


def _jacobian_into(arch: Architecture, params, hs, dfs, out: np.ndarray) -> None:
    """Write ``∂ŷ/∂θ`` for a chunk of samples into ``out`` (m, d_out, n_params), reverse mode."""
    m = hs[0].shape[0]
    for k in range(arch.d_out):
        g = np.zeros((m, arch.d_out))
        g[:, k] = dfs[-1][:, k]
        for l in range(arch.n_layers - 1, -1, -1):
            W = params[l][0]
            o, n_w = arch.offsets[l], W.size
            out[:, k, o : o + n_w] = (g[:, :, None] * hs[l][:, None, :]).reshape(m, n_w)
            out[:, k, o + n_w : arch.offsets[l + 1]] = g
            if l > 0:
                g = g @ W
                g *= dfs[l - 1]


def _hessian_row_bytes(arch: Architecture) -> int:
    """Working memory per sample of the Hessian kernels: the Jacobian rows for one hidden layer,
    the P-direction tangents of every layer otherwise."""
    P = arch.n_params
    if arch.n_layers == 2:
        d_in, n_hidden, d_out = arch.sizes
        return _BYTES * (3 * d_out * P + 4 * n_hidden * (d_in + 2))
    width = sum(arch.sizes[1:]) + arch.sizes[-2]
    return _BYTES * 3 * width * P


def _hessian_rows(arch: Architecture) -> int:
    """Samples per chunk of the Hessian: about ``_CHUNK_BYTES`` of working memory, and for one
    hidden layer at most a cache-friendly ``_HESSIAN_ROWS_SHALLOW``."""
    rows = max(1, int(_CHUNK_BYTES // _hessian_row_bytes(arch)))
    return min(rows, _HESSIAN_ROWS_SHALLOW) if arch.n_layers == 2 else rows


def _triangular_factor(A: np.ndarray) -> np.ndarray:
    """``R`` ((min(rows, cols), cols)) of ``A = Q R`` by LAPACK ``dgeqrf`` (Q is never formed)."""
    qr, _, _, info = scipy.linalg.lapack.dgeqrf(np.asfortranarray(A), overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dgeqrf failed with info = {info}")
    return np.triu(qr[: min(A.shape)])


def _jacobian_chunks(arch: Architecture, theta, x, y, chunk: int, deadline=None):
    """Yield ``(J_c, r_c)`` for consecutive chunks of ``chunk`` samples: the Jacobian rows
    ((m · d_out, P), C order, the order reverse mode produces them) and the residuals
    ((m · d_out,)). Yields None, and stops, when ``deadline()`` turns true between chunks."""
    params = arch.unpack(theta)
    n, d, P = x.shape[0], arch.d_out, arch.n_params
    for start in range(0, n, chunk):
        if deadline is not None and start > 0 and deadline():
            yield None
            return
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        m = xs.shape[0]
        hs, dfs, _ = _forward(arch, params, xs)
        J = np.empty((m, d, P))
        _jacobian_into(arch, params, hs, dfs, J)
        yield J.reshape(m * d, P), (hs[-1] - ys).ravel()


def _jacobian_qr(
    arch: Architecture,
    theta: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    chunk: int,
    deadline=None,
    columns: np.ndarray | None = None,
) -> np.ndarray | None:
    """Triangular factor ``R`` ((P+1, P+1)) of ``[J | r] = Q R``, built chunk by chunk.

    Each chunk's rows ``[J_c | r_c]`` are stacked under the running ``R`` and the stack is
    re-factorised, so memory is ``O(P²)`` plus one chunk and ``JᵀJ`` is never formed.
    Returns None if ``deadline()`` turns true between chunks.

    ``columns`` (int array of shape (P_free + 1,), increasing, ending with ``P``) keeps only
    those columns of ``[J | r]`` (the free parameters and the residual, when others are
    frozen); ``R`` is then (P_free+1, P_free+1).
    """
    P = arch.n_params
    keep = None if columns is None else columns[:-1]
    n_cols = P + 1 if columns is None else columns.size
    R = None
    for part in _jacobian_chunks(arch, theta, x, y, chunk, deadline):
        if part is None:
            return None
        J, r = part
        A = np.empty((J.shape[0], n_cols))
        A[:, :-1] = J if keep is None else J[:, keep]
        A[:, -1] = r
        if R is None:
            R = _triangular_factor(A)
            if R.shape[0] < n_cols:  # zero rows keep R triangular and RᵀR unchanged
                R = np.vstack([R, np.zeros((n_cols - R.shape[0], n_cols))])
        else:
            R = _stack_factor(R, A)
    return R


def _jacobian_normal(
    arch: Architecture,
    theta: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    chunk: int,
    deadline=None,
    columns: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``(JᵀJ, Jᵀr, |r|²)`` accumulated chunk by chunk (``JᵀJ`` is (P, P), ``Jᵀr`` (P,)).

    One GEMM per chunk: about a sixth of the time of :func:`_jacobian_qr` on the same rows,
    at the price of squaring the condition number, so it serves only far from zero loss.
    Returns None if ``deadline()`` turns true between chunks. ``columns`` (int array of shape
    (P_free,)) keeps only those columns of ``J`` (the free parameters): ``JᵀJ`` is then
    (P_free, P_free) and ``Jᵀr`` (P_free,).
    """
    n_cols = arch.n_params if columns is None else columns.size
    G = np.zeros((n_cols, n_cols))
    g = np.zeros(n_cols)
    sse = 0.0
    for part in _jacobian_chunks(arch, theta, x, y, chunk, deadline):
        if part is None:
            return None
        J, r = part
        if columns is not None:
            J = J[:, columns]
        G += J.T @ J
        g += J.T @ r
        sse += float(r @ r)
    return G, g, sse


def _stack_factor(R: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``R'`` of ``[R; A] = Q R'`` for upper-triangular ``R`` by LAPACK ``dtpqrt``, which skips
    the zeros below ``R``'s diagonal (``2 rows(A) n²`` flops instead of ``2 (rows(A) + n) n²``)."""
    n = R.shape[1]
    a, _, _, info = scipy.linalg.lapack.dtpqrt(
        0, min(n, _TPQRT_BLOCK), np.asfortranarray(R), np.asfortranarray(A),
        overwrite_a=1, overwrite_b=1,
    )
    if info != 0:
        raise np.linalg.LinAlgError(f"dtpqrt failed with info = {info}")
    return np.triu(a)


def _hessian(
    arch: Architecture, theta: np.ndarray, x: np.ndarray, y: np.ndarray, chunk: int | None = None
) -> np.ndarray:
    """Exact ``∇²L`` ((P, P)): ``2 (JᵀJ + Σ r ∇²ŷ) / (n_samples · d_out)``, chunked over samples."""
    P = arch.n_params
    n = x.shape[0]
    shallow = arch.n_layers == 2
    if chunk is None:
        chunk = _hessian_rows(arch)
    H = np.zeros((P, P))
    params = arch.unpack(theta)
    kernel = _hessian_chunk_shallow if shallow else _hessian_chunk
    for start in range(0, n, chunk):
        kernel(arch, params, x[start : start + chunk], y[start : start + chunk], H)
    H += H.T
    H *= 1.0 / (n * arch.d_out)  # (H + Hᵀ) carries the factor 2 of ∇²L
    return H


def _hessian_chunk_shallow(arch: Architecture, params, x, y, H: np.ndarray) -> None:
    """:func:`_hessian_chunk` for one hidden layer, from the closed form of ``Σ r ∇²ŷ``.

    With ``x̃ = [x, 1]``, hidden neuron ``i`` with input weights ``w̃_i = [W_i, b_i]``, output
    ``ŷ_k = ψ(u_k)``, ``u = h Aᵀ + c``, ``e = r ψ'(u)`` and ``q = r ψ''(u)``, the second-order
    term ``F = Σ_{s,k} r_{s,k} ŷ_{s,k}`` has the blocks

    * ``∂²F/∂A_ki ∂w̃_i``  = Σ_s e_sk σ'(z_si) x̃_s                      (same neuron only)
    * ``∂²F/∂w̃_i ∂w̃_i``   = Σ_s (e A)_si σ''(z_si) x̃_s x̃_sᵀ             (block diagonal)
    * ``Σ_k J_ukᵀ diag(q_k) J_uk``  with ``J_uk = ∂u_k/∂θ``                (zero for identity ψ)

    so only ``JᵀJ`` costs ``O(n_samples · n_params²)``; the rest is ``O(n_samples · n_hidden ·
    d_in²)``, far below the general forward-over-reverse sweep.
    """
    (W, _), (A, _) = params
    d_in, n_hidden, d_out = arch.sizes
    o1 = arch.offsets[1]
    hs, dfs, d2fs = _forward(arch, params, x)
    m = x.shape[0]
    r = hs[-1] - y
    xt = np.empty((m, d_in + 1))
    xt[:, :d_in] = x
    xt[:, d_in] = 1.0
    # flat index of w̃_ij (j = d_in is the bias) and of [A_k, c_k]
    i = np.arange(n_hidden)[:, None]
    widx = np.hstack([i * d_in + np.arange(d_in)[None, :], n_hidden * d_in + i])

    J = np.empty((m, d_out, arch.n_params))
    _jacobian_into(arch, params, hs, dfs, J)
    J = J.reshape(m * d_out, -1)
    H += J.T @ J

    e = r * dfs[-1]
    q = r * d2fs[-1]
    sig1, sig2 = dfs[0], d2fs[0]
    for k in range(d_out):
        # factor 2: this block is added on one side only, and the caller forms H + Hᵀ
        rows = o1 + k * n_hidden + np.arange(n_hidden)
        H[rows[:, None], widx] += 2.0 * ((e[:, k : k + 1] * sig1).T @ xt)
        if np.any(q[:, k]):
            Ju = np.zeros((m, arch.n_params))
            Ju[:, rows] = hs[1]
            Ju[:, o1 + d_out * n_hidden + k] = 1.0
            g = sig1 * A[k]
            Ju[:, : n_hidden * d_in] = (g[:, :, None] * x[:, None, :]).reshape(m, -1)
            Ju[:, n_hidden * d_in : o1] = g
            H += Ju.T @ (q[:, k : k + 1] * Ju)
    beta = (e @ A) * sig2
    blocks = ((beta[:, :, None] * xt[:, None, :]).reshape(m, -1).T @ xt).reshape(
        n_hidden, d_in + 1, d_in + 1
    )
    H[widx[:, :, None], widx[:, None, :]] += blocks


def _hessian_chunk(arch: Architecture, params, x, y, H: np.ndarray) -> None:
    """Add ``(JᵀJ + Σ r ∇²ŷ) / 2`` of a chunk of samples to ``H``, up to transposition.

    Both terms are symmetric; the caller forms ``H + Hᵀ``, which symmetrises rounding, so each
    term is added once here (the factor 2 of ``∇²L`` comes from that sum).
    """
    L, sizes, offs = arch.n_layers, arch.sizes, arch.offsets
    hs, dfs, d2fs = _forward(arch, params, x)
    m = x.shape[0]
    r = hs[-1] - y

    # Forward tangents Z_l[i, s, p] = ∂z_l[s, i]/∂θ_p for every direction p; z_l depends only on
    # layers <= l, so Z_l keeps the first offsets[l+1] directions. Layout (neuron, sample,
    # direction) turns the propagation through W into one GEMM.
    Zs = []
    Hdot = None  # ∂h_l/∂θ, (n_l, m, offsets[l])
    for l in range(L):
        W = params[l][0]
        n_in, n_out, o, E = sizes[l], sizes[l + 1], offs[l], offs[l + 1]
        Z = np.zeros((n_out, m, E))
        if l > 0:
            Z[:, :, :o] = (W @ Hdot.reshape(n_in, -1)).reshape(n_out, m, o)
        ii = np.arange(n_out)[:, None]
        jj = np.arange(n_in)[None, :]
        Z[ii, :, o + ii * n_in + jj] += hs[l].T[None, :, :]
        Z[np.arange(n_out), :, o + n_out * n_in + np.arange(n_out)] += 1.0
        Zs.append(Z)
        Hdot = dfs[l].T[:, :, None] * Z

    J = Hdot.reshape(arch.d_out * m, arch.n_params)  # rows (k, s): order is irrelevant for JᵀJ
    H += J.T @ J

    # Reverse sweep of F = Σ r ŷ (r fixed) and its tangents: delta_l = ∂F/∂z_l (m, n_out),
    # Ddot_l[i, s, p] = ∂delta_l[s, i]/∂θ_p over all P directions.
    delta = r * dfs[-1]
    Ddot = (r * d2fs[-1]).T[:, :, None] * Zs[-1]
    for l in range(L - 1, -1, -1):
        W = params[l][0]
        n_in, n_out, o, E = sizes[l], sizes[l + 1], offs[l], offs[l + 1]
        n_w = n_out * n_in
        # ∂(∂F/∂W_l[i,j])/∂θ = Σ_s Ddot_l[i,s,:] h_l[s,j] + delta_l[s,i] ∂h_l[s,j]/∂θ
        rows_w = np.matmul(Ddot.transpose(0, 2, 1), hs[l])  # (n_out, P, n_in)
        H[o : o + n_w] += rows_w.transpose(0, 2, 1).reshape(n_w, -1)
        if l > 0:
            Hd = (dfs[l - 1].T[:, :, None] * Zs[l - 1]).transpose(1, 0, 2).reshape(m, n_in * o)
            H[o : o + n_w, :o] += (delta.T @ Hd).reshape(n_w, o)
        H[o + n_w : E] += Ddot.sum(axis=1)
        if l > 0:
            u = delta @ W  # (m, n_in)
            D = (W.T @ Ddot.reshape(n_out, -1)).reshape(n_in, m, -1)
            ii = np.arange(n_out)[:, None]
            jj = np.arange(n_in)[None, :]
            # direct dependence of u on W_l: ∂u[s,j]/∂W_l[i,j] = delta_l[s,i]
            D[jj, :, o + ii * n_in + jj] += delta.T[ii, :]
            D *= dfs[l - 1].T[:, :, None]
            D[:, :, :o] += (u * d2fs[l - 1]).T[:, :, None] * Zs[l - 1]
            Ddot = D
            delta = u * dfs[l - 1]


# --- validation ----------------------------------------------------------------------------------


def _check(network: MLP, x, y) -> tuple[Architecture, np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(network, MLP):
        raise TypeError(f"network must be an MLP, got {type(network).__name__}")
    x, y = check_xy(x, y)
    if x.shape[1] != network.d_in or y.shape[1] != network.d_out:
        raise ValueError(
            f"pairs x {x.shape}, y {y.shape} do not match the network "
            f"{network.d_in} -> {network.d_out}"
        )
    return Architecture.of(network), network.flatten(), x, y


# --- public entry points -------------------------------------------------------------------------


def residuals(network: MLP, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Residuals ``r = vec(f(x) - y)``.

    Parameters
    ----------
    network : MLP
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64

    Returns
    -------
    r : ndarray of shape (n_samples * d_out,), float64
        Sample-major: ``r[s * d_out + k] = f(x_s)_k - y_{s,k}``.
    """
    arch, theta, x, y = _check(network, x, y)
    return (_predict(arch, theta, x) - y).ravel()


def loss(network: MLP, x: np.ndarray, y: np.ndarray) -> float:
    """MSE ``L = |r|² / (n_samples · d_out)`` (see :func:`residuals` for the shapes)."""
    arch, theta, x, y = _check(network, x, y)
    return _sum_sq_residuals(arch, theta, x, y) / y.size


def loss_and_gradient(network: MLP, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """MSE and its gradient ``∇L = 2 Jᵀr / (n_samples · d_out)``.

    Returns
    -------
    loss : float
    grad : ndarray of shape (n_params,), float64
        In :meth:`MLP.flatten` order.
    """
    arch, theta, x, y = _check(network, x, y)
    return _loss_grad(arch, theta, x, y)


def residual_jacobian(network: MLP, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals and their Jacobian.

    Returns
    -------
    r : ndarray of shape (n_samples * d_out,), float64
    J : ndarray of shape (n_samples * d_out, n_params), float64
        ``J[s * d_out + k, p] = ∂f(x_s)_k / ∂θ_p``.
    """
    arch, theta, x, y = _check(network, x, y)
    params = arch.unpack(theta)
    hs, dfs, _ = _forward(arch, params, x)
    J = np.empty((x.shape[0], arch.d_out, arch.n_params))
    _jacobian_into(arch, params, hs, dfs, J)
    return (hs[-1] - y).ravel(), J.reshape(-1, arch.n_params)


def hessian(network: MLP, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact Hessian of the MSE, ``2 (JᵀJ + Σ_{s,k} r_{s,k} ∇²f(x_s)_k) / (n_samples · d_out)``.

    Returns
    -------
    H : ndarray of shape (n_params, n_params), float64, symmetric
    """
    arch, theta, x, y = _check(network, x, y)
    return _hessian(arch, theta, x, y)


def jacobian_qr(network: MLP, x: np.ndarray, y: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """Upper-triangular ``R`` of ``[J | r] = Q R``, built in chunks of ``chunk`` samples.

    Returns
    -------
    R : ndarray of shape (n_params + 1, n_params + 1), float64
        ``R[:P, :P]ᵀ R[:P, :P] = JᵀJ`` and ``R[:P, :P]ᵀ R[:P, P] = Jᵀr``.
    """
    arch, theta, x, y = _check(network, x, y)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    return _jacobian_qr(arch, theta, x, y, int(chunk))
