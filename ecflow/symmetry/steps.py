"""The student → minimal network mapping replayed step by step, as in the panels of Fig. A.6.

Each step removes or merges hidden neurons ("units", each standing for some student neurons).
What a step removes is affine on the domain (that is what the neuron types mean), so its
contribution is moved into ``Θ x + β`` by an affine least-squares fit on the domain points,
exact to rounding: the student's function is ``network(x) + x Θ^T`` at every step. The steps
share a :class:`_Replay` state, which each takes and returns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ecflow.errors import InputError
from ecflow.networks import MLP, check_array
from ecflow.symmetry.reduce import domain_points
from ecflow.symmetry.types import (
    NeuronClass,
    NeuronType,
    ReductionResult,
    ReductionStep,
    SymmetryConfig,
)

__all__ = ["reduction_steps"]


@dataclass(frozen=True, eq=False)
class _Unit:
    v: np.ndarray  # [w, b]
    a: np.ndarray  # (d_out,)
    sources: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class _Replay:
    """State shared by the steps: the units left, Θ and β so far, and the steps recorded."""

    result: ReductionResult
    X1: np.ndarray  # (n, d + 1) domain points with a column of ones
    units: tuple[_Unit, ...]
    bias: np.ndarray
    theta: np.ndarray
    steps: tuple[ReductionStep, ...] = ()

    @property
    def types(self) -> list[NeuronClass]:
        return [n for n in self.result.neurons if n.layer == 0]

    def contribution(self, units) -> np.ndarray:
        student = self.result.student
        if not units:
            return np.zeros((self.X1.shape[0], student.d_out))
        V = np.stack([u.v for u in units])
        A = np.stack([u.a for u in units], axis=1)
        return student.layers[0].activation(self.X1 @ V.T) @ A.T

    def replace(self, old, new) -> _Replay:
        """Units ``old`` become ``new`` (in place of the first of ``old``); the difference of
        their contributions moves into Θ and β."""
        d = self.theta.shape[1]
        diff = self.contribution(old) - self.contribution(new)
        coef, *_ = np.linalg.lstsq(self.X1, diff, rcond=None)
        units = list(self.units)
        if old:
            pos = units.index(old[0])
            units = [u for u in units if u not in old]
            units[pos:pos] = list(new)
        return dataclasses.replace(
            self, units=tuple(units), theta=self.theta + coef[:d].T, bias=self.bias + coef[d]
        )

    def record(self, name: str, description: str, changed=()) -> _Replay:
        student = self.result.student
        act, d = student.layers[0].activation, student.d_in
        if self.units:
            W = np.stack([u.v[:d] for u in self.units])
            b = np.array([u.v[d] for u in self.units])
            A = np.stack([u.a for u in self.units], axis=1)
        else:  # layers cannot be empty: one neuron with zero output weight
            W, b, A = np.zeros((1, d)), np.zeros(1), np.zeros((student.d_out, 1))
        net = MLP.from_arrays([W, A], [b, self.bias.copy()], [act, "identity"])
        ids = {id(u) for u in changed}
        step = ReductionStep(
            name, description, net, self.theta.copy(),
            tuple(u.sources for u in self.units),
            tuple(k for k, u in enumerate(self.units) if id(u) in ids),
        )
        return dataclasses.replace(self, steps=self.steps + (step,))


def _merge_same_orientation(r: _Replay) -> _Replay:
    """Duplicates of one orientation: one neuron, output weights summed (scales moved in)."""
    types, student = r.types, r.result.student
    As, V = student.layers[1].weight, np.hstack([student.layers[0].weight,
                                                 student.layers[0].bias[:, None]])
    by_key: dict[tuple, list[int]] = {}
    for n in types:
        if n.cluster is not None and not n.note.collective:
            by_key.setdefault((n.cluster, n.sign), []).append(n.index)
    merged = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        first = members[0]
        a = sum(As[:, i] * types[i].scale for i in members) / types[first].scale
        new = _Unit(V[first].copy(), a, tuple(members))
        r = r.replace([u for u in r.units if u.sources[0] in members], [new])
        merged.append(new)
    return r.record("merge duplicates", "duplicates of the same orientation merged: output "
                    "weights summed (relu: positive scales moved into the output weight)", merged)


def _remove(r: _Replay, pred, name: str, description: str) -> _Replay:
    types = r.types
    old = [u for u in r.units if all(pred(types[i]) for i in u.sources)]
    return r.replace(old, []).record(name, description)


def _is_constant_or_off_bound(n: NeuronClass) -> bool:
    off_bound = n.type is NeuronType.CANCELLED and n.cluster is None
    return n.type is NeuronType.CONSTANT or off_bound or n.note.collective


def _merge_opposite(r: _Replay) -> _Replay:
    """Opposite duplicates: one neuron in the pre-flip orientation plus a linear term."""
    types, student = r.types, r.result.student
    act, As = student.layers[0].activation, student.layers[1].weight
    red = r.result.network.layers[0]
    kept_rows = np.hstack([red.weight, red.bias[:, None]])
    flipped = set(r.result.layers[0].flipped)
    changed = []
    for g in range(r.result.layers[0].n_after):
        old = [u for u in r.units if types[u.sources[0]].type is NeuronType.NEURON
               and types[u.sources[0]].group == g]
        if len(old) < 2:
            continue
        o = -1 if g in flipped else 1
        members = [i for u in old for i in u.sources]
        signs = np.array([types[i].sign * o for i in members])
        scales = np.array([types[i].scale for i in members])
        a = act.output_weight(As[:, members], signs, scales).sum(axis=1)
        new = _Unit(o * kept_rows[g], a, tuple(sorted(members)))
        r = r.replace(old, [new])
        changed.append(new)
    linear = [u for u in r.units if all(types[i].type is NeuronType.CANCELLED for i in u.sources)]
    return r.replace(linear, []).record(
        "merge opposite duplicates", "neurons sharing a hyperplane with opposite vectors "
        "merged into one neuron plus a linear term; linear-type groups into Θx", changed)


def _flip_signs(r: _Replay) -> _Replay:
    """The flips that cancel Θ."""
    types, red = r.types, r.result.network
    kept_rows = np.hstack([red.layers[0].weight, red.layers[0].bias[:, None]])
    flipped = set(r.result.layers[0].flipped)
    changed = []
    for u in r.units:
        g = types[u.sources[0]].group
        if g in flipped:
            new = _Unit(kept_rows[g].copy(), red.layers[1].weight[:, g].copy(), u.sources)
            r = r.replace([u], [new])
            changed.append(new)
    return r.record("flip signs", "vectors opposite to the kept orientation flipped, adding a "
                    "linear term; Θ now vanishes for an exact reduction", changed)


def reduction_steps(
    result: ReductionResult,
    x: np.ndarray | None = None,
    *,
    config: SymmetryConfig | None = None,
) -> tuple[ReductionStep, ...]:
    """Replay a one-hidden-layer reduction step by step (paper Fig. A.6).

    Steps: the student; merge duplicates of the same orientation (output weights summed,
    positive scales moved into them); remove zero types; remove constant and off-bound
    neurons; merge opposite (linear) duplicates and drop linear-type groups; flip the signs
    chosen to cancel Θ.

    Parameters
    ----------
    result : ReductionResult
        From :func:`~ecflow.symmetry.reduce.reduce_network` on a one-hidden-layer student.
    x : ndarray of shape (n_samples, d_in), float64, optional
        Domain points. Default: the default domain of ``config``
        (:func:`~ecflow.symmetry.reduce.domain_points`).
    config : SymmetryConfig, optional
        Only its domain (``n_verify``, ``half_width``, ``seed``) is used, for ``x=None``.

    Returns
    -------
    tuple of ReductionStep

    Raises
    ------
    InputError
        A student that is not one-hidden-layer, or ``x`` of the wrong width.
    """
    student = result.student
    if len(student.layers) != 2:
        raise InputError(f"reduction_steps needs a one-hidden-layer student, got {student.sizes}")
    d = student.d_in
    if x is None:
        X = domain_points(SymmetryConfig() if config is None else config, d)
    else:
        X = check_array(x, "x", ndim=2)
    if X.shape[1] != d:
        raise InputError(f"x must have d_in = {d} columns, got shape {X.shape}")
    V = np.hstack([student.layers[0].weight, student.layers[0].bias[:, None]])
    As = student.layers[1].weight
    r = _Replay(
        result,
        np.hstack([X, np.ones((X.shape[0], 1))]),
        tuple(_Unit(V[i].copy(), As[:, i].copy(), (i,)) for i in range(V.shape[0])),
        student.layers[1].bias.copy(),
        np.zeros((student.d_out, d)),
    )
    r = _merge_same_orientation(r.record("student", "the zero-loss student"))
    r = _remove(r, lambda n: n.type is NeuronType.ZERO, "remove zero types",
                "neurons and groups with zero output weight removed")
    r = _remove(r, _is_constant_or_off_bound, "remove constants and off-bounds",
                "constant neurons folded into the bias; off-bound linear neurons into Θx")
    return _flip_signs(_merge_opposite(r)).steps
