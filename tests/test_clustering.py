"""Clustering of student neurons: planted duplicates, sign flips, scalings, zero neurons, the cut."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster import hierarchy

from ecflow.activations import Symmetry
from ecflow.clustering import (
    ClusterConfig,
    cluster_neurons,
    neuron_angles_deg,
    neuron_distances,
    neuron_vectors,
)
from ecflow.networks import MLP

SIGN_CLASSES = [Symmetry.ODD, Symmetry.ODD_CONSTANT, Symmetry.EVEN_LINEAR]


def planted(symmetry, *, n_students=6, n_teacher=4, n_spurious=3, p=4, noise=1e-7, seed=0):
    """Students holding noisy copies of ``n_teacher`` planted neurons plus random ones.

    Copies are sign-flipped at random for sign-invariant classes and scaled by a random
    positive factor for the scaling class. Returns vectors, student ids and planted ids
    (-1 for spurious neurons).
    """
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(n_teacher, p)) * 2.0
    rows, sid, pid = [], [], []
    for s in range(n_students):
        for k in rng.permutation(n_teacher):
            v = teacher[k] + noise * rng.normal(size=p)
            if symmetry.sign_invariant and rng.random() < 0.5:
                v = -v
            if symmetry.scale_invariant:
                v = v * rng.uniform(0.2, 5.0)
            rows.append(v)
            sid.append(s)
            pid.append(k)
        for _ in range(n_spurious):
            rows.append(rng.normal(size=p) * 2.0)
            sid.append(s)
            pid.append(-1)
    return np.array(rows), np.array(sid), np.array(pid)


def assert_recovers_planted(result, pid, n_teacher):
    kept = result.kept
    assert len(kept) == n_teacher
    found = sorted((set(pid[c.members].tolist()) for c in kept), key=sorted)
    assert found == [{k} for k in range(n_teacher)]
    for c in kept:
        assert (pid[c.members] >= 0).all()


@pytest.mark.parametrize("symmetry", list(Symmetry))
def test_planted_clusters_are_found_for_every_class(symmetry):
    v, sid, pid = planted(symmetry)
    # beta = 5°: at 30° a few spurious clusters pass (random directions in 4-D, projectively
    # for the sign classes, are often that close); pruning, not clustering, removes those.
    result = cluster_neurons(v, sid, symmetry, config=ClusterConfig(gamma=0.5, beta_deg=5.0))
    assert_recovers_planted(result, pid, 4)
    for c in result.kept:
        assert len(c.students) == 6
        assert c.median_angle_deg < 1e-4
        assert c.max_angle_deg < 1e-4


def test_halves_of_one_neuron_are_merged_but_distinct_neurons_are_not():
    # Students 0-2 hold copies 1e-12 apart, students 3-5 copies 1e-6 apart: with gamma = 0.5
    # each half is a good cluster at a low cut; they are one neuron.
    rng = np.random.default_rng(5)
    t1 = np.array([3.0, 0.0, 1.0])
    t2 = np.array([3.0, 0.0, 1.6])  # a parallel hyperplane, 11 degrees away
    rows, sid, pid = [], [], []
    for s in range(6):
        eps = 1e-12 if s < 3 else 1e-6
        for k, t in enumerate((t1, t2)):
            rows.append(t + eps * rng.normal(size=3))
            sid.append(s)
            pid.append(k)
    result = cluster_neurons(np.array(rows), np.array(sid), Symmetry.NONE)
    assert_recovers_planted(result, np.array(pid), 2)


def test_sign_flips_split_clusters_without_symmetry():
    # For an activation without symmetry, a neuron and its flip are different functions.
    v, sid, _ = planted(Symmetry.ODD, n_spurious=0)
    result = cluster_neurons(v, sid, Symmetry.NONE, config=ClusterConfig(gamma=0.1))
    assert len(result.kept) > 4


@pytest.mark.parametrize("symmetry", SIGN_CLASSES + [Symmetry.EVEN_LINEAR_SCALING])
@pytest.mark.parametrize("zero_at", range(4))
def test_a_zero_coordinate_does_not_break_the_sign_invariance(symmetry, zero_at):
    # Canonicalising by the sign of one coordinate fails when that coordinate is (near) zero:
    # noise sends copies to either sign. The sign-invariant distance must not care.
    rng = np.random.default_rng(zero_at)
    base = rng.normal(size=4) * 2.0
    base[zero_at] = 0.0
    other = rng.normal(size=4) * 2.0
    rows, sid = [], []
    for s in range(6):
        for vec in (base, other):
            v = vec + 1e-9 * rng.normal(size=4)
            rows.append(v if s % 2 else -v)
            sid.append(s)
    result = cluster_neurons(np.array(rows), np.array(sid), symmetry)
    assert len(result.kept) == 2
    assert all(len(c.students) == 6 and c.size == 6 for c in result.kept)


def test_zero_neurons_are_big_but_unaligned_and_dropped():
    v, sid, pid = planted(Symmetry.NONE, n_spurious=0)
    zeros = np.zeros((6, v.shape[1]))
    v = np.vstack([v, zeros])
    sid = np.concatenate([sid, np.arange(6)])
    pid = np.concatenate([pid, np.full(6, -2)])
    result = cluster_neurons(v, sid, Symmetry.NONE)
    assert_recovers_planted(result, pid, 4)
    zero_clusters = [c for c in result.clusters if (pid[c.members] == -2).all()]
    assert zero_clusters and all(c.reason == "unaligned" for c in zero_clusters)
    assert zero_clusters[0].big


def test_relu_plus_minus_pairs_fall_in_one_cluster():
    # Positive scaling and sign: (w, b), -(w, b), 3 (w, b) are one direction for relu.
    rng = np.random.default_rng(3)
    u = rng.normal(size=5)
    rows = [u, -0.5 * u, 3.0 * u, 0.1 * u, rng.normal(size=5), rng.normal(size=5)]
    sid = np.array([0, 0, 1, 2, 1, 2])
    result = cluster_neurons(np.array(rows), sid, Symmetry.EVEN_LINEAR_SCALING,
                             config=ClusterConfig(gamma=1.0))
    assert len(result.kept) == 1
    assert sorted(result.kept[0].members.tolist()) == [0, 1, 2, 3]


def test_small_clusters_are_dropped_as_too_few_students():
    v, sid, pid = planted(Symmetry.NONE, n_students=4)
    # Neuron 0's copies only in students 0 and 1: with gamma = 0.75 that is too few.
    keep = ~((pid == 0) & (sid >= 2))
    config = ClusterConfig(gamma=0.75, beta_deg=5.0)
    result = cluster_neurons(v[keep], sid[keep], Symmetry.NONE, config=config)
    kept_ids = sorted(set(pid[keep][c.members].tolist()).pop() for c in result.kept)
    assert kept_ids == [1, 2, 3]
    small = [c for c in result.clusters if set(pid[keep][c.members]) == {0}]
    assert small and small[0].reason == "too few students"


def test_chosen_cut_maximises_big_aligned_clusters_and_matches_fcluster():
    v, sid, pid = planted(Symmetry.ODD, noise=1e-3)
    result = cluster_neurons(v, sid, Symmetry.ODD)
    assert_recovers_planted(result, pid, 4)
    assert result.height == result.heights[int(np.argmax(result.n_good))]
    # Every cluster is a union of clusters of scipy's cut at the chosen height.
    raw = hierarchy.fcluster(result.linkage, t=result.height, criterion="distance")
    for c in result.clusters:
        inside = set(raw[c.members].tolist())
        assert set(np.flatnonzero(np.isin(raw, list(inside))).tolist()) == set(c.members.tolist())
    # Recount the good clusters at every candidate height from scratch.
    angles = result.angles_deg
    for h, count in zip(result.heights, result.n_good):
        lab = hierarchy.fcluster(result.linkage, t=h, criterion="distance")
        good = 0
        for c in np.unique(lab):
            m = np.flatnonzero(lab == c)
            if len(set(sid[m])) < 3:
                continue
            med = np.median(angles[np.ix_(m, m)][np.triu_indices(m.size, 1)]) if m.size > 1 else 0
            good += med <= 30.0
        assert good == count


def test_distances_and_angles_keep_precision_for_tiny_differences():
    u = np.array([[3.0, 0.0, 1.0], [3.0, 1e-9, 1.0]])
    d = neuron_distances(u, Symmetry.NONE)
    assert d[0, 1] == pytest.approx(1e-9, rel=1e-6)
    ang = neuron_angles_deg(u, Symmetry.NONE)
    expected = np.degrees(1e-9 / np.sqrt(10.0))  # the difference is orthogonal to u[0]
    assert ang[0, 1] == pytest.approx(expected, rel=1e-3)


def test_angles_against_zero_vector_are_90_degrees():
    ang = neuron_angles_deg(np.array([[0.0, 0.0], [1.0, 2.0]]), Symmetry.ODD)
    assert ang[0, 1] == 90.0 and ang[1, 0] == 90.0 and ang[0, 0] == 0.0


vec = st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=3).filter(
    lambda v: np.linalg.norm(v) > 1e-3
)


@settings(max_examples=40, deadline=None)
@given(st.lists(vec, min_size=2, max_size=5), st.data())
def test_distances_respect_each_class_symmetry(vectors, data):
    v = np.array(vectors)
    n = len(v)
    flips = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)))
    scales = np.array(data.draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n)))
    for sym in SIGN_CLASSES:
        np.testing.assert_allclose(
            neuron_distances(v * flips[:, None], sym), neuron_distances(v, sym), atol=1e-12
        )
    sym = Symmetry.EVEN_LINEAR_SCALING
    transformed = v * (flips * scales)[:, None]
    np.testing.assert_allclose(neuron_distances(transformed, sym), neuron_distances(v, sym),
                               atol=1e-12)
    for sym in list(Symmetry):
        np.testing.assert_allclose(
            neuron_angles_deg(v * flips[:, None], sym)
            if sym.sign_invariant else neuron_angles_deg(v, sym),
            neuron_angles_deg(v, sym), atol=1e-9,
        )


def test_neuron_vectors_stack_students():
    a = MLP.from_arrays([np.ones((2, 3)), np.ones((1, 2))], [np.arange(2.0), np.zeros(1)],
                        ["tanh", "identity"])
    b = MLP.from_arrays([2 * np.ones((3, 3)), np.ones((1, 3))], [np.arange(3.0), np.zeros(1)],
                        ["tanh", "identity"])
    v, sid, nid = neuron_vectors([a, b])
    assert v.shape == (5, 4)
    assert sid.tolist() == [0, 0, 1, 1, 1]
    assert nid.tolist() == [0, 1, 0, 1, 2]
    np.testing.assert_array_equal(v[3], [2, 2, 2, 1])


def test_single_neuron_and_extra_students():
    result = cluster_neurons(np.array([[1.0, 2.0]]), np.array([0]), Symmetry.NONE)
    assert len(result.kept) == 1
    result = cluster_neurons(np.array([[1.0, 2.0]]), np.array([0]), Symmetry.NONE, n_students=4)
    assert len(result.kept) == 0 and result.clusters[0].reason == "too few students"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=1.5), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(beta_deg=0.0), "beta_deg"),
        (dict(beta_deg=90.5), "beta_deg"),
        (dict(beta_deg=-3), "beta_deg"),
    ],
)
def test_config_rejects_impossible_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ClusterConfig(**kwargs)


def test_cluster_neurons_rejects_bad_input():
    v = np.ones((3, 2))
    with pytest.raises(ValueError, match="student"):
        cluster_neurons(v, np.array([0, 1]), Symmetry.NONE)
    with pytest.raises(ValueError, match="student"):
        cluster_neurons(v, np.array([0.0, 1.0, 2.0]), Symmetry.NONE)
    with pytest.raises(TypeError, match="symmetry"):
        cluster_neurons(v, np.array([0, 1, 2]), "odd")
    with pytest.raises(ValueError, match="at least one neuron"):
        cluster_neurons(np.ones((0, 2)), np.array([], dtype=int), Symmetry.NONE)
    with pytest.raises(ValueError, match="NaN"):
        cluster_neurons(np.full((3, 2), np.nan), np.array([0, 1, 2]), Symmetry.NONE)
    with pytest.raises(ValueError, match="n_students"):
        cluster_neurons(v, np.array([0, 1, 2]), Symmetry.NONE, n_students=0)
    with pytest.raises(ValueError, match="at least one student"):
        neuron_vectors([])


def test_the_papers_cluster_size_counts_duplicates_where_the_default_counts_students():
    # Teacher neuron A held by students 0 and 1, twice by student 1 (a duplicate); B by all 3.
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.5])
    vectors = np.array([a, a * 1.0001, a * 0.9999, b, b * 1.0001, b * 0.9999])
    student = np.array([0, 1, 1, 0, 1, 2])
    kept = {}
    for counts in ("students", "neurons"):
        config = ClusterConfig(gamma=0.9, beta_deg=7.5, counts=counts)
        result = cluster_neurons(vectors, student, Symmetry.NONE, n_students=3, config=config)
        kept[counts] = sorted(c.size for c in result.clusters if c.kept)
    # 3 students x 0.9 = 2.7: A has 2 students but 3 neurons
    assert kept == {"students": [3], "neurons": [3, 3]}
    with pytest.raises(ValueError, match="counts must be one of"):
        ClusterConfig(counts="votes")
