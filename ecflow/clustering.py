"""Clustering of the hidden neurons of many students (paper section 5 step 3, appendix A.3).

Every hidden neuron ``j`` of every student is the vector ``v_j = [w_j, b_j]`` of shape
``(d_in + 1,)``. Neurons that replicate a teacher neuron sit at the same point in every student
that reached (near) zero loss, while redundant neurons (zero, constant, linear and off-bound
types) land at arbitrary places. Expand-and-Cluster finds the points shared by many students:

1. A distance between neurons that ignores the symmetries of the activation (``S``, below).
2. Average-linkage hierarchical clustering, ``ℓ(A, B) = mean_{i∈A, j∈B} S_ij``.
3. The cut height ``h`` of the dendrogram that maximises the number of *good* clusters, i.e.
   clusters that hold neurons of at least ``γ N`` distinct students (``N`` students) **and** whose
   median within-cluster angle is at most ``β``. The paper maximises the number of big clusters
   only and then drops the unaligned ones; with relu students, whose zero-loss solutions carry
   ``±w`` linear-type pairs at arbitrary hyperplanes, the paper's cut merged those into a teacher
   cluster and lost it, while maximising big-and-aligned clusters kept every teacher neuron.
   Ties go to the lowest height (the tightest clusters).
4. A good cluster absorbs its dendrogram sibling while the sibling's students are mostly new
   to it and the sibling lies within ``β`` of it: these are copies of the same teacher neuron
   by the remaining students, which the lowest maximising cut leaves outside (with
   ``γ <= 1/2`` they can even form a second good cluster, which step 3 rewards), whereas two
   distinct teacher neurons are held by the same students.
5. Clusters that are too small or unaligned are dropped; the others are *kept*.

Distance ``S_ij`` per symmetry class (:class:`~ecflow.activations.Symmetry`):

=========================  =====================================================================
``NONE``                   ``‖v_i - v_j‖``
``ODD``, ``ODD_CONSTANT``, ``min(‖v_i - v_j‖, ‖v_i + v_j‖)``: a neuron and its sign flip are
``EVEN_LINEAR``            the same point. Unlike the paper's canonicalisation by the sign of
                           one coordinate, this does not break when that coordinate is zero
                           or near zero (there, tiny errors send duplicates to opposite signs).
``EVEN_LINEAR_SCALING``    the same on unit vectors ``v / ‖v‖``: direction only, sign-invariant
                           because relu students pair ``±w`` with a linear correction.
=========================  =====================================================================

Angles (the alignment test and the certificates) are between input weight vectors ``w``, as in
the paper: constant-type neurons (``w ≈ 0``, any ``b``) are close in distance but point
anywhere, whereas on ``[w, b]`` they would all line up along the bias axis and pass. They are
sign-invariant for every class but ``NONE``, computed as ``2 arcsin(‖û - v̂‖ / 2)``, which keeps
full relative precision for tiny angles. A zero vector has no direction: its angle to anything is
90°.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import cdist, squareform

from ecflow._checks import check_in_range
from ecflow.activations import Symmetry
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP, check_array

__all__ = [
    "CLUSTER_COUNTS",
    "ClusterConfig",
    "Cluster",
    "ClusterResult",
    "neuron_vectors",
    "neuron_distances",
    "neuron_angles_deg",
    "cluster_neurons",
]


CLUSTER_COUNTS = ("students", "neurons")
"""What a cluster's size counts (:attr:`ClusterConfig.counts`)."""


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of the clustering phase.

    Parameters
    ----------
    gamma : float, default=0.5
        A cluster is big when it holds neurons of at least ``gamma * n_students`` distinct
        students, ``0 < gamma <= 1``. 0.5 is the paper's value for MNIST (A.6.4); its 0.8 for
        synthetic teachers loses teacher neurons when a few students stall.
    beta_deg : float, default=30.0
        A cluster is aligned when its median within-cluster angle is at most ``beta_deg``
        degrees, ``0 < beta_deg <= 90``. The paper's MNIST value (π/6): loose, so a few
        spurious clusters pass, and pruning removes them afterwards.
    counts : {"students", "neurons"}, default="students"
        What is held against ``gamma * n_students``: the distinct students holding a member,
        or the members themselves, as the paper's ``|κ| ≥ γN`` (A.3), under which a student
        that duplicates a teacher neuron counts once per copy. Students by default: a
        cluster then needs that many students to agree; the paper's count is for reproducing
        its γ = 0.8 on overparameterised students, most of which hold duplicates.
    """

    gamma: float = 0.5
    beta_deg: float = 30.0
    counts: str = "students"

    def __post_init__(self):
        check_in_range(self.gamma, "gamma", 0.0, 1.0)
        check_in_range(self.beta_deg, "beta_deg", 0.0, 90.0, unit=" degrees")
        if self.counts not in CLUSTER_COUNTS:
            raise InputError(
                f"counts must be one of: {', '.join(CLUSTER_COUNTS)}; got {self.counts!r}"
            )


@dataclass(frozen=True, eq=False)
class Cluster:
    """One cluster of the chosen cut.

    Attributes
    ----------
    label : int
        Cluster number (0, 1, ... in order of first member).
    members : ndarray of shape (size,), int
        Indices into the neuron list given to :func:`cluster_neurons`.
    students : tuple of int
        Distinct students holding a member, sorted.
    median_angle_deg, max_angle_deg : float
        Median and maximum angle between the input weights of two members (0 for a single
        member).
    big : bool
        Holds at least ``gamma * n_students`` distinct students (or members, by
        :attr:`ClusterConfig.counts`).
    aligned : bool
        ``median_angle_deg <= beta_deg``.
    """

    label: int
    members: np.ndarray
    students: tuple[int, ...]
    median_angle_deg: float
    max_angle_deg: float
    big: bool
    aligned: bool

    @property
    def size(self) -> int:
        return int(self.members.size)

    @property
    def kept(self) -> bool:
        return self.big and self.aligned

    @property
    def reason(self) -> str:
        """Why the cluster was kept or dropped."""
        if self.kept:
            return "kept"
        if not self.big:
            return "too few students"
        return "unaligned"


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """Outcome of :func:`cluster_neurons`.

    Attributes
    ----------
    labels : ndarray of shape (n_neurons,), int
        Cluster label of each neuron at the chosen cut.
    clusters : tuple of Cluster
        All clusters of the chosen cut, by label.
    height : float
        Chosen cut height; each cluster is a cluster of the cut at this height or the union
        of two split halves (module docstring, step 4).
    heights : ndarray of shape (n_cuts,), float64
        Candidate cut heights, increasing (0 and every distinct merge height).
    n_good : ndarray of shape (n_cuts,), int
        Number of big and aligned clusters at each candidate height.
    linkage : ndarray of shape (n_neurons - 1, 4), float64
        scipy linkage matrix (for the dendrogram); empty ``(0, 4)`` for a single neuron.
    angles_deg : ndarray of shape (n_neurons, n_neurons), float64
        Pairwise angles between the neurons' input weight vectors ``w``.
    symmetry : Symmetry
    n_students : int
    """

    labels: np.ndarray
    clusters: tuple[Cluster, ...]
    height: float
    heights: np.ndarray
    n_good: np.ndarray
    linkage: np.ndarray
    angles_deg: np.ndarray
    symmetry: Symmetry
    n_students: int

    @property
    def kept(self) -> tuple[Cluster, ...]:
        """The big and aligned clusters, in label order."""
        return tuple(c for c in self.clusters if c.kept)


def neuron_vectors(students: Sequence[MLP]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack the first hidden layer's neurons of all students.

    Parameters
    ----------
    students : sequence of MLP
        Networks with the same ``d_in`` and at least one hidden layer.

    Returns
    -------
    vectors : ndarray of shape (n_neurons, d_in + 1), float64
        ``[w_j, b_j]`` per neuron, students one after the other.
    student : ndarray of shape (n_neurons,), int
        Index of the student holding each neuron.
    neuron : ndarray of shape (n_neurons,), int
        Index of the neuron inside its student's hidden layer.
    """
    if len(students) == 0:
        raise InputError("need at least one student")
    d_in = students[0].d_in
    rows, sid, nid = [], [], []
    for s, net in enumerate(students):
        if len(net.layers) < 2:
            raise InputError(f"student {s} has no hidden layer")
        if net.d_in != d_in:
            raise InputError(f"student {s} has d_in = {net.d_in}, student 0 has {d_in}")
        layer = net.layers[0]
        rows.append(np.hstack([layer.weight, layer.bias[:, None]]))
        sid.append(np.full(layer.n_out, s))
        nid.append(np.arange(layer.n_out))
    return np.vstack(rows), np.concatenate(sid), np.concatenate(nid)


def _unit(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def neuron_distances(vectors: np.ndarray, symmetry: Symmetry) -> np.ndarray:
    """Pairwise symmetry-aware distances ``S`` (module docstring).

    Parameters
    ----------
    vectors : ndarray of shape (n_neurons, d_in + 1), float64
    symmetry : Symmetry

    Returns
    -------
    ndarray of shape (n_neurons, n_neurons), float64
        Symmetric, zero diagonal.
    """
    v = check_array(vectors, "vectors", ndim=2)
    symmetry = Symmetry(symmetry)
    if symmetry.scale_invariant:
        v = _unit(v)
    # cdist subtracts before squaring, so distances of 1e-8 between neurons of norm 3 keep
    # their digits (the |u|² + |v|² - 2 u·v form would lose them).
    d = cdist(v, v)
    if symmetry.sign_invariant:
        d = np.minimum(d, cdist(v, -v))
    np.fill_diagonal(d, 0.0)
    return 0.5 * (d + d.T)


def neuron_angles_deg(vectors: np.ndarray, symmetry: Symmetry) -> np.ndarray:
    """Pairwise angles in degrees, sign-invariant unless ``symmetry`` is ``NONE``.

    Parameters
    ----------
    vectors : ndarray of shape (n_neurons, p), float64
        Input weights ``w`` (``p = d_in``) in the clustering, or any vectors.
    symmetry : Symmetry

    Returns
    -------
    ndarray of shape (n_neurons, n_neurons), float64
        In ``[0, 180]`` for ``NONE``, ``[0, 90]`` otherwise; 90 against a zero vector.
    """
    v = check_array(vectors, "vectors", ndim=2)
    symmetry = Symmetry(symmetry)
    u = _unit(v)
    chord = cdist(u, u)
    if symmetry.sign_invariant:
        chord = np.minimum(chord, cdist(u, -u))
    ang = np.degrees(2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)))
    zero = np.linalg.norm(v, axis=1) == 0
    ang[zero, :] = 90.0
    ang[:, zero] = 90.0
    np.fill_diagonal(ang, 0.0)
    return ang


def _median_max_angle(angles: np.ndarray, members: np.ndarray) -> tuple[float, float]:
    if members.size < 2:
        return 0.0, 0.0
    sub = angles[np.ix_(members, members)]
    pairs = sub[np.triu_indices(members.size, k=1)]
    return float(np.median(pairs)), float(np.max(pairs))


def cluster_neurons(
    vectors: np.ndarray,
    student: np.ndarray,
    symmetry: Symmetry,
    *,
    n_students: int | None = None,
    config: ClusterConfig = ClusterConfig(),
    revealed: bool = False,
) -> ClusterResult:
    """Cluster neurons of many students and keep the big, aligned clusters (module docstring).

    Parameters
    ----------
    vectors : ndarray of shape (n_neurons, d_in + 1), float64
        ``[w, b]`` of every hidden neuron (see :func:`neuron_vectors`).
    student : ndarray of shape (n_neurons,), int
        Student index of each neuron.
    symmetry : Symmetry
        Symmetry class of the hidden activation.
    n_students : int, optional
        Number of students ``N`` (default: the number of distinct indices in ``student``;
        give it when some students contributed no neuron).
    config : ClusterConfig
    revealed : bool, default=False
        ``vectors`` are pre-activation coordinates (:meth:`ecflow.metrics.DataBasis.coordinates`)
        rather than ``[w, b]``: the angles are then between whole vectors, since the bias is
        no longer a separate column.

    Returns
    -------
    ClusterResult
    """
    v, sid, n_students = _check_neurons(vectors, student, symmetry, n_students)
    angles = neuron_angles_deg(v if revealed else v[:, :-1], symmetry)
    # A float product like 0.6 * 5 = 2.9999999999999996 must still demand 3 students.
    min_students = math.ceil(config.gamma * n_students - 1e-9)
    size = _size_rule(config.counts)
    tree = _walk_merges(v, sid, angles, symmetry, min_students, config.beta_deg, size)
    best = int(np.argmax(tree.n_good))  # first maximum: the lowest height
    height = float(tree.heights[best])
    cut = [
        k for k in tree.members
        if tree.merge_height[k] <= height
        and (k not in tree.parent or tree.merge_height[tree.parent[k]] > height)
    ]
    nodes = _absorb_siblings(tree, set(cut), sid, angles, config.beta_deg)
    labels, clusters = _label_clusters(tree, nodes, sid, angles, min_students, config.beta_deg,
                                       size)
    return ClusterResult(
        labels=labels,
        clusters=clusters,
        height=height,
        heights=tree.heights,
        n_good=tree.n_good,
        linkage=tree.linkage,
        angles_deg=angles,
        symmetry=symmetry,
        n_students=n_students,
    )


def _check_neurons(vectors, student, symmetry, n_students) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`cluster_neurons`' inputs, checked: the vectors, student indices and ``N``."""
    v = check_array(vectors, "vectors", ndim=2)
    sid = np.asarray(student)
    if sid.shape != (v.shape[0],) or sid.dtype.kind not in "iu":
        raise InputError(
            f"student must be an integer array of shape ({v.shape[0]},), got "
            f"{sid.dtype} {sid.shape}"
        )
    if v.shape[0] == 0:
        raise InputError("need at least one neuron to cluster")
    if not isinstance(symmetry, Symmetry):
        raise InputTypeError(f"symmetry must be a Symmetry, got {type(symmetry).__name__}")
    if n_students is None:
        n_students = int(np.unique(sid).size)
    if isinstance(n_students, bool) or int(n_students) < 1:
        raise InputError(f"n_students must be positive, got {n_students!r}")
    return v, sid, int(n_students)


@dataclass(frozen=True, eq=False)
class _Tree:
    """The dendrogram walked merge by merge: node ``k < n`` is neuron ``k``, node ``n + i`` the
    ``i``-th merge; ``good`` says which nodes are big and aligned, and ``n_good`` counts the good
    clusters of the cut at each of ``heights``."""

    linkage: np.ndarray
    members: dict[int, np.ndarray]
    children: dict[int, tuple[int, int]]
    parent: dict[int, int]
    merge_height: dict[int, float]
    good: dict[int, bool]
    heights: np.ndarray
    n_good: np.ndarray

    def students_of(self, node: int, sid: np.ndarray) -> set[int]:
        return set(sid[self.members[node]].tolist())

    def descendants(self, node: int) -> set[int]:
        out, stack = set(), [node]
        while stack:
            k = stack.pop()
            out.add(k)
            stack.extend(self.children.get(k, ()))
        return out


def _size_rule(counts: str):
    """``size(student_ids_of_members)``: the number held against gamma N."""
    if counts == "neurons":
        return len
    return lambda ids: len(set(ids.tolist()))


def _walk_merges(v, sid, angles, symmetry: Symmetry, min_students: int,
                 beta_deg: float, size=len) -> _Tree:
    """Average linkage of the neurons, walked in order: the forest after the merges at
    heights <= h is the cut at h, and its good clusters are counted at each height."""
    n = v.shape[0]
    if n == 1:
        linkage = np.zeros((0, 4))
    else:
        dist = neuron_distances(v, symmetry)
        linkage = hierarchy.linkage(squareform(dist, checks=False), method="average")
    members: dict[int, np.ndarray] = {k: np.array([k]) for k in range(n)}
    children: dict[int, tuple[int, int]] = {}
    parent: dict[int, int] = {}
    merge_height: dict[int, float] = {k: 0.0 for k in range(n)}

    def is_good(node: int) -> bool:
        m = members[node]
        return (size(sid[m]) >= min_students
                and _median_max_angle(angles, m)[0] <= beta_deg)

    good = {k: is_good(k) for k in range(n)}
    count = sum(good.values())
    heights, n_good = [0.0], [count]
    # Merges within round-off of zero join identical neurons (exact duplicates, rescaled
    # relu copies): they all belong to the cut at 0, else the arg max would pick a cut among
    # heights of 1e-16 that splits identical copies at random.
    scale = float(np.median(np.linalg.norm(v, axis=1))) if n > 1 else 1.0
    if symmetry.scale_invariant or scale == 0.0:
        scale = 1.0
    round_off = 1e-12 * scale
    for i, (a, b, h, _) in enumerate(linkage):
        h = 0.0 if h <= round_off else float(h)
        a, b, node = int(a), int(b), n + i
        members[node] = np.concatenate([members[a], members[b]])
        children[node], parent[a], parent[b] = (a, b), node, node
        merge_height[node] = float(h)
        good[node] = is_good(node)
        count += good[node] - good[a] - good[b]
        last_at_height = i + 1 == len(linkage) or max(linkage[i + 1, 2], round_off) > h
        if last_at_height:
            if h > heights[-1]:
                heights.append(float(h))
                n_good.append(count)
            else:  # merges at height 0 (identical neurons) belong to the cut at 0
                n_good[-1] = count
    return _Tree(linkage, members, children, parent, merge_height, good, np.array(heights),
                 np.array(n_good, dtype=int))


def _absorb_siblings(tree: _Tree, nodes: set[int], sid, angles, beta_deg: float) -> set[int]:
    """The cut's good clusters, each grown over its dendrogram sibling where that is the rest
    of the same teacher neuron.

    The lowest cut with the most good clusters catches each teacher neuron as soon as gamma N
    students agree on it, so the copies of the remaining students, a bit farther out, may still
    hang outside (among them perhaps the best student's); with gamma <= 1/2 those copies can
    even form a second good cluster, which the arg max rewards. A good cluster therefore
    absorbs its sibling while the sibling's students are mostly new to it (two distinct
    teacher neurons are held by the same students) and the sibling lies within beta of it
    (median angle between their members). ``tree.good`` marks the grown clusters good.
    """
    changed = True
    while changed:
        changed = False
        for node in sorted(nodes):
            p = tree.parent.get(node)
            if node not in nodes or p is None or not tree.good[node]:
                continue
            a, b = tree.children[p]
            sib = b if a == node else a
            sa, sb = tree.students_of(node, sid), tree.students_of(sib, sid)
            if len(sa & sb) > 0.5 * min(len(sa), len(sb)):
                continue
            cross = angles[np.ix_(tree.members[node], tree.members[sib])]
            if float(np.median(cross)) > beta_deg:
                continue
            nodes = (nodes - tree.descendants(p)) | {p}
            tree.good[p] = True
            changed = True
    return nodes


def _label_clusters(tree: _Tree, nodes: set[int], sid, angles, min_students: int,
                    beta_deg: float, size=len) -> tuple[np.ndarray, tuple[Cluster, ...]]:
    """Labels 0, 1, ... in order of first member, so that labels do not depend on scipy."""
    groups = sorted((np.sort(tree.members[k]) for k in nodes), key=lambda m: int(m[0]))
    labels = np.empty(angles.shape[0], dtype=int)
    clusters = []
    for lab, m in enumerate(groups):
        labels[m] = lab
        med, mx = _median_max_angle(angles, m)
        studs = tuple(int(s) for s in np.unique(sid[m]))
        clusters.append(Cluster(
            label=lab, members=m, students=studs, median_angle_deg=med, max_angle_deg=mx,
            big=size(sid[m]) >= min_students, aligned=med <= beta_deg,
        ))
    return labels, tuple(clusters)
