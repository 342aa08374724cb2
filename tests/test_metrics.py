"""Metrics: RMSE, symmetry-aware cosine distances, Hungarian matching to the teacher."""

import numpy as np
import pytest

from ecflow.activations import Symmetry
from ecflow.metrics import cosine_distances, match_neurons, max_distance_of, rmse
from ecflow.networks import MLP


def net(W, b, act="tanh", a=None):
    W = np.asarray(W, dtype=np.float64)
    a = np.ones((1, W.shape[0])) if a is None else np.asarray(a, dtype=np.float64)
    return MLP.from_arrays([W, a], [np.asarray(b, dtype=np.float64), np.zeros(1)], [act, "identity"])


def test_rmse_against_a_direct_computation():
    rng = np.random.default_rng(0)
    n = net(rng.normal(size=(3, 2)), rng.normal(size=3))
    x = rng.normal(size=(50, 2))
    y = rng.normal(size=(50, 1))
    expected = np.sqrt(np.mean((np.tanh(x @ n.layers[0].weight.T + n.layers[0].bias)
                                @ n.layers[1].weight.T - y) ** 2))
    assert rmse(n, x, y) == pytest.approx(expected, rel=1e-14)
    assert rmse(n, x, n.forward(x)) == 0.0
    with pytest.raises(ValueError, match="d_out"):
        rmse(n, x, np.zeros((50, 2)))
    with pytest.raises(ValueError, match="same number of samples"):
        rmse(n, x, y[:10])


def test_cosine_distance_is_sign_invariant_except_without_symmetry():
    a = np.array([[1.0, 2.0, -1.0]])
    for sym in Symmetry:
        d_same = cosine_distances(a, 3.0 * a, sym)[0, 0]
        d_flip = cosine_distances(a, -a, sym)[0, 0]
        assert d_same == pytest.approx(0.0, abs=1e-15)
        assert d_flip == pytest.approx(0.0 if sym.sign_invariant else 2.0, abs=1e-15)


def test_cosine_distance_keeps_precision_for_tiny_angles():
    theta = 1e-7
    a = np.array([[1.0, 0.0]])
    b = np.array([[np.cos(theta), np.sin(theta)]])
    d = cosine_distances(a, b, Symmetry.NONE)[0, 0]
    # 1 - cos(θ) = 2 sin²(θ/2); the naive 1 - cos evaluates to 0 or 1.1e-16 here.
    assert d == pytest.approx(2 * np.sin(theta / 2) ** 2, rel=1e-6)


def test_zero_vectors_are_at_the_largest_distance():
    d = cosine_distances(np.zeros((1, 3)), np.ones((2, 3)), Symmetry.ODD)
    np.testing.assert_array_equal(d, 1.0)
    assert max_distance_of(Symmetry.NONE) == 2.0


def test_matching_undoes_permutation_sign_and_scale():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(4, 3))
    b = rng.normal(size=4)
    teacher = net(W, b, "relu")
    perm = [2, 0, 3, 1]
    scale = np.array([1.0, -2.0, 0.5, -1.0])[:, None]
    recovered = net(W[perm] * scale, b[perm] * scale[:, 0], "relu")
    m = match_neurons(recovered, teacher)
    assert m.complete
    assert m.max_distance < 1e-15
    for t, r in zip(m.teacher, m.recovered):
        assert perm[r] == t


def test_matching_reports_missing_and_extra_neurons():
    rng = np.random.default_rng(2)
    W, b = rng.normal(size=(3, 2)), rng.normal(size=3)
    teacher = net(W, b, "g")
    narrow = match_neurons(net(W[:2], b[:2], "g"), teacher)
    assert narrow.unmatched_teacher == (2,)
    assert narrow.max_distance == 2.0  # a missing neuron is as far as can be
    wide = match_neurons(net(np.vstack([W, [[5.0, 5.0]]]), np.append(b, 1.0), "g"), teacher)
    assert wide.unmatched_recovered == (3,)
    assert wide.unmatched_teacher == ()
    assert wide.max_distance < 1e-15
    assert not wide.complete


def test_matching_rejects_incompatible_networks():
    t = net(np.ones((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="d_in"):
        match_neurons(net(np.ones((2, 2)), np.zeros(2)), t)
    flat = MLP.from_arrays([np.ones((1, 3))], [np.zeros(1)], ["identity"])
    with pytest.raises(ValueError, match="hidden layer"):
        match_neurons(flat, t)
    with pytest.raises(ValueError, match="same width"):
        cosine_distances(np.ones((1, 2)), np.ones((1, 3)), Symmetry.NONE)
