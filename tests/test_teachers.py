"""Synthetic teachers (appendix A.4): construction rules, normalisation, reproducibility."""

import numpy as np
import pytest

from ecflow.teachers import (
    INPUT_HALF_WIDTH,
    TeacherConfig,
    parse_hidden,
    sample_inputs,
    synthetic_teacher,
)

BIASES = np.array([-2, -1, 0, 1, 2]) / 3 * np.sqrt(3) * 3


@pytest.mark.parametrize("d_in,r,act", [(2, 2, "g"), (4, 4, "g"), (8, 3, "tanh"), (16, 8, "relu")])
def test_shallow_teacher_rules(d_in, r, act):
    net = synthetic_teacher(TeacherConfig(d_in, (r,), act), seed=3)
    W, b = net.layers[0].weight, net.layers[0].bias
    assert net.sizes == (d_in, r, 1)
    assert net.activations[0].name == act and net.activations[-1].name == "identity"
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 3.0)
    # entries of w/||w|| * ||w|| come from {-1, 0, 1}
    unnorm = W / 3 * np.sqrt((np.abs(W) > 1e-12).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(unnorm, np.round(unnorm), atol=1e-12)
    assert set(np.round(np.abs(unnorm).ravel())) <= {0.0, 1.0}
    assert all(np.isclose(BIASES, v).any() for v in b)
    rows = np.hstack([W, b[:, None]])
    for i in range(r):
        for j in range(i + 1, r):
            assert not np.allclose(rows[i], rows[j]) and not np.allclose(rows[i], -rows[j])


@pytest.mark.parametrize("hidden", [(4,), (8, 4, 2), (6, 3)])
def test_output_standardised(hidden):
    net = synthetic_teacher(TeacherConfig(4, hidden), seed=1)
    y = net(sample_inputs(100_000, 4, 12345))
    assert abs(y.mean()) < 0.01
    assert abs(y.std() - 1) < 0.01


def test_deep_teacher_layers_receive_standardised_inputs():
    cfg = TeacherConfig(8, (4, 2))
    net = synthetic_teacher(cfg, seed=2)
    # the teacher standardises over its own normalisation sample (seeded [seed, 1])
    x = sample_inputs(cfg.n_normalise, 8, np.random.default_rng([2, 1]))
    h1 = net.hidden(x, 0)
    mu, sd = h1.mean(axis=0), h1.std(axis=0)
    # unfolding the standardisation gives the A.4 draw on standardised inputs: 3 w/||w||, 3 b
    W = net.layers[1].weight * sd
    b = net.layers[1].bias + net.layers[1].weight @ mu
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 3.0)
    assert all(np.isclose(BIASES, v).any() for v in b)
    pre = ((h1 - mu) / sd) @ W.T + b
    np.testing.assert_allclose(pre, h1 @ net.layers[1].weight.T + net.layers[1].bias, atol=1e-9)


@pytest.mark.parametrize("hidden", [(4, 2), (6, 4, 2)])
def test_deep_teacher_has_no_dead_neuron(hidden):
    # With ternary weights a 4-2 draw leaves a first-layer neuron without outgoing weights for
    # about a third of the seeds (103 among them); such a neuron is invisible at the output.
    for seed in range(100, 140):
        net = synthetic_teacher(TeacherConfig(8, hidden, n_normalise=1000), seed=seed)
        for layer in net.layers[1:]:
            assert np.all(np.any(layer.weight != 0.0, axis=0)), (seed, layer.weight)


def test_reproducible_by_seed():
    a = synthetic_teacher(TeacherConfig(4, (4,)), seed=5).flatten()
    b = synthetic_teacher(TeacherConfig(4, (4,)), seed=5).flatten()
    c = synthetic_teacher(TeacherConfig(4, (4,)), seed=6).flatten()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(sample_inputs(5, 3, 1), sample_inputs(5, 3, 1))


def test_inputs_distribution():
    x = sample_inputs(200_000, 3, 0)
    assert x.min() >= -INPUT_HALF_WIDTH and x.max() <= INPUT_HALF_WIDTH
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=0.01)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(d_in=0, hidden=(2,)), "d_in must be a positive integer"),
        (dict(d_in=2, hidden=()), "at least one hidden"),
        (dict(d_in=2, hidden=(0,)), "hidden layer size must be a positive integer"),
        (dict(d_in=2, hidden=(2,), activation="nope"), "unknown activation"),
        (dict(d_in=2.5, hidden=(2,)), "d_in must be an integer"),
    ],
)
def test_config_validation(kwargs, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        TeacherConfig(**kwargs)


def test_impossible_teacher():
    with pytest.raises(ValueError, match="cannot draw 20 distinct neurons"):
        synthetic_teacher(TeacherConfig(1, (20,)), seed=0)


def test_parse_hidden():
    assert parse_hidden("8,4,2") == (8, 4, 2)
    for bad in ["", "8,,2", "a", "0", "-1"]:
        with pytest.raises(ValueError):
            parse_hidden(bad)
