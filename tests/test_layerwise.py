"""Layer-wise recovery of deep networks: the refit, pruning, teacher match, frozen students and
the stage of a layer above the first."""

from __future__ import annotations

import numpy as np
import pytest

from ecflow import metrics
from ecflow.engines import get_engine
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.expansion import train_student
from ecflow.budget import Budget
from ecflow.context import Queries, Run
from ecflow.layerwise import _on_rows, doubled, match_layers, orient_below
from ecflow.networks import MLP, Layer
from ecflow.reconstruction import prune_network, refit_output, remove_hidden_neuron
from ecflow.stage import StageConfig, run_stage
from ecflow.teachers import TeacherConfig, sample_inputs, synthetic_teacher


def _teacher(act="g", hidden=(3, 2), d_in=3, seed=1):
    t = synthetic_teacher(TeacherConfig(d_in=d_in, hidden=hidden, activation=act), seed=seed)
    x = sample_inputs(800, d_in, 0)
    return t, x, t.forward(x)


def _with_duplicate(net: MLP, layer: int, neuron: int, share: float) -> MLP:
    """``net`` with neuron ``neuron`` of hidden layer ``layer`` copied, its outgoing weights split
    ``share`` / ``1 - share`` between the copies: the same function, one neuron more."""
    lyr, above = net.layers[layer], net.layers[layer + 1]
    w = np.vstack([lyr.weight, lyr.weight[neuron]])
    b = np.append(lyr.bias, lyr.bias[neuron])
    a = np.hstack([above.weight, share * above.weight[:, [neuron]]])
    a[:, neuron] *= 1 - share
    layers = list(net.layers)
    layers[layer] = Layer(w, b, lyr.activation)
    layers[layer + 1] = Layer(a, above.bias, above.activation)
    return MLP(tuple(layers))


@pytest.mark.parametrize("layer", [0, 1])
def test_removing_a_duplicate_with_the_refit_is_exact(layer):
    t, x, y = _teacher()
    wide = _with_duplicate(t, layer, 1, 0.3)
    assert metrics.rmse(wide, x, y) < 1e-14
    smaller = remove_hidden_neuron(wide, layer, 1, x, y)
    assert smaller.hidden_sizes == t.hidden_sizes
    assert metrics.rmse(smaller, x, y) < 1e-12
    # A neuron the function needs cannot go.
    assert metrics.rmse(remove_hidden_neuron(t, layer, 0, x, y), x, y) > 1e-3


def test_remove_hidden_neuron_rejects_bad_indices():
    t, x, y = _teacher()
    with pytest.raises(InputError, match="hidden layer index"):
        remove_hidden_neuron(t, 2, 0, x, y)
    with pytest.raises(InputError, match="neurons"):
        remove_hidden_neuron(t, 0, 3, x, y)
    one = synthetic_teacher(TeacherConfig(d_in=2, hidden=(2, 1)), seed=0)
    with pytest.raises(InputError, match="last neuron"):
        remove_hidden_neuron(one, 1, 0, x[:, :2], y)


def test_refit_output_recovers_the_output_layer_of_a_deep_network():
    t, x, y = _teacher()
    out = t.layers[-1]
    blank = t.replace_layer(
        2, Layer(np.zeros_like(out.weight), np.zeros_like(out.bias), "identity")
    )
    fitted = refit_output(blank, x, y)
    np.testing.assert_allclose(fitted.layers[-1].weight, out.weight, atol=1e-10)
    np.testing.assert_allclose(fitted.layers[-1].bias, out.bias, atol=1e-10)


def test_prune_network_removes_exactly_the_superfluous_neurons_of_every_layer():
    t, x, y = _teacher()
    wide = _with_duplicate(_with_duplicate(t, 0, 2, 0.6), 1, 0, 0.5)
    assert wide.hidden_sizes == (4, 3)
    result = prune_network(wide, x, y, engine=get_engine("native"),
                           train_config=TrainConfig(max_seconds=5))
    assert result.network.hidden_sizes == (3, 2)
    assert result.removed == ((3,), (2,))
    assert result.kept == ((0, 1, 2), (0, 1))
    assert result.rmse < 1e-12
    with pytest.raises(InputError, match="orders"):
        prune_network(wide, x, y, engine=get_engine("native"), train_config=TrainConfig(),
                      orders=[[0, 0], [1]])


@pytest.mark.parametrize("act", ["g", "tanh", "sigmoid"])
def test_match_layers_sees_through_permutations_and_flips(act):
    t, x, y = _teacher(act)
    # Permute and flip layer 1, compensating in layer 2 by the class's algebra (a flip of a
    # tanh neuron negates its column; of a sigmoid neuron also moves a constant to the bias).
    perm = np.array([2, 0, 1])
    sign = np.array([-1.0, 1.0, -1.0]) if act != "g" else np.ones(3)
    l1, l2 = t.layers[0], t.layers[1]
    w1, b1 = l1.weight[perm] * sign[:, None], l1.bias[perm] * sign
    w2, b2 = l2.weight[:, perm].copy(), l2.bias.copy()
    for k in np.flatnonzero(sign < 0):
        c = t.layers[0].activation.compensate(w2[:, [k]], np.array([-1]), np.array([1.0]),
                                              np.append(w1[k], b1[k]))
        w2[:, k], b2 = c.output_weight, b2 + c.bias
    twin = MLP((Layer(w1, b1, act), Layer(w2, b2, act), t.layers[2]))
    assert metrics.rmse(twin, x, y) < 1e-13
    matches = match_layers(twin, t)
    assert len(matches) == 2
    assert all(m.complete and m.max_distance < 1e-20 for m in matches)
    # A second layer that is off shows in the second match only.
    off = twin.replace_layer(1, Layer(w2 + 0.1, b2, act))
    first, second = match_layers(off, t)
    assert first.max_distance < 1e-20 and second.max_distance > 1e-4


def test_match_layers_with_a_basis_compares_the_first_layer_on_the_data():
    t, x, _ = _teacher("tanh", hidden=(3, 2), d_in=4)
    x = x.copy()
    x[:, 0] = 0.0  # a blank pixel: no query sees the first layer's weights on it
    perm, sign = np.array([1, 2, 0]), np.array([1.0, -1.0, 1.0])
    l1, l2 = t.layers[0], t.layers[1]
    w1 = l1.weight[perm] * sign[:, None]
    w1[:, 0] = np.random.default_rng(0).normal(scale=3.0, size=3)
    twin = MLP((Layer(w1, l1.bias[perm] * sign, "tanh"),
                Layer(l2.weight[:, perm] * sign, l2.bias, "tanh"), t.layers[2]))
    assert metrics.rmse(twin, x, t.forward(x)) < 1e-13
    raw = match_layers(twin, t)
    assert raw[0].max_distance > 1e-3
    first, second = match_layers(twin, t, metrics.revealed_basis(x))
    assert first.complete and first.max_distance < 1e-20
    assert second.complete and second.max_distance < 1e-20


def test_frozen_student_keeps_its_fixed_weights_and_learns_their_biases():
    t, x, y = _teacher()
    fixed = (Layer(t.layers[0].weight, np.zeros(3), "g"),)
    res = train_student(x, y, hidden=(4,), activation="g", seed=0, fixed=fixed,
                        config=TrainConfig(max_seconds=3))
    assert res.network.hidden_sizes == (3, 4)
    np.testing.assert_array_equal(res.network.layers[0].weight, t.layers[0].weight)
    assert np.any(res.network.layers[0].bias != 0.0)
    with pytest.raises(InputError, match="fixed layers take"):
        train_student(x[:, :2], y, hidden=(4,), activation="g", seed=0, fixed=fixed,
                      config=TrainConfig(max_seconds=1))


def test_stage_rejects_bad_input():
    t, x, y = _teacher()
    cfg = StageConfig(n_students=2)
    queries = Queries(x, y)
    with pytest.raises(InputError, match="fixed layers"):
        # stage 2 needs the reconstructed layer 1 under it
        run_stage(queries, Run(), Budget(), layer=2, fixed=(), widths=(4,), activation="g",
                  seeds=[0, 1], config=cfg)
    with pytest.raises(InputError, match="work folder"):
        Run(train=False)
    with pytest.raises(ValueError, match="bias_std_max"):
        StageConfig(bias_std_max=0)


def _mixed_student(teacher, flip, rng):
    """A student of ``teacher`` (two hidden layers) on both orientations of a first layer that
    was reconstructed with the neurons ``flip`` the wrong way round: its layer 2 uses the right
    twin of each neuron plus a mixture ``c σ(u) - c σ(-u)`` whose linear parts ``Σ c_k u_k``
    cancel, so it is exact without saying directly which twin is right."""
    l1, l2 = teacher.layers[0], teacher.layers[1]
    n = l1.n_out
    sign = np.ones(n)
    sign[list(flip)] = -1.0
    rec = Layer(l1.weight * sign[:, None], l1.bias * sign, l1.activation)
    both = doubled(rec)
    v = np.hstack([l1.weight, l1.bias[:, None]])
    c = np.linalg.svd(v.T)[2][-1] * rng.uniform(0.5, 2.0)  # Σ c_k [w_k, b_k] = 0
    assert np.allclose(c @ v, 0.0, atol=1e-12)
    w2 = np.zeros((l2.n_out, 2 * n))
    for k in range(n):
        right = k if sign[k] > 0 else k + n  # the row holding the teacher's σ(u_k)
        w2[:, right] += l2.weight[:, k] + c[k]
        w2[:, (k + n) if sign[k] > 0 else k] -= c[k]
    return MLP((both, Layer(w2, l2.bias, l2.activation), teacher.layers[2]))


@pytest.mark.parametrize("act", ["relu", "softplus", "gelu"])
def test_orient_below_keeps_the_orientation_the_layer_above_needs(act):
    t, x, y = _teacher(act, hidden=(5, 3), d_in=3, seed=4)
    rng = np.random.default_rng(0)
    # every student of a stage sees the same reconstructed layer below; their mixtures differ
    students = [_mixed_student(t, [1, 3], rng) for _ in range(3)]
    assert all(metrics.rmse(s, x, y) < 1e-12 for s in students)
    result = orient_below(students, x, 0)
    # the deciding student had neurons 1 and 3 flipped: their twins are kept
    assert result.flipped == (1, 3) and list(result.rows) == [0, 6, 2, 8, 4]
    assert result.n_exact == 3
    for net in result.networks:
        assert net.layers[0].n_out == 5
        assert metrics.rmse(net, x, y) < 1e-10
        np.testing.assert_allclose(net.layers[0].weight, t.layers[0].weight, atol=1e-12)
    # without the twins (the first layer as reconstructed), no layer 2 fits
    wrong = _on_rows(students[0], x, 0, np.arange(5))
    assert metrics.rmse(wrong, x, y) > 1e-3
    # greedy beyond the exhaustive limit finds it too
    assert orient_below(students, x, 0, max_exhaustive=2).flipped == (1, 3)


def test_orient_below_rejects_a_layer_that_is_not_doubled():
    t, x, _ = _teacher("relu", hidden=(3, 2))
    with pytest.raises(InputError, match="doubled"):
        orient_below([t], x, 0)
    with pytest.raises(InputError, match="at least one"):
        orient_below([], x, 0)
