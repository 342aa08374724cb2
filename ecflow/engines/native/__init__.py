"""The native Float64 engine (NumPy/SciPy): exact derivatives, Levenberg–Marquardt from a
chunked Jacobian QR + SVD, gradient flow with a stiff implicit solver, and scipy optimizers.

Modules: :mod:`.derivatives` (loss, gradient, Jacobian, Hessian), :mod:`.levenberg_marquardt`,
:mod:`.gradient_flow`, :mod:`.quasi_newton` (trust-exact, BFGS, L-BFGS), :mod:`.engine`
(:class:`NativeEngine` and the schedules), :mod:`.problem` (shared plumbing).
"""

from ecflow.engines.native.derivatives import (
    Architecture,
    hessian,
    jacobian_qr,
    loss,
    loss_and_gradient,
    residual_jacobian,
    residuals,
)
from ecflow.engines.native.engine import NativeEngine

__all__ = [
    "Architecture",
    "NativeEngine",
    "hessian",
    "jacobian_qr",
    "loss",
    "loss_and_gradient",
    "residual_jacobian",
    "residuals",
]
