"""Tests of the exact zero-loss symmetry reduction (paper section 4, Figs. 2, A.5, A.6).

Students are built from a teacher with the symmetry operations of its activation's class
(splits into duplicates, sign flips with their compensation, positive rescaling, zero neurons
and groups, constant neurons, linear-type groups that cancel each other, off-bound relu
neurons, permutations); the reduction must recover every neuron's type, the teacher's size
and function, and the teacher's neurons.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecflow.activations import Symmetry, get_activation
from ecflow.metrics import cosine_distances
from ecflow.networks import MLP
from ecflow.symmetry import (
    NeuronType,
    ReductionStatus,
    SymmetryConfig,
    map_to_teacher,
    reduce_network,
    reduction_steps,
)
from ecflow.teachers import INPUT_HALF_WIDTH, TeacherConfig, sample_inputs, synthetic_teacher

H = INPUT_HALF_WIDTH


def teacher_net(act: str, d_in: int, r: int, seed: int, d_out: int = 1) -> MLP:
    cfg = TeacherConfig(d_in=d_in, hidden=(r,), activation=act, d_out=d_out, n_normalise=2000)
    return synthetic_teacher(cfg, seed)


def rmse(a: MLP, b: MLP, d_in: int, seed: int = 123) -> float:
    x = sample_inputs(5000, d_in, seed)
    return float(np.sqrt(np.mean((a.forward(x) - b.forward(x)) ** 2)))


class Builder:
    """A student under construction: rows (w, b, a) plus the output bias, with expected types.

    Every ``add_*`` keeps the student's function equal to the teacher's on the box.
    ``label`` is the expected type; ``tag`` names the teacher neuron (for ``neuron``) or
    the zero/linear group a row belongs to.
    """

    def __init__(self, teacher: MLP, rng: np.random.Generator):
        self.act = teacher.layers[0].activation
        self.sym = self.act.symmetry
        self.d_in = teacher.d_in
        self.d_out = teacher.d_out
        self.rng = rng
        self.rows: list[tuple[np.ndarray, float, np.ndarray, str, object]] = []
        self.c = teacher.layers[1].bias.copy()
        self.T = teacher.layers[0]
        self.A = teacher.layers[1].weight
        self.n_groups = 0

    # teacher neurons --------------------------------------------------------------------
    def add_teacher_neuron(self, k: int, n_split: int, flip_mask: list[bool]):
        """Split teacher neuron k into n_split duplicates, flipping those in flip_mask."""
        w, b, a = self.T.weight[k], self.T.bias[k], self.A[:, k]
        shares = self.rng.uniform(0.2, 1.0, size=n_split)
        shares = shares / shares.sum()
        scaled = self.sym.scale_invariant
        for share, flip in zip(shares, flip_mask):
            lam = self.rng.uniform(0.3, 3.0) if scaled else 1.0
            a_j = share * a / lam
            if flip and self.sym.sign_invariant:
                if self.sym is Symmetry.ODD:
                    self.rows.append((-lam * w, -lam * b, -a_j, "neuron", k))
                elif self.sym is Symmetry.ODD_CONSTANT:
                    # a σ(z) = -a σ(-z) + 2 c0 a
                    self.rows.append((-lam * w, -lam * b, -a_j, "neuron", k))
                    self.c = self.c + 2.0 * self.act.c0 * a_j
                else:
                    # a σ(z) = a σ(-z) + 2 c1 a z: a linear-type group supplies 2 c1 a z.
                    self.rows.append((-lam * w, -lam * b, a_j, "neuron", k))
                    two_c1 = 2.0 * self.act.c1
                    self.add_linear_group(
                        two_c1 * lam * a_j[:, None] * w[None, :], two_c1 * lam * a_j * b
                    )
            else:
                self.rows.append((lam * w, lam * b, a_j, "neuron", k))

    # redundant neurons ------------------------------------------------------------------
    def add_zero_neuron(self):
        w = self.rng.normal(size=self.d_in)
        self.rows.append((w, float(self.rng.normal()), np.zeros(self.d_out), "zero", None))

    def inside_bias(self, w: np.ndarray) -> float:
        # A hyperplane through the box: relu neurons stay on-bound (off-bound ones are tested
        # on their own, since an off-bound member is constant or linear by itself).
        return float(self.rng.uniform(-0.5, 0.5) * H * np.abs(w).sum())

    def add_zero_group(self, q: int):
        w = self.rng.normal(size=self.d_in)
        b = self.inside_bias(w)
        a = self.rng.normal(size=(q, self.d_out))
        a[-1] = -a[:-1].sum(axis=0)
        tag = ("zero", self.n_groups)
        self.n_groups += 1
        for j in range(q):
            lam = self.rng.uniform(0.5, 2.0) if self.sym.scale_invariant else 1.0
            self.rows.append((lam * w, lam * b, a[j] / lam, "zero", tag))

    def add_constant(self):
        b = float(self.rng.normal())
        a = self.rng.normal(size=self.d_out)
        self.rows.append((np.zeros(self.d_in), b, a, "constant", None))
        self.c = self.c - a * float(self.act(np.array([b]))[0])

    def add_linear_group(self, theta: np.ndarray, beta: np.ndarray):
        """Add neurons contributing exactly ``theta x + beta`` (even+linear classes).

        A pair ``(u, α), (-u, -α)`` contributes ``2 c1 α (u_w x + u_b)``; with ``d_out`` > 1
        one pair per output row.
        """
        c1 = self.act.c1
        for o in range(self.d_out):
            if not np.any(theta[o]):
                continue
            gamma = self.rng.uniform(0.5, 2.0) * self.rng.choice([-1.0, 1.0])
            u_w = gamma * theta[o]
            u_b = self.inside_bias(u_w)
            alpha = np.zeros(self.d_out)
            alpha[o] = 1.0 / (2.0 * c1 * gamma)
            tag = ("linear", self.n_groups)
            self.n_groups += 1
            lam = self.rng.uniform(0.5, 2.0) if self.sym.scale_invariant else 1.0
            self.rows.append((u_w, u_b, alpha, "cancelled", tag))
            self.rows.append((-lam * u_w, -lam * u_b, -alpha / lam, "cancelled", tag))
            self.c = self.c - 2.0 * c1 * alpha * u_b
        self.c = self.c + beta

    def add_cancelling_pairs(self):
        """Two linear-type groups whose linear parts cancel (even+linear classes)."""
        theta = np.zeros((self.d_out, self.d_in))
        theta[self.rng.integers(self.d_out)] = self.rng.normal(size=self.d_in)
        self.add_linear_group(theta, np.zeros(self.d_out))
        self.add_linear_group(-theta, np.zeros(self.d_out))

    def add_offbound(self):
        """Relu: one off-bound neuron on the flat side, two on the linear side cancelling."""
        w = self.rng.normal(size=self.d_in)
        margin = H * np.abs(w).sum() + self.rng.uniform(0.1, 1.0)
        self.rows.append((w, -margin, self.rng.normal(size=self.d_out), "constant", None))
        a = self.rng.normal(size=self.d_out)
        gamma = self.rng.uniform(0.5, 2.0)
        b1 = margin
        b2 = gamma * H * np.abs(w).sum() + self.rng.uniform(0.1, 1.0)
        self.rows.append((w, b1, a, "cancelled", None))
        self.rows.append((gamma * w, b2, -a / gamma, "cancelled", None))
        self.c = self.c - a * b1 + a / gamma * b2

    def build(self, permute: bool = True):
        order = self.rng.permutation(len(self.rows)) if permute else np.arange(len(self.rows))
        rows = [self.rows[i] for i in order]
        W = np.array([r[0] for r in rows], dtype=np.float64)
        b = np.array([r[1] for r in rows], dtype=np.float64)
        A = np.array([r[2] for r in rows], dtype=np.float64).T
        student = MLP.from_arrays([W, A], [b, self.c], [self.act, "identity"])
        return student, [r[3] for r in rows], [r[4] for r in rows]


def check_reduction(teacher: MLP, student: MLP, labels, tags, *, signed: bool | None = None):
    """The student reduces to the teacher: types, groups, size, function, neurons."""
    res = reduce_network(student, teacher=teacher)
    assert res.status is ReductionStatus.EXACT, res.reason
    assert list(res.types) == labels
    r = teacher.hidden_sizes[0]
    assert res.network.hidden_sizes == (r,)
    # Members of one teacher neuron share a group, different teacher neurons do not.
    group_of_teacher: dict[int, int] = {}
    for n, tag in zip(res.neurons, tags):
        if n.type is NeuronType.NEURON:
            assert group_of_teacher.setdefault(tag, n.group) == n.group
    assert len(set(group_of_teacher.values())) == r
    assert rmse(res.network, student, teacher.d_in) <= 1e-12
    assert rmse(res.network, teacher, teacher.d_in) <= 1e-12
    assert res.rmse <= 1e-12
    m = res.mapping
    assert m.max_cosine_distance <= 1e-10
    assert np.max(m.output_error) <= 1e-10
    for k, g in group_of_teacher.items():
        assert m.teacher_of_reduced[g] == k
    # Shares of each teacher neuron sum to 1.
    for k in range(r):
        total = sum(n.share for n in m.neurons if n.teacher == k)
        assert total == pytest.approx(1.0, abs=1e-9)
    # Signed distance to the teacher's own neuron (orientation recovered, not just the line).
    sym = teacher.layers[0].activation.symmetry
    if signed is None:
        # Odd classes cannot recover the sign. Even+linear ones can (Θ must vanish), unless
        # the teacher's own a_k w_k^T are linearly dependent: then another flip set is as valid.
        M = np.stack([np.outer(teacher.layers[1].weight[:, k], teacher.layers[0].weight[k]).ravel()
                      for k in range(r)])
        signed = sym is Symmetry.NONE or (
            sym not in (Symmetry.ODD, Symmetry.ODD_CONSTANT) and np.linalg.matrix_rank(M) == r
        )
    if signed:
        R = np.hstack([res.network.layers[0].weight, res.network.layers[0].bias[:, None]])
        T = np.hstack([teacher.layers[0].weight, teacher.layers[0].bias[:, None]])
        D = cosine_distances(R, T, Symmetry.NONE)
        for k, g in group_of_teacher.items():
            assert D[g, k] <= 1e-10
    return res


# --- hypothesis: random teachers expanded with random symmetry operations ------------------

ACTS = ["tanh", "sigmoid", "softplus", "relu", "g", "gelu", "leaky_relu"]


@st.composite
def expansions(draw):
    act = draw(st.sampled_from(ACTS))
    d_in = draw(st.integers(2, 3))
    r = draw(st.integers(2, 4))
    d_out = draw(st.sampled_from([1, 1, 2]))
    seed = draw(st.integers(0, 10_000))
    splits = draw(st.lists(st.integers(1, 3), min_size=r, max_size=r))
    flips = [draw(st.lists(st.booleans(), min_size=q, max_size=q)) for q in splits]
    n_zero = draw(st.integers(0, 2))
    n_zero_groups = draw(st.integers(0, 2))
    n_const = draw(st.integers(0, 2))
    n_cancel = draw(st.integers(0, 2))
    n_offbound = draw(st.integers(0, 1))
    return act, d_in, r, d_out, seed, splits, flips, n_zero, n_zero_groups, n_const, n_cancel, n_offbound


@settings(max_examples=150, deadline=None)
@given(expansions())
def test_random_expansions_reduce_to_teacher(params):
    act, d_in, r, d_out, seed, splits, flips, nz, nzg, nc, ncan, noff = params
    teacher = teacher_net(act, d_in, r, seed, d_out)
    bld = Builder(teacher, np.random.default_rng(seed))
    sym = bld.sym
    even = sym in (Symmetry.EVEN_LINEAR, Symmetry.EVEN_LINEAR_SCALING)
    for k in range(r):
        # Keep one member in the teacher's orientation so that the orientation is identifiable.
        mask = [False] + flips[k][1:] if even else flips[k]
        bld.add_teacher_neuron(k, splits[k], mask)
    for _ in range(nz):
        bld.add_zero_neuron()
    for _ in range(nzg):
        bld.add_zero_group(2 + _)
    for _ in range(nc):
        bld.add_constant()
    if even:
        for _ in range(ncan):
            bld.add_cancelling_pairs()
    if act == "relu" and noff:
        bld.add_offbound()
    student, labels, tags = bld.build()
    check_reduction(teacher, student, labels, tags)


# --- by hand, one class at a time -----------------------------------------------------------


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "softplus", "relu", "gelu", "silu", "g"])
def test_every_symmetry_of_the_class(act):
    teacher = teacher_net(act, 3, 4, seed=7)
    bld = Builder(teacher, np.random.default_rng(1))
    sym = bld.sym
    bld.add_teacher_neuron(0, 3, [False, True, True])
    if sym.sign_invariant:
        bld.add_teacher_neuron(1, 1, [True])  # the student holds the opposite vector only
    else:
        bld.add_teacher_neuron(1, 1, [False])
    bld.add_teacher_neuron(2, 2, [False, False])
    bld.add_teacher_neuron(3, 1, [False])
    bld.add_zero_neuron()
    bld.add_zero_group(3)
    bld.add_constant()
    bld.add_constant()
    if sym in (Symmetry.EVEN_LINEAR, Symmetry.EVEN_LINEAR_SCALING):
        bld.add_cancelling_pairs()
    if act == "relu":
        bld.add_offbound()
    student, labels, tags = bld.build()
    res = check_reduction(teacher, student, labels, tags)
    assert res.network.n_params < student.n_params


def relu_flipped_student():
    """A relu teacher whose neuron 0 the student holds flipped, with its linear-type pair."""
    teacher = teacher_net("relu", 2, 4, seed=3)
    bld = Builder(teacher, np.random.default_rng(2))
    bld.add_teacher_neuron(0, 1, [True])
    for k in (1, 2, 3):
        bld.add_teacher_neuron(k, 1, [False])
    return (teacher, *bld.build(permute=False))


def test_relu_flipped_teacher_neuron_is_flipped_back():
    # Fig. A.6 last step: the student holds -v with a linear group; the reduction must flip.
    teacher, student, labels, tags = relu_flipped_student()
    res = check_reduction(teacher, student, labels, tags, signed=True)
    assert res.layers[0].flipped == (0,)
    assert res.neurons[0].note == "flipped duplicate" and res.neurons[0].sign == -1
    assert [n.note for n in res.neurons[1:3]] == ["linear-type group"] * 2


def test_each_type_alone_tanh():
    teacher = teacher_net("tanh", 2, 2, seed=0)
    W, b = teacher.layers[0].weight, teacher.layers[0].bias
    a, c = teacher.layers[1].weight, teacher.layers[1].bias
    t = math.tanh(0.4)
    Ws = np.vstack([W[0], -W[0], np.zeros(2), W[1], [1.0, 2.0], [1.0, 2.0]])
    bs = np.array([b[0], -b[0], 0.4, b[1], 0.1, 0.1])
    As = np.array([[0.25 * a[0, 0], -0.75 * a[0, 0], 2.0, a[0, 1], 3.0, -3.0]])
    student = MLP.from_arrays([Ws, As], [bs, c - 2.0 * t], ["tanh", "identity"])
    res = reduce_network(student, teacher=teacher)
    assert res.types == ("neuron", "neuron", "constant", "neuron", "zero", "zero")
    assert res.groups == (0, 0, None, 1, None, None)
    # The kept orientation is the one carrying most of the output (the 0.75 member).
    assert [n.sign for n in res.neurons[:2]] == [-1, 1]
    assert [m.sign for m in res.mapping.neurons[:2]] == [1, -1]
    assert res.neurons[2].note == "w = 0"
    assert res.neurons[4].note == "zero-type group" and res.neurons[4].cluster is not None
    assert res.network.hidden_sizes == (2,)
    assert res.rmse <= 1e-14
    shares = [m.share for m in res.mapping.neurons[:2]]
    assert shares == pytest.approx([0.25, 0.75], abs=1e-12)


def test_sigmoid_flip_moves_constant_into_bias():
    w, b, a = np.array([[1.5, -0.5]]), np.array([0.3]), np.array([[2.0]])
    teacher = MLP.from_arrays([w, a], [b, np.array([0.1])], ["sigmoid", "identity"])
    # 2 σ(z) = -2 σ(-z) + 2·2·c0
    student = MLP.from_arrays(
        [-w, -a], [-b, np.array([0.1 + 2.0])], ["sigmoid", "identity"]
    )
    res = reduce_network(student, teacher=teacher)
    assert res.status.exact
    assert res.types == ("neuron",)
    assert res.mapping.neurons[0].sign == -1
    assert res.mapping.neurons[0].share == pytest.approx(1.0)


def test_relu_positive_scale_moves_to_output_weight():
    w, b = np.array([[1.0, 2.0]]), np.array([0.5])
    teacher = MLP.from_arrays([w, np.array([[1.0]])], [b, np.zeros(1)], ["relu", "identity"])
    student = MLP.from_arrays(
        [np.vstack([3 * w, 0.5 * w]), np.array([[0.2, 0.8 / 0.5 * (1 - 0.6)]])],
        [np.array([1.5, 0.25]), np.zeros(1)],
        ["relu", "identity"],
    )
    # 0.2 relu(3z) + 0.64 relu(0.5 z) = (0.6 + 0.32) relu(z)
    res = reduce_network(student, teacher=teacher)
    assert res.types == ("neuron", "neuron")
    assert res.network.hidden_sizes == (1,)
    scales = sorted(n.scale for n in res.mapping.neurons)
    assert scales == pytest.approx([0.5, 3.0])
    a_red = res.network.layers[1].weight[0, 0] * np.linalg.norm(
        np.append(res.network.layers[0].weight[0], res.network.layers[0].bias[0])
    )
    assert a_red == pytest.approx(0.92 * np.linalg.norm([1.0, 2.0, 0.5]))


def test_relu_offbound_linear_without_partner_is_reported():
    # A relu whose hyperplane lies outside the box on its linear side adds a x·w + ...; with
    # nothing to cancel it, the plain MLP form cannot hold it: status LINEAR_REMAINDER.
    W = np.array([[1.0, -1.0], [0.5, 0.5]])
    b = np.array([0.2, 10.0])
    student = MLP.from_arrays([W, np.array([[1.0, 0.7]])], [b, np.zeros(1)], ["relu", "identity"])
    res = reduce_network(student)
    assert res.status is ReductionStatus.LINEAR_REMAINDER
    assert "Θ" in res.reason
    assert res.types == ("neuron", "cancelled")
    assert res.linear_remainder == pytest.approx(np.array([[0.35, 0.35]]))
    assert res.rmse > 1e-3


def test_relu_flat_offbound_is_constant_and_softplus_pair_is_linear():
    W = np.array([[1.0, -1.0], [0.5, 0.5]])
    student = MLP.from_arrays(
        [W, np.array([[1.0, 0.7]])], [np.array([0.2, -10.0]), np.zeros(1)], ["relu", "identity"]
    )
    res = reduce_network(student)
    assert res.types == ("neuron", "constant") and res.neurons[1].note == "off-bound flat"
    # A lone softplus linear-type pair leaves 2 c1 α w x: a linear remainder.
    sp = MLP.from_arrays(
        [np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([[1.0, -1.0]])],
        [np.array([0.3, -0.3]), np.zeros(1)],
        ["softplus", "identity"],
    )
    res = reduce_network(sp)
    assert res.types == ("cancelled", "cancelled")
    assert res.status is ReductionStatus.LINEAR_REMAINDER
    assert res.linear_remainder == pytest.approx(np.array([[1.0, 0.0]]))


def test_no_symmetry_keeps_flipped_neurons_apart():
    W = np.array([[1.0, 0.5], [-1.0, -0.5]])
    student = MLP.from_arrays(
        [W, np.array([[1.0, 1.0]])], [np.array([0.1, -0.1]), np.zeros(1)], ["g", "identity"]
    )
    res = reduce_network(student)
    assert res.types == ("neuron", "neuron") and res.groups == (0, 1)
    assert res.status.exact


def test_query_inputs_define_the_domain():
    # The hyperplane x0 = 1 cuts the box but not inputs restricted to x0 < 0.5.
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    student = MLP.from_arrays(
        [W, np.array([[1.0, 1.0]])], [np.array([-1.0, 0.0]), np.zeros(1)], ["relu", "identity"]
    )
    assert reduce_network(student).types == ("neuron", "neuron")
    x = sample_inputs(500, 2, 0)
    x[:, 0] = np.minimum(x[:, 0], 0.5)
    res = reduce_network(student, x)
    assert res.types == ("constant", "neuron")
    assert res.status.exact and res.rmse <= 1e-14


def test_all_removed_keeps_one_zero_neuron():
    student = MLP.from_arrays(
        [np.zeros((2, 2)), np.array([[1.0, 2.0]])], [np.array([0.1, 0.2]), np.zeros(1)],
        ["tanh", "identity"],
    )
    res = reduce_network(student)
    assert res.types == ("constant", "constant")
    assert res.network.hidden_sizes == (1,)
    assert res.status.exact and "constant" in res.reason
    assert res.network.layers[1].bias[0] == pytest.approx(math.tanh(0.1) + 2 * math.tanh(0.2))


def test_near_duplicates_merged_by_loose_tolerance_mismatch():
    teacher = teacher_net("tanh", 2, 2, seed=4)
    W, b = teacher.layers[0].weight, teacher.layers[0].bias
    a, c = teacher.layers[1].weight, teacher.layers[1].bias
    Ws = np.vstack([W[0], W[0] * (1 + 1e-4), W[1]])
    As = np.array([[0.5 * a[0, 0], 0.5 * a[0, 0], a[0, 1]]])
    student = MLP.from_arrays([Ws, As], [np.array([b[0], b[0], b[1]]), c], ["tanh", "identity"])
    strict = reduce_network(student)
    assert strict.status.exact and strict.network.hidden_sizes == (3,)
    loose = reduce_network(student, config=SymmetryConfig(param_rtol=1e-2))
    assert loose.network.hidden_sizes == (2,)
    assert loose.status is ReductionStatus.MISMATCH
    assert "train the student further" in loose.reason


def test_deep_network_reduced_layer_by_layer():
    rng = np.random.default_rng(0)
    W1 = rng.normal(size=(3, 2))
    b1 = rng.normal(size=3)
    W2 = rng.normal(size=(2, 3))
    b2 = rng.normal(size=2)
    # Layer 0: duplicate neuron 0 (split its outgoing weights); layer 1: a zero neuron.
    W1s = np.vstack([W1, W1[0]])
    W2s = np.hstack([W2, np.zeros((2, 1))])
    W2s[:, 0] *= 0.3
    W2s[:, 3] = W2[:, 0] * 0.7
    W2s = np.vstack([W2s, rng.normal(size=4)])
    b2s = np.append(b2, 0.0)
    A3 = np.array([[1.0, -2.0, 0.0]])
    student = MLP.from_arrays(
        [W1s, W2s, A3], [np.append(b1, b1[0]), b2s, np.array([0.5])], ["tanh", "tanh", "identity"]
    )
    res = reduce_network(student)
    assert res.status.exact, res.reason
    assert res.network.hidden_sizes == (3, 2)
    assert [n.type.value for n in res.neurons if n.layer == 1] == ["neuron", "neuron", "zero"]
    assert res.rmse <= 1e-13


def test_report_lists_neurons_in_student_order():
    teacher = teacher_net("softplus", 2, 2, seed=1)
    bld = Builder(teacher, np.random.default_rng(0))
    bld.add_teacher_neuron(0, 2, [False, True])
    bld.add_teacher_neuron(1, 1, [False])
    bld.add_constant()
    student, labels, _ = bld.build()
    rep = reduce_network(student, teacher=teacher).report()
    assert [n["index"] for n in rep["neurons"]] == list(range(student.hidden_sizes[0]))
    assert [n["type"] for n in rep["neurons"]] == labels
    assert rep["status"] == "exact" and rep["reduced_hidden"] == [2]
    assert len(rep["mapping"]) == len(labels)


def test_map_to_teacher_reports_unmatched_teacher_neurons():
    teacher = teacher_net("tanh", 2, 3, seed=2)
    W, b = teacher.layers[0].weight, teacher.layers[0].bias
    student = MLP.from_arrays(
        [W[:2], teacher.layers[1].weight[:, :2]], [b[:2], teacher.layers[1].bias],
        ["tanh", "identity"],
    )
    res = reduce_network(student)
    mapping = map_to_teacher(res, teacher)
    assert mapping.unmatched_teacher == (2,)
    assert mapping.teacher_of_reduced == (0, 1)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"param_rtol": 0.0}, "param_rtol"),
        ({"output_rtol": -1.0}, "output_rtol"),
        ({"verify_rtol": float("nan")}, "verify_rtol"),
        ({"half_width": float("inf")}, "half_width"),
        ({"n_verify": 1}, "n_verify"),
        ({"n_grid": 2}, "n_grid"),
        ({"max_flip_subsets": 0}, "max_flip_subsets"),
        ({"near_linear_rtol": 0.0}, "near_linear_rtol"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SymmetryConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"param_rtol": "1e-7"}, {"n_verify": 10.0}, {"seed": True}])
def test_config_rejects_bad_types(kwargs):
    with pytest.raises(TypeError):
        SymmetryConfig(**kwargs)


def test_reduce_rejects_bad_input():
    t = teacher_net("tanh", 2, 2, seed=0)
    with pytest.raises(TypeError, match="student"):
        reduce_network("net.h5")
    single = MLP.from_arrays([np.ones((1, 2))], [np.zeros(1)], ["identity"])
    with pytest.raises(ValueError, match="hidden layer"):
        reduce_network(single)
    with pytest.raises(ValueError, match="d_in"):
        reduce_network(t, np.zeros((10, 3)))
    with pytest.raises(TypeError, match="floating"):
        reduce_network(t, np.zeros((10, 2), dtype=int))
    with pytest.raises(TypeError, match="config"):
        reduce_network(t, config={"param_rtol": 1e-3})
    other = teacher_net("relu", 2, 2, seed=0)
    with pytest.raises(ValueError, match="activation"):
        reduce_network(t, teacher=other)
    wide = teacher_net("tanh", 3, 2, seed=0)
    with pytest.raises(ValueError, match="does not match"):
        reduce_network(t, teacher=wide)


def test_symmetry_class_dispatch_matches_activation_table():
    # The builder relies on these identities; check them on the activations themselves.
    z = np.linspace(-4, 4, 101)
    for name in ACTS:
        act = get_activation(name)
        if act.symmetry is Symmetry.ODD_CONSTANT:
            assert np.allclose(act(-z), 2 * act.c0 - act(z), atol=1e-14)
        if act.symmetry in (Symmetry.EVEN_LINEAR, Symmetry.EVEN_LINEAR_SCALING):
            assert np.allclose(act(-z), act(z) - 2 * act.c1 * z, atol=1e-14)


def test_small_w_neurons_that_cancel_together_are_collectively_constant():
    # Three tanh neurons along one small direction whose linear and quadratic Taylor terms
    # cancel: each bends by ~1e-8 (not constant alone), their sum is constant to ~1e-12.
    teacher = teacher_net("tanh", 2, 2, seed=0)
    eps, u = 1e-4, np.array([1.0, -0.5])
    bs = np.array([0.2, -0.7, 1.1])
    t = np.tanh(bs)
    d1, d2 = 1 - t**2, -2 * t * (1 - t**2)
    coef = np.linalg.svd(np.vstack([d1, d2]))[2][-1]  # null vector: Σ a σ'(b) = Σ a σ''(b) = 0
    Ws = np.vstack([teacher.layers[0].weight, np.outer(np.ones(3), eps * u)])
    b = np.concatenate([teacher.layers[0].bias, bs])
    A = np.hstack([teacher.layers[1].weight, coef[None, :]])
    c = teacher.layers[1].bias - coef @ t
    student = MLP.from_arrays([Ws, A], [b, c], ["tanh", "identity"])
    res = reduce_network(student, teacher=teacher)
    assert res.status.exact, res.reason
    assert res.types == ("neuron", "neuron", "constant", "constant", "constant")
    assert {n.note for n in res.neurons[2:]} == {"collectively constant"}
    assert res.network.hidden_sizes == (2,)
    assert rmse(res.network, teacher, 2) <= 1e-11
    # Without the collective test they stay: loose neurons are kept, not silently dropped.
    kept = reduce_network(student, config=SymmetryConfig(near_linear_rtol=1e-12))
    assert kept.network.hidden_sizes == (5,)


@pytest.mark.parametrize("act", ["relu", "softplus", "sigmoid"])
def test_reduction_steps_keep_the_function_at_every_step(act):
    teacher = teacher_net(act, 2, 4, seed=3)
    bld = Builder(teacher, np.random.default_rng(5))
    bld.add_teacher_neuron(0, 1, [True])
    bld.add_teacher_neuron(1, 3, [False, False, True])
    bld.add_teacher_neuron(2, 1, [False])
    bld.add_teacher_neuron(3, 2, [False, False])
    bld.add_zero_group(2)
    bld.add_zero_neuron()
    bld.add_constant()
    if act == "relu":
        bld.add_offbound()
    student, labels, _ = bld.build()
    res = reduce_network(student)
    assert list(res.types) == labels
    steps = reduction_steps(res)
    assert [s.name for s in steps] == [
        "student", "merge duplicates", "remove zero types", "remove constants and off-bounds",
        "merge opposite duplicates", "flip signs",
    ]
    x = sample_inputs(2000, 2, 11)
    for s in steps:
        f = s.network(x) + x @ s.theta.T
        assert np.sqrt(np.mean((f - student(x)) ** 2)) <= 1e-12, s.name
        assert sorted(i for src in s.sources for i in src) == sorted(set(
            i for src in s.sources for i in src))
    sizes = [s.network.hidden_sizes[0] for s in steps]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 4
    assert np.abs(steps[-1].theta).max() <= 1e-12
    assert np.abs(steps[-1].network(x) - res.network(x)).max() <= 1e-12
    assert steps[1].changed  # the split neurons were merged


# --- figures ------------------------------------------------------------------------------


def test_hyperplane_panels_draw_every_network():
    import matplotlib

    matplotlib.use("Agg")
    from ecflow.plots import draw_hyperplanes, hyperplane_panels

    teacher = teacher_net("relu", 2, 3, seed=0)
    res = reduce_network(teacher)
    fig = hyperplane_panels([teacher, res.network], ["teacher", "reduced"],
                            labels=[["0", "1", "2"], None])
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["teacher", "reduced"]
    # One dashed hyperplane per neuron with w != 0.
    assert sum(line.get_linestyle() == "--" for line in fig.axes[0].get_lines()) == 3
    with pytest.raises(ValueError, match="one title per network"):
        hyperplane_panels([teacher], ["a", "b"])
    with pytest.raises(ValueError, match="2-D input"):
        draw_hyperplanes(fig.axes[0], teacher_net("relu", 3, 2, seed=0))


def test_flip_search_fallback_for_many_groups():
    # With the exhaustive search ruled out, the rounded least-squares relaxation finds the flip.
    teacher = teacher_net("softplus", 3, 2, seed=4)
    bld = Builder(teacher, np.random.default_rng(8))
    bld.add_teacher_neuron(0, 1, [True])
    bld.add_teacher_neuron(1, 1, [False])
    student, labels, tags = bld.build(permute=False)
    res = reduce_network(student, config=SymmetryConfig(max_flip_subsets=1))
    assert res.status.exact, res.reason
    assert res.layers[0].flipped == (0,)
    assert rmse(res.network, teacher, 3) <= 1e-12


def test_groups_summing_to_zero_are_typed_by_what_they_leave():
    teacher = teacher_net("relu", 2, 2, seed=0)
    W, b = teacher.layers[0].weight, teacher.layers[0].bias
    a, c = teacher.layers[1].weight, teacher.layers[1].bias
    # A zero-type group off-bound (flat side): still a zero-type group, not two constants.
    off = np.array([1.0, 1.0])
    Ws = np.vstack([W, off, 2 * off])
    bs = np.concatenate([b, [-5.0, -10.0]])
    As = np.hstack([a, [[0.6, -0.3]]])
    res = reduce_network(MLP.from_arrays([Ws, As], [bs, c], ["relu", "identity"]))
    assert res.types == ("neuron", "neuron", "zero", "zero")
    assert res.neurons[2].note == "zero-type group"
    # Sigmoid: a(σ(z) + σ(-z))... with weights a and a on ±v sums to zero and leaves 2 c0 a.
    v, a0 = np.array([[0.7, -1.2]]), 0.9
    sig = MLP.from_arrays(
        [np.vstack([v, -v]), np.array([[a0, a0]])], [np.array([0.3, -0.3]), np.zeros(1)],
        ["sigmoid", "identity"],
    )
    res = reduce_network(sig)
    assert res.types == ("constant", "constant")
    assert res.neurons[0].note == "constant-type group"
    assert res.network.layers[1].bias[0] == pytest.approx(a0)  # 2 c0 a with c0 = 1/2


def test_notes_are_enums_that_reports_write_as_their_text():
    import json

    from ecflow.symmetry import NeuronNote

    _, student, _, _ = relu_flipped_student()
    res = reduce_network(student)
    assert all(isinstance(n.note, NeuronNote) for n in res.neurons)
    assert res.neurons[0].note is NeuronNote.FLIPPED_DUPLICATE
    report = json.loads(json.dumps(res.report()))
    assert [n["note"] for n in report["neurons"]] == [n.note.value for n in res.neurons]
    assert not any(n.note.collective for n in res.neurons)


def test_reduction_steps_default_domain_is_the_config_domain():
    from ecflow.symmetry.reduce import domain_points

    teacher = teacher_net("softplus", 2, 2, seed=1)
    bld = Builder(teacher, np.random.default_rng(3))
    bld.add_teacher_neuron(0, 2, [False, True])
    bld.add_teacher_neuron(1, 1, [False])
    student, _, _ = bld.build(permute=False)
    res = reduce_network(student)
    config = SymmetryConfig(n_verify=500, seed=7)
    by_config = reduction_steps(res, config=config)
    by_points = reduction_steps(res, domain_points(config, 2))
    for a, b in zip(by_config, by_points):
        np.testing.assert_array_equal(a.theta, b.theta)
    default = reduction_steps(res)
    explicit = reduction_steps(res, domain_points(SymmetryConfig(), 2))
    np.testing.assert_array_equal(default[-1].theta, explicit[-1].theta)
