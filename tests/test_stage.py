"""One stage for any layer: clustering and collapse of trained students, the source rule, the
work folder of a stage and its bad input; and the context values the stages share."""

import dataclasses

import numpy as np
import pytest
from test_recover import as_result
from test_reconstruction import exact_students, make_teacher

from ecflow import metrics, teachers
from ecflow.budget import Budget
from ecflow.clustering import ClusterConfig
from ecflow.context import Queries, Run
from ecflow.engines.base import TrainStatus
from ecflow.errors import InputError
from ecflow.networks import MLP, Layer
from ecflow.stage import Source, StageConfig, cluster_stage, run_stage, zero_loss_students


def _exact(act="tanh", seed=11):
    teacher = make_teacher(act, d_in=3, r=3, seed=seed)
    nets = exact_students(act, teacher, np.random.default_rng(1))
    x = teachers.sample_inputs(400, 3, 0)
    return teacher, nets, Queries(x, teacher.forward(x), teacher=teacher)


@pytest.mark.parametrize("source", list(Source))
def test_cluster_stage_rebuilds_the_teacher_layer_from_exact_students(source):
    teacher, nets, queries = _exact()
    losses = [1e-30, 1e-32, 1e-30, 1e-30]
    students = [as_result(n, v) for n, v in zip(nets, losses)]
    stage = cluster_stage(queries, Run(), students, config=StageConfig(n_students=4, source=source))
    assert stage.layer_out is not None and stage.layer_out.n_out == 3
    assert len(stage.neurons) == 3 and all(c.layer == 1 for c in stage.neurons)
    if source is Source.LOWEST_LOSS:
        assert {c.source_student for c in stage.neurons} == {1}
    hidden = stage.layer_out
    v = np.hstack([hidden.weight, hidden.bias[:, None]])
    vt = np.hstack([teacher.layers[0].weight, teacher.layers[0].bias[:, None]])
    match = metrics.match_vectors(vt, v, teacher.layers[0].activation.symmetry)
    assert match.complete and match.max_distance < 1e-20
    # students trained elsewhere: no rounds, so no counts and no statuses
    assert stage.rounds == () and stage.status_counts() == {} and stage.count("n_trained") == 0


def test_cluster_stage_without_a_big_cluster_rebuilds_nothing():
    teacher, nets, queries = _exact()
    students = [as_result(nets[0], 1e-30)]
    stage = cluster_stage(queries, Run(), students, config=StageConfig(
        n_students=5, cluster=ClusterConfig(gamma=1.0)))
    assert stage.layer_out is None and stage.neurons == ()


def test_stage_reads_students_back_only_from_a_work_folder(tmp_path):
    teacher, nets, queries = _exact()
    args = dict(layer=1, fixed=(), widths=(4,), activation="tanh", seeds=[0, 1],
                config=StageConfig(n_students=2))
    with pytest.raises(InputError, match="recovery.json"):
        run_stage(queries, Run(work_dir=tmp_path / "none", train=False), Budget(), **args)
    with pytest.raises(InputError, match="fixed layers"):
        run_stage(queries, Run(), Budget(), **{**args, "layer": 2})


def test_stage_config_and_queries_validate():
    with pytest.raises(ValueError, match="n_students"):
        StageConfig(n_students=0)
    with pytest.raises(TypeError, match="source"):
        StageConfig(source="medoid")
    assert StageConfig(n_students=10, cluster=ClusterConfig(gamma=0.3)).quorum == 3
    x = np.zeros((5, 2))
    with pytest.raises(InputError, match="both"):
        Queries(x, np.zeros((5, 1)), x_fresh=x)
    with pytest.raises(InputError, match="do not match"):
        Queries(x, np.zeros((5, 1)), x_fresh=np.zeros((3, 3)), y_fresh=np.zeros((3, 1)))
    calls = []
    Run(progress=lambda *a: calls.append(a)).tick("pruning", 1, 2)
    assert calls == [("pruning", 1, 2)] and Run().ticker("x") is None


def _blank_pixel_students(n_students=4, seed=3):
    """A deep tanh teacher queried on inputs whose first coordinate is always 0 (a blank pixel),
    and exact students: the teacher with its first layer permuted (the layer above compensates)
    and random first-layer weights on the blank input, which no query can see."""
    t = teachers.synthetic_teacher(
        teachers.TeacherConfig(d_in=4, hidden=(3, 2), activation="tanh"), seed=seed)
    x = teachers.sample_inputs(400, 4, 0)
    x[:, 0] = 0.0
    rng = np.random.default_rng(seed)
    students = []
    for _ in range(n_students):
        perm = rng.permutation(3)
        w1 = t.layers[0].weight[perm].copy()
        w1[:, 0] = rng.normal(scale=3.0, size=3)
        l1 = Layer(w1, t.layers[0].bias[perm], "tanh")
        l2 = Layer(t.layers[1].weight[:, perm], t.layers[1].bias, "tanh")
        students.append(MLP((l1, l2, t.layers[2])))
    return t, Queries(x, t.forward(x), teacher=t), students


def test_deep_first_layer_is_clustered_on_what_the_queries_reveal():
    t, queries, nets = _blank_pixel_students()
    assert all(metrics.rmse(n, queries.x, queries.y) < 1e-13 for n in nets)
    students = [as_result(n, 1e-30) for n in nets]
    stage = cluster_stage(queries, Run(), students, layer=1, config=StageConfig(n_students=4),
                          shallow=False)
    # On raw [w, b] the random weights on the blank input scatter every teacher neuron's copies.
    assert stage.basis is not None and stage.basis.rank == 4
    assert stage.layer_out is not None and stage.layer_out.n_out == 3
    pre = queries.x @ stage.layer_out.weight.T + stage.layer_out.bias
    pre_t = queries.x @ t.layers[0].weight.T + t.layers[0].bias
    match = metrics.match_vectors(pre_t.T, pre.T, t.layers[0].activation.symmetry)
    assert match.complete and match.max_distance < 1e-20


def test_a_stage_keeps_the_orientation_of_the_layer_below_that_its_students_need():
    from test_layerwise import _mixed_student, _teacher

    from ecflow.layerwise import doubled
    from ecflow.stage import _bias_rule, _oriented

    t, x, y = _teacher("softplus", hidden=(5, 3), d_in=3, seed=4)
    rng = np.random.default_rng(1)
    nets = [_mixed_student(t, [0, 2], rng) for _ in range(3)]
    results = [as_result(n, v) for n, v in zip(nets, (1e-20, 1e-22, 1e-21))]
    # Every neuron of the doubled layer has one steady orientation: none is dropped.
    rule = _bias_rule(results, 2, 5, 0.01, pairs=True)
    assert list(rule.keep) == [0, 1, 2, 3, 4] and rule.dropped == () and len(rule.spread) == 5
    students, fixed, note = _oriented(Queries(x, y), results, (nets[0].layers[0],), None, 2)
    assert fixed[0].n_out == 5 and "flipped: 0, 2" in note
    np.testing.assert_allclose(fixed[0].weight, t.layers[0].weight, atol=1e-12)
    assert all(metrics.rmse(r.network, x, y) < 1e-10 for r in students)
    stage = cluster_stage(Queries(x, y), Run(), students, layer=2, fixed=fixed,
                          config=StageConfig(n_students=3), shallow=False)
    assert stage.layer_out is not None and stage.layer_out.n_out == 3
    assert doubled(fixed[0]).n_out == 10


def test_a_doubled_layer_below_loses_no_neuron_to_the_bias_rule(monkeypatch):
    import ecflow.stage as stage_mod
    from test_layerwise import _mixed_student, _teacher

    from ecflow.expansion import Expansion

    t, x, y = _teacher("softplus", hidden=(5, 3), d_in=3, seed=4)
    rng = np.random.default_rng(2)
    nets = []
    for _ in range(3):
        net = _mixed_student(t, [0, 2], rng)
        lay = net.layers[0]
        bias = lay.bias.copy()
        bias[[1, 6]] += rng.normal(scale=0.5, size=2)  # neuron 1 unsteady in both orientations
        nets.append(MLP((Layer(lay.weight, bias, lay.activation), *net.layers[1:])))
    results = tuple(as_result(n, v) for n, v in zip(nets, (1e-20, 1e-22, 1e-21)))

    def trained(queries, run, budget, *, fixed, **kwargs):
        assert fixed[-1].n_out == 10  # the students read both orientations
        return Expansion(results, (False,) * 3, None, 0.0), []

    monkeypatch.setattr(stage_mod, "_students", trained)
    below = Layer(nets[0].layers[0].weight[:5], nets[0].layers[0].bias[:5], "softplus")
    stage = run_stage(Queries(x, y), Run(), Budget(), layer=2, fixed=(below,), widths=(3,),
                      activation="softplus", seeds=[0, 1, 2], config=StageConfig(n_students=3))
    assert stage.dropped_below == () and stage.kept_below == (0, 1, 2, 3, 4)
    assert any("drops no neuron of layer 1, read in both orientations" in n for n in stage.notes)
    assert stage.fixed[0].n_out == 5 and any("flipped: 0, 2" in n for n in stage.notes)


def test_relu_students_read_the_layer_below_as_reconstructed(monkeypatch):
    import ecflow.stage as stage_mod
    from test_layerwise import _teacher

    from ecflow.expansion import Expansion

    t, x, y = _teacher("relu", hidden=(3, 2), d_in=3, seed=1)
    seen = []

    def trained(queries, run, budget, *, fixed, **kwargs):
        seen.append(fixed[-1].n_out)
        return Expansion((as_result(t, 1e-20),) * 2, (False,) * 2, None, 0.0), []

    monkeypatch.setattr(stage_mod, "_students", trained)
    stage = run_stage(Queries(x, y), Run(), Budget(), layer=2, fixed=(t.layers[0],),
                      widths=(2,), activation="relu", seeds=[0, 1],
                      config=StageConfig(n_students=2))
    assert seen == [3] and stage.fixed[0].n_out == 3
    assert not any("orientation" in n for n in stage.notes)


def _rotated(v, deg, rng):
    """``v`` turned by ``deg`` degrees towards a random orthogonal direction, same norm."""
    u = rng.normal(size=v.shape)
    u -= (u @ v) / (v @ v) * v
    u *= np.linalg.norm(v) / np.linalg.norm(u)
    t = np.deg2rad(deg)
    return np.cos(t) * v + np.sin(t) * u


def _stalled_majority(n_good=3, n_stalled=7, seed=5):
    """``n_good`` exact students of a g teacher (d_in 3, r 3) at zero loss, and ``n_stalled``
    stalled ones that hold its neurons 0 and 1 exactly but neuron 2 as a stand-in 40 degrees
    off (more than beta), the same in each up to 1e-4 degrees of jitter: the stand-ins
    outnumber the teacher's neuron."""
    rng = np.random.default_rng(seed)
    teacher = make_teacher("g", d_in=3, r=3, seed=seed)
    V = np.hstack([teacher.layers[0].weight, teacher.layers[0].bias[:, None]])
    a = teacher.layers[1].weight
    stand_in = _rotated(V[2], 40.0, rng)
    students = []
    for s in range(n_good + n_stalled):
        rows = V.copy()
        if s >= n_good:
            rows[2] = _rotated(stand_in, 1e-4, rng)
        net = MLP.from_arrays([rows[:, :-1], a], [rows[:, -1], teacher.layers[1].bias],
                              ["g", "identity"])
        result = as_result(net, 1e-30 if s < n_good else 1e-9)
        if s >= n_good:
            result = dataclasses.replace(result, status=TrainStatus.STALLED)
        students.append(result)
    x = teachers.sample_inputs(200, 3, 0)
    return teacher, V, students, Queries(x, teacher.forward(x), teacher=teacher)


def _holds(layer, v):
    rows = np.hstack([layer.weight, layer.bias[:, None]])
    return float(metrics.cosine_distances(rows, v[None, :], layer.activation.symmetry).min())


def test_stalled_students_outnumbering_the_zero_loss_ones_are_not_clustered():
    teacher, V, students, queries = _stalled_majority()
    plain = cluster_stage(queries, Run(), students, config=StageConfig(n_students=10))
    # the stand-ins reach the quorum of 5, the teacher's neuron (3 students) does not
    assert _holds(plain.layer_out, V[2]) > 0.1
    config = StageConfig(n_students=10, zero_loss_quorum=True)
    assert list(zero_loss_students(students, config)) == [0, 1, 2]
    stage = cluster_stage(queries, Run(), students, config=config)
    assert stage.layer_out.n_out == 3
    assert max(_holds(stage.layer_out, v) for v in V) < 1e-20
    assert any("3 of 10 students reached the student loss" in n for n in stage.notes)
    # certificates name the students by their place among all of them
    assert all(set(c.students) <= {0, 1, 2} for c in stage.neurons)


@pytest.mark.parametrize("n_good, expected", [(1, None), (5, None), (7, None), (2, [0, 1])])
def test_zero_loss_students_only_between_two_and_the_quorum(n_good, expected):
    students = _stalled_majority(n_good=n_good, n_stalled=10 - n_good)[2]
    got = zero_loss_students(students, StageConfig(n_students=10, zero_loss_quorum=True))
    assert (got if got is None else list(got)) == expected
    assert zero_loss_students(students, StageConfig(n_students=10)) is None
    with pytest.raises(TypeError, match="zero_loss_quorum"):
        StageConfig(zero_loss_quorum=1)
