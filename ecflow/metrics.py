"""How well a recovered network matches its data and its teacher.

* :func:`rms` and :func:`rmse` — the root mean square of an array, and the root mean squared
  error of a network on pairs ``(x, y)``; every RMSE of the package is one of these two.
* :func:`cosine_distances` — between neurons ``v = [w, b]`` of two hidden layers,
  ``1 - cos(u, v)`` for an activation without symmetry and ``1 - |cos(u, v)|`` for the classes
  where a neuron and its sign flip are equivalent (paper section 4). Computed as
  ``‖û ∓ v̂‖² / 2``, which keeps full relative precision near 0 (``1 - cos`` in floating point
  cannot go below about 1e-16 and is off by that much, which matters against a 1e-8 target).
* :func:`match_vectors` and :func:`match_neurons` — a one-to-one matching of teacher to
  recovered neurons minimising the total cosine distance (Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment``), on neuron vectors or on networks.
* :func:`revealed_basis` — what query inputs reveal of a neuron: when ``[x, 1]`` has a lower
  numerical rank than ``d_in + 1`` (images whose border pixels never vary), weights along the
  unseen directions never affect an output and keep their random initial values, so neurons
  are compared through their pre-activations over the queries (:class:`DataBasis`).

This module depends only on ``activations`` and ``networks``, so every later stage (clustering,
reconstruction, symmetry, recovery) measures with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ecflow.activations import Symmetry
from ecflow.errors import InputError
from ecflow.networks import MLP, Layer, check_array, check_xy

__all__ = [
    "rms",
    "rmse",
    "cosine_distances",
    "NeuronMatch",
    "match_vectors",
    "match_neurons",
    "max_distance_of",
    "DataBasis",
    "revealed_basis",
]


def rms(values: np.ndarray) -> float:
    """Root mean square ``sqrt(mean(values²))`` over all entries (trusts its input).

    Parameters
    ----------
    values : ndarray of any shape, float64
    """
    values = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(values * values)))


def rmse(network: MLP, x: np.ndarray, y: np.ndarray) -> float:
    """Root mean squared error ``sqrt(mean((f(x) - y)²))`` over samples and outputs.

    Parameters
    ----------
    network : MLP
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    """
    x, y = check_xy(x, y)
    if y.shape[1] != network.d_out:
        raise InputError(f"y must have d_out = {network.d_out} columns, got shape {y.shape}")
    return rms(network.forward(x) - y)


def max_distance_of(symmetry: Symmetry) -> float:
    """Largest possible cosine distance: 2 (opposite vectors) without symmetry, else 1."""
    return Symmetry(symmetry).max_cosine_distance


def cosine_distances(a: np.ndarray, b: np.ndarray, symmetry: Symmetry) -> np.ndarray:
    """Pairwise cosine distances between rows of ``a`` and ``b`` (module docstring).

    Parameters
    ----------
    a : ndarray of shape (n_a, p), float64
    b : ndarray of shape (n_b, p), float64
    symmetry : Symmetry
        Sign-invariant (``1 - |cos|``) unless ``Symmetry.NONE`` (``1 - cos``).

    Returns
    -------
    ndarray of shape (n_a, n_b), float64
        A zero row or column (no direction) is at the largest distance of its class from
        everything.
    """
    a = check_array(a, "a", ndim=2)
    b = check_array(b, "b", ndim=2)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"a and b must have the same width, got {a.shape} and {b.shape}")
    symmetry = Symmetry(symmetry)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    ua = np.divide(a, na[:, None], out=np.zeros_like(a), where=na[:, None] > 0)
    ub = np.divide(b, nb[:, None], out=np.zeros_like(b), where=nb[:, None] > 0)
    diff = ua[:, None, :] - ub[None, :, :]
    d = 0.5 * np.sum(diff * diff, axis=2)
    if symmetry.sign_invariant:
        summ = ua[:, None, :] + ub[None, :, :]
        d = np.minimum(d, 0.5 * np.sum(summ * summ, axis=2))
    worst = max_distance_of(symmetry)
    d[na == 0, :] = worst
    d[:, nb == 0] = worst
    return d


@dataclass(frozen=True, eq=False)
class NeuronMatch:
    """One-to-one matching of teacher neurons to recovered neurons.

    Attributes
    ----------
    teacher : ndarray of shape (n_matched,), int
        Teacher neuron indices.
    recovered : ndarray of shape (n_matched,), int
        Matched recovered neuron index for each entry of ``teacher``.
    distances : ndarray of shape (n_matched,), float64
        Cosine distance of each matched pair.
    unmatched_teacher : tuple of int
        Teacher neurons without a partner (the recovered layer is narrower).
    unmatched_recovered : tuple of int
        Recovered neurons without a partner (the recovered layer is wider).
    max_distance : float
        Largest distance over teacher neurons; an unmatched teacher neuron counts as the
        largest possible distance of the class (:func:`max_distance_of`).
    """

    teacher: np.ndarray
    recovered: np.ndarray
    distances: np.ndarray
    unmatched_teacher: tuple[int, ...]
    unmatched_recovered: tuple[int, ...]
    max_distance: float

    @property
    def complete(self) -> bool:
        """Every teacher neuron matched and no recovered neuron left over."""
        return not self.unmatched_teacher and not self.unmatched_recovered


@dataclass(frozen=True, eq=False)
class DataBasis:
    """The directions of ``[w, b]`` that query inputs reveal: ``[x, 1] = U diag(s) Vᵀ``.

    Attributes
    ----------
    v : ndarray of shape (d_in + 1, rank), float64
        Orthonormal basis of the row space of ``[x, 1]``.
    s : ndarray of shape (rank,), float64
        Its singular values.
    """

    v: np.ndarray
    s: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.s.size)

    def coordinates(self, vectors: np.ndarray) -> np.ndarray:
        """Neurons ``[w, b]`` (n, d_in + 1) -> (n, rank): their pre-activations over the queries
        in the orthonormal basis ``U``, so that norms and angles are those of the
        pre-activations ``[x, 1] [w, b]ᵀ`` (in rank dimensions instead of n_samples)."""
        return (vectors @ self.v) * self.s

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """The revealed part of neurons ``[w, b]`` (n, d_in + 1): the minimum-norm vectors with
        the same pre-activations over the queries."""
        return (vectors @ self.v) @ self.v.T

    def project_network(self, net: MLP) -> MLP:
        """``net`` with its first layer replaced by its revealed part (same outputs on the
        queries, up to the singular values cut as numerically zero)."""
        hid = net.layers[0]
        p = self.project(_neurons(net))
        layer = Layer(p[:, :-1].copy(), p[:, -1].copy(), hid.activation)
        return MLP((layer, *net.layers[1:]))


def revealed_basis(x: np.ndarray) -> DataBasis | None:
    """The directions of ``[w, b]`` that the inputs ``x`` reveal, when they do not reveal all.

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in), float64

    Returns
    -------
    DataBasis or None
        None when ``[x, 1]`` has full numerical rank ``d_in + 1`` (every direction is seen,
        e.g. uniform synthetic queries): raw ``[w, b]`` are identifiable and used as they are.
        The rank cut is NumPy's ``matrix_rank`` default, ``s_max · max(shape) · eps``.
    """
    x = check_array(x, "x", ndim=2)
    a = np.hstack([x, np.ones((x.shape[0], 1))])
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    keep = s > s[0] * max(a.shape) * np.finfo(np.float64).eps
    if keep.all():
        return None
    return DataBasis(v=vt[keep].T.copy(), s=s[keep].copy())


def _neurons(net: MLP) -> np.ndarray:
    layer = net.layers[0]
    return np.hstack([layer.weight, layer.bias[:, None]])


def match_vectors(teacher: np.ndarray, recovered: np.ndarray, symmetry: Symmetry) -> NeuronMatch:
    """Match rows of ``teacher`` to rows of ``recovered`` one-to-one by cosine distance.

    Minimises the summed :func:`cosine_distances` over one-to-one assignments (Hungarian
    algorithm).

    Parameters
    ----------
    teacher : ndarray of shape (n_teacher, p), float64
        Teacher neurons ``[w, b]``.
    recovered : ndarray of shape (n_recovered, p), float64
        Recovered neurons ``[w, b]``.
    symmetry : Symmetry
        The class of the hidden activation (sign-invariant distance unless ``NONE``).

    Returns
    -------
    NeuronMatch
    """
    sym = Symmetry(symmetry)
    d = cosine_distances(teacher, recovered, sym)
    rows, cols = linear_sum_assignment(d)
    dist = d[rows, cols]
    n_t, n_r = d.shape
    un_t = tuple(sorted(set(range(n_t)) - set(rows.tolist())))
    un_r = tuple(sorted(set(range(n_r)) - set(cols.tolist())))
    worst = float(dist.max()) if dist.size else 0.0
    if un_t:
        worst = max_distance_of(sym)
    return NeuronMatch(
        teacher=rows,
        recovered=cols,
        distances=dist,
        unmatched_teacher=un_t,
        unmatched_recovered=un_r,
        max_distance=worst,
    )


def match_neurons(recovered: MLP, teacher: MLP, basis: DataBasis | None = None) -> NeuronMatch:
    """Match the first hidden layer of ``recovered`` to that of ``teacher``.

    :func:`match_vectors` on the ``[w, b]`` rows, with the symmetry class of the teacher's
    hidden activation; with ``basis`` (:func:`revealed_basis` of the queries) on their
    pre-activations over the queries instead, the only part of a neuron the data determines.

    Raises
    ------
    InputError
        Networks without a hidden layer, or of different input dimension.
    """
    for name, net in (("recovered", recovered), ("teacher", teacher)):
        if len(net.layers) < 2:
            raise InputError(f"{name} network has no hidden layer")
    if recovered.d_in != teacher.d_in:
        raise InputError(
            f"recovered has d_in = {recovered.d_in}, teacher has d_in = {teacher.d_in}"
        )
    sym = teacher.layers[0].activation.symmetry
    t, r = _neurons(teacher), _neurons(recovered)
    if basis is not None:
        t, r = basis.coordinates(t), basis.coordinates(r)
    return match_vectors(t, r, sym)
