"""Activation functions with their first and second derivatives and symmetry class.

Every activation of the network file spec (``docs/formats.md``) is an :class:`Activation`:
a frozen record holding a *fused* kernel that returns ``(f(z), f'(z), f''(z))`` in one pass,
reusing the forward value (``sigmoid'(z) = s(1 - s)``), in the style of MLPGradientFlow.jl.
All kernels are Float64 and overflow-free for ``|z|`` up to at least 1e3.

Symmetry classes follow section 4 and appendix A.2 of Martinelli et al. (ICML 2024):

============================  =============================================  ==========================
class                         identity used by the recovery                  activations
============================  =============================================  ==========================
``NONE``                      none                                           g, selu, mish
``ODD``                       ``σ(-z) = -σ(z)``                              tanh
``ODD_CONSTANT``              ``σ(-z) = 2 c0 - σ(z)``, ``c0 = σ(0)``         sigmoid
``EVEN_LINEAR``               ``σ(-z) = σ(z) - 2 c1 z``                      softplus, gelu, silu
``EVEN_LINEAR_SCALING``       the above and ``σ(c z) = c σ(z)`` for c > 0    relu, leaky_relu, identity
============================  =============================================  ==========================

The class of each activation is *derived* numerically by :func:`derive_symmetry` and the
declared value is checked against it in the tests.

**The compensation algebra.** The identities above are the one place where the package says
what a flipped or rescaled neuron does to the rest of the network; clustering, reconstruction
and the symmetry reduction all call them. A neuron ``v_i = s_i λ_i v`` (sign ``s_i``, positive
scale ``λ_i``, ``z = v·[x, 1]``) with output weight ``a_i`` contributes

============================  ===================================================================
class                         ``a_i σ(s_i λ_i z)`` written on ``σ(z)``
============================  ===================================================================
``NONE``                      ``s_i = λ_i = 1``: ``a_i σ(z)``
``ODD``                       ``s_i a_i σ(z)``
``ODD_CONSTANT``              ``s_i a_i σ(z) + [s_i = -1] 2 c0 a_i`` (a constant for the next bias)
``EVEN_LINEAR``               ``a_i σ(z) - [s_i = -1] 2 c1 a_i z`` (a linear remainder)
``EVEN_LINEAR_SCALING``       as even+linear with ``a_i`` replaced by ``λ_i a_i``
============================  ===================================================================

:meth:`Activation.output_weight` gives the first part, :meth:`Activation.compensate` all three
parts summed over the members of a group of duplicates.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from ecflow.errors import InputError, InputTypeError

__all__ = [
    "Activation",
    "Compensation",
    "Symmetry",
    "ACTIVATIONS",
    "get_activation",
    "derive_symmetry",
]


class Symmetry(enum.Enum):
    """Symmetry class of an activation function (paper section 4, appendix A.2.3)."""

    NONE = "none"
    ODD = "odd"
    ODD_CONSTANT = "odd+constant"
    EVEN_LINEAR = "even+linear"
    EVEN_LINEAR_SCALING = "even+linear+positive-scaling"

    @property
    def sign_invariant(self) -> bool:
        """Whether a neuron ``(w, b)`` can be replaced by ``(-w, -b)`` with compensation."""
        return self is not Symmetry.NONE

    @property
    def scale_invariant(self) -> bool:
        """Whether a positive factor moves freely between input and output weights."""
        return self is Symmetry.EVEN_LINEAR_SCALING

    @property
    def flip_negates_output(self) -> bool:
        """Whether a flipped neuron keeps its function with a negated output weight (odd)."""
        return self in (Symmetry.ODD, Symmetry.ODD_CONSTANT)

    @property
    def flip_leaves_constant(self) -> bool:
        """Whether a flip leaves the constant ``2 c0 a`` for the next bias (odd+constant)."""
        return self is Symmetry.ODD_CONSTANT

    @property
    def flip_leaves_linear(self) -> bool:
        """Whether a flip leaves the linear term ``-2 c1 a z`` (the even+linear classes)."""
        return self in (Symmetry.EVEN_LINEAR, Symmetry.EVEN_LINEAR_SCALING)

    @property
    def max_cosine_distance(self) -> float:
        """Largest cosine distance between two neurons: 2 (opposite vectors) without sign
        symmetry, else 1 (a neuron and its flip are one)."""
        return 1.0 if self.sign_invariant else 2.0

    def signs(self, vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Sign ``s_i`` that brings each neuron to the orientation of ``reference``.

        Parameters
        ----------
        vectors : ndarray of shape (k, p), float64
            Neurons ``v_i = [w_i, b_i]``.
        reference : ndarray of shape (p,), float64

        Returns
        -------
        ndarray of shape (k,), int
            ``-1`` where ``v_i · reference < 0`` and the class is sign-invariant, else ``+1``.
        """
        if not self.sign_invariant:
            return np.ones(vectors.shape[0], dtype=int)
        return np.where(vectors @ reference < 0.0, -1, 1)


@dataclass(frozen=True, eq=False)
class Compensation:
    """What a group of neurons ``v_i = s_i λ_i v`` contributes once merged into ``σ(v·[x, 1])``.

    Attributes
    ----------
    output_weight : ndarray of shape (n_next,), float64
        Output weight of the merged neuron.
    bias : ndarray of shape (n_next,), float64
        Constant left by flipped members (odd+constant), for the next layer's bias.
    linear : ndarray of shape (n_next, p), float64
        Linear term ``Θ̃`` on ``[x, 1]`` left by flipped members (even+linear): the group
        computes ``output_weight σ(z) + bias + Θ̃ [x, 1]``.
    """

    output_weight: np.ndarray
    bias: np.ndarray
    linear: np.ndarray


Fused = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Activation:
    """An activation function, its derivatives and its symmetry class.

    Parameters
    ----------
    name : str
        Name as written in network files (``"g"``, ``"tanh"``, ...).
    fused : callable
        ``fused(z) -> (f, df, d2f)``, each an ndarray of the shape of ``z``, float64.
    symmetry : Symmetry
        Symmetry class (paper appendix A.2.3).
    c0 : float
        ``σ(0)``: the constant moved into the next bias when an odd+constant neuron flips sign.
    c1 : float
        Slope of the linear part, ``(σ(z) - σ(-z)) / (2z)``, for the even+linear classes
        (0.0 otherwise).
    """

    name: str
    fused: Fused
    symmetry: Symmetry
    c0: float = 0.0
    c1: float = 0.0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.fused(np.asarray(z, dtype=np.float64))[0]

    def f(self, z: np.ndarray) -> np.ndarray:
        """Value ``σ(z)``, same shape as ``z``, float64."""
        return self(z)

    def df(self, z: np.ndarray) -> np.ndarray:
        """First derivative ``σ'(z)``, same shape as ``z``, float64."""
        return self.fused(np.asarray(z, dtype=np.float64))[1]

    def d2f(self, z: np.ndarray) -> np.ndarray:
        """Second derivative ``σ''(z)``, same shape as ``z``, float64."""
        return self.fused(np.asarray(z, dtype=np.float64))[2]

    def output_weight(self, a: np.ndarray, sign, scale) -> np.ndarray:
        """Output weight on ``σ(z)`` of the term ``a σ(sign · scale · z)`` (module docstring).

        Parameters
        ----------
        a : ndarray of shape (n_next,) or (n_next, k), float64
            Output weights, one column per neuron.
        sign : int or ndarray of shape (k,)
            ``±1`` for each neuron.
        scale : float or ndarray of shape (k,)
            Positive factor for each neuron (used only by the scale-invariant class).

        Returns
        -------
        ndarray of the shape of ``a``, float64
        """
        sym = self.symmetry
        a = a * scale if sym.scale_invariant else a
        return a * sign if sym.flip_negates_output else a

    def compensate(
        self, a: np.ndarray, signs: np.ndarray, scales: np.ndarray, v: np.ndarray
    ) -> Compensation:
        """Merge neurons ``v_i = s_i λ_i v`` into one neuron ``v`` (module docstring table).

        Parameters
        ----------
        a : ndarray of shape (n_next, k), float64
            Output weights of the members.
        signs : ndarray of shape (k,), int
            ``s_i`` relative to ``v``.
        scales : ndarray of shape (k,), float64
            ``λ_i > 0`` (1 unless the class is scale-invariant).
        v : ndarray of shape (p,), float64
            The kept neuron ``[w, b]``.

        Returns
        -------
        Compensation
        """
        signs = np.asarray(signs)
        out_w = self.output_weight(a, signs, scales).sum(axis=1)
        bias = np.zeros(a.shape[0])
        linear = np.zeros((a.shape[0], v.shape[0]))
        flipped = signs < 0
        if flipped.any():
            a_flip = self.output_weight(a[:, flipped], 1, scales[flipped]).sum(axis=1)
            if self.symmetry.flip_leaves_constant:
                bias = 2.0 * self.c0 * a_flip
            elif self.symmetry.flip_leaves_linear:
                linear = -2.0 * self.c1 * np.outer(a_flip, v)
        return Compensation(out_w, bias, linear)

    def __repr__(self) -> str:
        return f"Activation({self.name!r}, {self.symmetry.value})"


# --- fused kernels -------------------------------------------------------------------------------
# Each reuses the forward value and shared intermediates; `expit`/`logaddexp` keep |z| ~ 1e3 finite.


def _sigmoid(z):
    s = special.expit(z)
    ds = s * (1.0 - s)
    return s, ds, ds * (1.0 - 2.0 * s)


def _softplus(z):
    s = special.expit(z)
    return np.logaddexp(0.0, z), s, s * (1.0 - s)


def _g(z):
    # g(z) = softplus(z) + sigmoid(4z), the paper's asymmetric activation.
    s = special.expit(z)
    s4 = special.expit(4.0 * z)
    ds4 = s4 * (1.0 - s4)
    f = np.logaddexp(0.0, z) + s4
    df = s + 4.0 * ds4
    d2f = s * (1.0 - s) + 16.0 * ds4 * (1.0 - 2.0 * s4)
    return f, df, d2f


def _tanh(z):
    t = np.tanh(z)
    dt = 1.0 - t * t
    return t, dt, -2.0 * t * dt


def _relu(z):
    pos = z > 0.0
    return np.where(pos, z, 0.0), pos.astype(np.float64), np.zeros_like(z)


_LEAKY_SLOPE = 0.01


def _leaky_relu(z):
    pos = z > 0.0
    return (
        np.where(pos, z, _LEAKY_SLOPE * z),
        np.where(pos, 1.0, _LEAKY_SLOPE),
        np.zeros_like(z),
    )


_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _gelu(z):
    cdf = special.ndtr(z)
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * z * z)
    return z * cdf, cdf + z * pdf, pdf * (2.0 - z * z)


def _silu(z):
    s = special.expit(z)
    ds = s * (1.0 - s)
    return z * s, s + z * ds, ds * (2.0 + z * (1.0 - 2.0 * s))


# Klambauer et al. (2017) constants, to the digits used by PyTorch and Flux.
_SELU_LAMBDA = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


def _selu(z):
    pos = z > 0.0
    e = np.exp(np.minimum(z, 0.0))
    la = _SELU_LAMBDA * _SELU_ALPHA
    return (
        np.where(pos, _SELU_LAMBDA * z, la * (e - 1.0)),
        np.where(pos, _SELU_LAMBDA, la * e),
        np.where(pos, 0.0, la * e),
    )


def _mish(z):
    # mish(z) = z tanh(softplus(z)); d/dz tanh(softplus(z)) = (1 - t^2) s.
    s = special.expit(z)
    t = np.tanh(np.logaddexp(0.0, z))
    u = (1.0 - t * t) * s
    return z * t, t + z * u, u * (2.0 + z * (1.0 - s - 2.0 * t * s))


def _identity(z):
    return z.copy(), np.ones_like(z), np.zeros_like(z)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("g", _g, Symmetry.NONE),
        Activation("sigmoid", _sigmoid, Symmetry.ODD_CONSTANT, c0=0.5),
        Activation("tanh", _tanh, Symmetry.ODD),
        Activation("softplus", _softplus, Symmetry.EVEN_LINEAR, c0=np.log(2.0), c1=0.5),
        Activation("relu", _relu, Symmetry.EVEN_LINEAR_SCALING, c1=0.5),
        Activation(
            "leaky_relu", _leaky_relu, Symmetry.EVEN_LINEAR_SCALING, c1=0.5 * (1.0 + _LEAKY_SLOPE)
        ),
        Activation("gelu", _gelu, Symmetry.EVEN_LINEAR, c1=0.5),
        Activation("silu", _silu, Symmetry.EVEN_LINEAR, c1=0.5),
        Activation("selu", _selu, Symmetry.NONE),
        Activation("mish", _mish, Symmetry.NONE),
        Activation("identity", _identity, Symmetry.EVEN_LINEAR_SCALING, c1=1.0),
    )
}
"""All activations of the network file spec, by name."""


def get_activation(name: str | Activation) -> Activation:
    """Look up an activation by its file name.

    Parameters
    ----------
    name : str or Activation
        One of ``ACTIVATIONS`` (an ``Activation`` is returned unchanged).

    Raises
    ------
    ValueError
        If the name is not a known activation; the message lists the known ones.
    """
    if isinstance(name, Activation):
        return name
    if not isinstance(name, str):
        raise InputTypeError(f"activation must be a string, got {type(name).__name__}")
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(ACTIVATIONS)
        raise InputError(f"unknown activation {name!r}; expected one of: {known}") from None


def derive_symmetry(f: Callable[[np.ndarray], np.ndarray], *, rtol: float = 1e-10) -> Symmetry:
    """Derive the symmetry class of ``f`` by testing its defining identities on a grid.

    The tests, from the richest class down: positive homogeneity with an even+linear
    decomposition (``f(cz) = c f(z)``, ``f(z) - f(-z) = 2 c1 z``); even+linear; odd
    (``f(-z) = -f(z)``); odd+constant (``f(z) + f(-z) = 2 f(0)``). Otherwise ``NONE``.

    Parameters
    ----------
    f : callable
        Vectorised scalar function, float64 in and out.
    rtol : float, default=1e-10
        Tolerance relative to ``max |f|`` on the grid.
    """
    z = np.linspace(-6.0, 6.0, 1201)
    z = z[z != 0.0]
    fz, fm = f(z), f(-z)
    scale = max(1.0, float(np.max(np.abs(fz))))

    def close(a, b):
        return bool(np.max(np.abs(a - b)) <= rtol * scale)

    diff = fz - fm
    c1 = float(np.median(diff / (2.0 * z)))
    even_linear = close(diff, 2.0 * c1 * z) and abs(c1) > rtol
    homogeneous = all(close(f(c * z), c * fz) for c in (0.3, 2.0, 7.5))
    if even_linear and homogeneous:
        return Symmetry.EVEN_LINEAR_SCALING
    if even_linear:
        return Symmetry.EVEN_LINEAR
    if close(fm, -fz):
        return Symmetry.ODD
    f0 = float(f(np.zeros(1))[0])
    if close(fz + fm, 2.0 * f0 * np.ones_like(z)):
        return Symmetry.ODD_CONSTANT
    return Symmetry.NONE
