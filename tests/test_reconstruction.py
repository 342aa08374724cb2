"""Reconstruction: exact collapse per symmetry class, orientation choice, refit and pruning.

The students here are built by hand to compute the teacher's function exactly, using the
symmetries of each class (duplicates with split output weights, sign flips with their
compensation, positive rescaling, linear-type pairs, zero-type and constant-type neurons), so
that every stage can be checked against the teacher without training.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecflow.activations import Symmetry, get_activation
from ecflow.clustering import ClusterConfig, cluster_neurons, neuron_vectors
from ecflow.engines import get_engine
from ecflow.engines.base import TrainConfig
from ecflow.networks import MLP
from ecflow.reconstruction import (
    PruneConfig,
    choose_orientations,
    collapse_clusters,
    network_rmse,
    prune_network,
    refit_output,
    remove_neurons,
)

CLASS_ACTIVATION = {
    Symmetry.NONE: "g",
    Symmetry.ODD: "tanh",
    Symmetry.ODD_CONSTANT: "sigmoid",
    Symmetry.EVEN_LINEAR: "softplus",
    Symmetry.EVEN_LINEAR_SCALING: "relu",
}


def make_teacher(act, d_in=3, r=3, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(r, d_in)) * 2.0
    b = rng.normal(size=r)
    a = rng.choice([-1.0, 1.0], size=(1, r)) * rng.uniform(0.5, 2.0, size=(1, r))
    return MLP.from_arrays([W, a], [b, rng.normal(size=1)], [act, "identity"])


class StudentBuilder:
    """Accumulates neurons ``(v, a)`` and an output bias; every method keeps the function."""

    def __init__(self, act, bias):
        self.act = get_activation(act)
        self.rows, self.out = [], []
        self.bias = np.array(bias, dtype=np.float64)

    def neuron(self, v, a):
        self.rows.append(np.asarray(v, dtype=np.float64))
        self.out.append(float(a))

    def copy_of(self, v, a, *, flip, scale):
        """Contribute ``a σ(v·[x,1])`` with a flipped and/or rescaled neuron, compensated."""
        sym = self.act.symmetry
        v = np.asarray(v, dtype=np.float64)
        if sym is Symmetry.EVEN_LINEAR_SCALING:
            v, a = v * scale, a / scale
        if not flip or not sym.sign_invariant:
            self.neuron(v, a)
            return
        if sym is Symmetry.ODD:
            self.neuron(-v, -a)  # a σ(z) = -a σ(-z)
        elif sym is Symmetry.ODD_CONSTANT:
            self.neuron(-v, -a)  # a σ(z) = 2 c0 a - a σ(-z)
            self.bias += 2.0 * self.act.c0 * a
        else:
            # a σ(z) = a σ(-z) + 2 c1 a z, and the linear term 2 c1 a z is a linear-type
            # pair a σ(z) - a σ(-z) on the same hyperplane.
            self.neuron(-v, a)
            self.neuron(v, a)
            self.neuron(-v, -a)

    def zero_pair(self, v, a):
        self.neuron(v, a)
        self.neuron(v, -a)

    def constant(self, b, a):
        v = np.zeros(len(self.rows[0]) if self.rows else 4)
        v[-1] = b
        self.neuron(v, a)
        self.bias -= a * float(self.act(np.array([b]))[0])

    def network(self, perm=None):
        V = np.array(self.rows)
        A = np.array(self.out)[None, :]
        perm = np.arange(len(V)) if perm is None else perm
        return MLP.from_arrays(
            [V[perm, :-1], A[:, perm]], [V[perm, -1], self.bias], [self.act, "identity"]
        )


def exact_students(act, teacher, rng, n_students=4):
    """Student 0 (the best): teacher neurons only, some duplicated, flipped and rescaled.
    Others: the same kinds of copies plus zero-type pairs and constant neurons at random."""
    hid, out = teacher.layers
    V = np.hstack([hid.weight, hid.bias[:, None]])
    a = out.weight[0]
    students = []
    for s in range(n_students):
        sb = StudentBuilder(act, out.bias)
        for k in range(len(V)):
            if rng.random() < 0.5:  # a duplicate: the output weight split in two
                f = rng.uniform(0.2, 0.8)
                sb.copy_of(V[k], f * a[k], flip=False, scale=rng.uniform(0.5, 2.0))
                sb.copy_of(V[k], (1 - f) * a[k], flip=bool(rng.random() < 0.5),
                           scale=rng.uniform(0.5, 2.0))
            else:
                sb.copy_of(V[k], a[k], flip=bool(rng.random() < 0.5), scale=rng.uniform(0.5, 2.0))
        if s > 0:
            sb.zero_pair(rng.normal(size=V.shape[1]) * 2.0, rng.normal())
            sb.constant(rng.normal(), rng.normal())
        students.append(sb.network(rng.permutation(len(sb.rows))))
    return students


def collapse(students, losses, symmetry, beta_deg=5.0):
    v, sid, nid = neuron_vectors(students)
    # beta = 5°: the hand-built junk sits at random places; keep the test about the collapse.
    clustering = cluster_neurons(v, sid, symmetry, config=ClusterConfig(0.5, beta_deg))
    return collapse_clusters(students, losses, clustering, sid, nid), clustering


X = np.random.default_rng(42).uniform(-np.sqrt(3), np.sqrt(3), size=(400, 3))


@pytest.mark.parametrize("symmetry", list(Symmetry))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_collapse_of_exact_students_computes_the_teacher(symmetry, seed):
    act = CLASS_ACTIVATION[symmetry]
    rng = np.random.default_rng(seed)
    teacher = make_teacher(act, seed=seed)
    students = exact_students(act, teacher, rng)
    for s in students:  # the construction itself must be exact
        np.testing.assert_allclose(s.forward(X), teacher.forward(X), atol=1e-11)
    collapsed, _ = collapse(students, [0.0, 1e-30, 1e-30, 1e-30], symmetry)
    net = collapsed.network
    assert net.hidden_sizes == teacher.hidden_sizes
    assert set(collapsed.source_student) == {0}
    # Exact without any refit: the compensation of each class is right, including the next
    # layer's bias for sigmoid flips.
    np.testing.assert_allclose(net.forward(X), teacher.forward(X), atol=1e-11)


@pytest.mark.parametrize("act", ["softplus", "relu", "gelu"])
def test_choose_orientations_undoes_a_flip_that_leaves_a_linear_term(act):
    teacher = make_teacher(act, r=4, seed=3)
    hid, out = teacher.layers
    sign = np.array([1.0, -1.0, 1.0, -1.0])
    flipped = teacher.replace_layer(
        0, type(hid)(hid.weight * sign[:, None], hid.bias * sign, hid.activation)
    )
    y = teacher.forward(X)
    assert network_rmse(refit_output(flipped, X, y), X, y) > 1e-3
    fixed = choose_orientations(flipped, X, y)
    assert network_rmse(fixed, X, y) < 1e-12
    np.testing.assert_allclose(fixed.layers[0].weight, hid.weight, atol=1e-12)
    # Greedy search beyond the exhaustive limit finds it too.
    greedy = choose_orientations(flipped, X, y, max_exhaustive=2)
    assert network_rmse(greedy, X, y) < 1e-12


@pytest.mark.parametrize("act", ["relu", "softplus", "silu"])
def test_choose_orientations_orients_the_last_hidden_layer_of_a_deep_network(act):
    from ecflow.teachers import TeacherConfig, synthetic_teacher

    teacher = synthetic_teacher(TeacherConfig(d_in=3, hidden=(4, 3), activation=act), seed=2)
    top = teacher.layers[1]
    sign = np.array([-1.0, 1.0, -1.0])
    flipped = teacher.replace_layer(
        1, type(top)(top.weight * sign[:, None], top.bias * sign, top.activation)
    )
    y = teacher.forward(X)
    assert network_rmse(refit_output(flipped, X, y), X, y) > 1e-3
    fixed = choose_orientations(flipped, X, y)
    assert network_rmse(fixed, X, y) < 1e-12
    np.testing.assert_allclose(fixed.layers[1].weight, top.weight, atol=1e-12)
    np.testing.assert_array_equal(fixed.layers[0].weight, teacher.layers[0].weight)


def test_choose_orientations_leaves_other_classes_alone():
    teacher = make_teacher("tanh", seed=4)
    y = teacher.forward(X)
    out = choose_orientations(teacher, X, y)
    np.testing.assert_array_equal(out.layers[0].weight, teacher.layers[0].weight)


def test_refit_output_recovers_output_layer_and_absorbs_constants():
    teacher = make_teacher("g", seed=5)
    y = teacher.forward(X)
    hid, out = teacher.layers
    wrong = teacher.replace_layer(1, type(out)(out.weight * 0.3, out.bias + 2, out.activation))
    fixed = refit_output(wrong, X, y)
    np.testing.assert_allclose(fixed.layers[1].weight, out.weight, atol=1e-10)
    np.testing.assert_allclose(fixed.layers[1].bias, out.bias, atol=1e-10)
    with pytest.raises(ValueError, match="one hidden layer"):
        refit_output(MLP((hid,)), X, y[:, :1])


def test_remove_neurons():
    teacher = make_teacher("tanh", r=4, seed=6)
    smaller = remove_neurons(teacher, [1, 3])
    assert smaller.hidden_sizes == (2,)
    np.testing.assert_array_equal(smaller.layers[0].weight, teacher.layers[0].weight[[0, 2]])
    np.testing.assert_array_equal(smaller.layers[1].weight, teacher.layers[1].weight[:, [0, 2]])
    with pytest.raises(ValueError, match="every hidden neuron"):
        remove_neurons(teacher, range(4))


def padded(teacher, extra_v, extra_a):
    hid, out = teacher.layers
    V = np.vstack([np.hstack([hid.weight, hid.bias[:, None]]), extra_v])
    A = np.hstack([out.weight, np.atleast_2d(extra_a)])
    return MLP.from_arrays([V[:, :-1], A], [V[:, -1], out.bias], [hid.activation, "identity"])


def test_prune_removes_a_dead_neuron_by_refit_alone():
    teacher = make_teacher("g", seed=7)
    y = teacher.forward(X)
    net = padded(teacher, [[0.5, -1.0, 2.0, 0.3]], [0.0])
    result = prune_network(net, X, y, engine=get_engine("native"),
                           train_config=TrainConfig(max_seconds=5.0))
    assert result.network.hidden_sizes == (3,)
    assert result.removed == ((3,),) and result.kept == ((0, 1, 2),)
    assert result.finetunes == 0
    assert result.rmse < 1e-13


def test_prune_fine_tunes_a_split_duplicate_away():
    # Neuron 0 duplicated with a slightly different copy: removing either needs the other to
    # move, which only the fine-tune does.
    teacher = make_teacher("tanh", seed=8)
    y = teacher.forward(X)
    hid, out = teacher.layers
    v0 = np.append(hid.weight[0], hid.bias[0])
    net = padded(teacher, [v0 + 1e-4], [0.5 * out.weight[0, 0]])
    net = net.replace_layer(1, type(out)(
        np.hstack([[[0.5 * out.weight[0, 0]]], out.weight[:, 1:], [[0.5 * out.weight[0, 0]]]]),
        out.bias, out.activation))
    tuned = get_engine("native").train(X, y, net, TrainConfig(max_seconds=10.0))
    result = prune_network(tuned.network, X, y, engine=get_engine("native"),
                           train_config=TrainConfig(max_seconds=10.0),
                           config=PruneConfig(abs_rmse=1e-11))
    assert result.network.hidden_sizes == (3,)
    assert len(result.removed[0]) == 1 and result.removed[0][0] in (0, 3)
    assert result.rmse < 1e-11


def test_prune_keeps_teacher_neurons():
    teacher = make_teacher("sigmoid", seed=9)
    y = teacher.forward(X)
    result = prune_network(teacher, X, y, engine=get_engine("native"),
                           train_config=TrainConfig(max_seconds=5.0), orders=[[2, 0, 1]])
    assert result.network.hidden_sizes == (3,)
    assert result.removed == ((),)
    assert result.tried == 3


def test_prune_and_collapse_reject_bad_input():
    teacher = make_teacher("g", seed=10)
    y = teacher.forward(X)
    eng = get_engine("native")
    with pytest.raises(ValueError, match="order"):
        prune_network(teacher, X, y, engine=eng, train_config=TrainConfig(), orders=[[0, 0]])
    with pytest.raises(ValueError, match="order"):
        prune_network(teacher, X, y, engine=eng, train_config=TrainConfig(), orders=[[5]])
    with pytest.raises(ValueError, match="rel_factor"):
        PruneConfig(rel_factor=0.5)
    with pytest.raises(ValueError, match="abs_rmse"):
        PruneConfig(abs_rmse=0)
    v, sid, nid = neuron_vectors([teacher])
    clustering = cluster_neurons(v, sid, Symmetry.NONE)
    with pytest.raises(ValueError, match="one loss per student"):
        collapse_clusters([teacher], [], clustering, sid, nid)
    with pytest.raises(ValueError, match="symmetry"):
        collapse_clusters([make_teacher("tanh")], [0.0], clustering, sid, nid)
    nothing = cluster_neurons(v, sid, Symmetry.NONE, n_students=5)
    with pytest.raises(ValueError, match="no cluster"):
        collapse_clusters([teacher], [0.0], nothing, sid, nid)
