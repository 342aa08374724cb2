"""Teachers queried on data that does not span the input space (issue 16): the revealed basis,
clustering on pre-activations, minimum-norm reconstruction, and the first-order training path."""

import math

import numpy as np
import pytest
from test_reconstruction import exact_students, make_teacher

from ecflow import metrics, teachers
from ecflow.engines import get_engine
from ecflow.engines.base import TrainConfig, TrainResult, TrainStatus
from ecflow.networks import MLP, Layer, glorot_normal
from ecflow.recover import RecoverConfig, RecoverStatus, reconstruct_from_students


def as_result(net, loss):
    return TrainResult(
        network=net, loss=loss, rmse=math.sqrt(loss), grad_norm=0.0,
        status=TrainStatus.CONVERGED_LOSS, stopped_by="test", steps=0, seconds=0.0,
        history=np.zeros((0, 2)), engine="test",
    )


def blank_column(x, k):
    x = x.copy()
    x[:, k] = 0.0  # a pixel that never varies
    return x


def with_junk(net, k, rng):
    """``net`` with random weights on input ``k``: invisible on queries where it is 0."""
    hid = net.layers[0]
    w = hid.weight.copy()
    w[:, k] = rng.normal(scale=3.0, size=w.shape[0])
    return MLP((Layer(w, hid.bias, hid.activation), *net.layers[1:]))


def test_revealed_basis_only_for_rank_deficient_queries():
    x = teachers.sample_inputs(200, 4, 0)
    assert metrics.revealed_basis(x) is None
    basis = metrics.revealed_basis(blank_column(x, 2))
    assert basis.rank == 4 and basis.v.shape == (5, 4)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(2, 5))
    xb = np.hstack([blank_column(x, 2), np.ones((200, 1))])
    # coordinates keep the pre-activations' cosines
    np.testing.assert_allclose(
        metrics.cosine_distances(basis.coordinates(a), basis.coordinates(b), "odd"),
        metrics.cosine_distances((xb @ a.T).T, (xb @ b.T).T, "odd"), atol=1e-12,
    )
    p = basis.project(a)
    np.testing.assert_allclose(xb @ p.T, xb @ a.T, atol=1e-12)
    assert np.all(np.abs(p[:, 2]) < 1e-12)  # minimum norm: nothing on the unseen input


def test_reconstruction_ignores_unrevealed_weights():
    rng = np.random.default_rng(1)
    teacher = with_junk(make_teacher("tanh", d_in=3, r=3, seed=11), 1, rng)
    nets = [with_junk(n, 1, rng) for n in exact_students("tanh", teacher, rng)]
    x = blank_column(teachers.sample_inputs(500, 3, 0), 1)
    students = [as_result(n, v) for n, v in zip(nets, [1e-32, 1e-30, 1e-30, 1e-30])]
    config = RecoverConfig(finetune=TrainConfig(max_seconds=5.0, max_steps=300))
    rec = reconstruct_from_students(
        x, teacher.forward(x), students, config=config, teacher=teacher
    )
    assert rec.status is RecoverStatus.RECOVERED, rec.reason
    assert rec.hidden_sizes == (3,)
    assert rec.rmse_train < 1e-12
    assert rec.max_cosine_distance < 1e-20
    assert rec.to_report()["mean_cosine_distance"] < 1e-20
    assert np.all(rec.network.layers[0].weight[:, 1] == 0.0) or np.all(
        np.abs(rec.network.layers[0].weight[:, 1]) < 1e-12)
    assert any("pre-activations over the query inputs" in n for n in rec.notes)


def test_large_problems_train_first_order():
    x = teachers.sample_inputs(300, 3, 0)
    y = np.sin(x[:, :2])
    init = glorot_normal((3, 4, 2), ["tanh", "identity"], 0)
    engine = get_engine("native")
    first = engine.train(x, y, init, TrainConfig(max_seconds=2.0, first_order_above=1000.0))
    assert any("first_order_above" in n for n in first.notes)
    assert first.stopped_by.startswith("l-bfgs")
    dense = engine.train(x, y, init, TrainConfig(max_seconds=2.0, max_steps=20))
    assert not dense.notes and not dense.stopped_by.startswith("l-bfgs")


def test_first_order_above_is_validated():
    with pytest.raises(Exception, match="first_order_above"):
        TrainConfig(first_order_above=-1.0)
    with pytest.raises(Exception, match="first_order_above"):
        RecoverConfig(first_order_above=-1.0)


def test_recovery_students_past_the_threshold_train_first_order():
    config = RecoverConfig(rho=4)
    # a digits teacher with r 12 at rho 4: 3610 parameters x 17970 residuals
    train, note = config.students_train(64, 48, 10, 1797)
    assert train.first_order_above == 4e7 and train.target_loss == 1e-6
    assert train.stall_factor == 0 and "L-BFGS" in note
    # the sweep's largest rho-4 students (d_in 32, r 8) keep LM, the stall rule and 1e-14
    train, note = config.students_train(32, 32, 1, 30000)
    assert note is None and train.first_order_above is None
    assert train.target_loss == 1e-14 and train.stall_factor == 3.0


def test_recover_cli_default_queries(tmp_path):
    from ecflow import networks
    from ecflow.cli.recover_cmd import _default_queries

    net = glorot_normal((64, 3, 10), ["tanh", "identity"], 0)
    x = np.zeros((5, 64))
    named = networks.write_network(tmp_path / "a.h5", net, x=x, y=net.forward(x),
                                   attrs={"dataset": "digits"})
    q, note = _default_queries(named, networks.read_network_file(named))
    assert q.shape == (1797, 64) and "all 1797 images of digits" in note
    plain = networks.write_network(tmp_path / "b.h5", net, x=x, y=net.forward(x))
    q, note = _default_queries(plain, networks.read_network_file(plain))
    assert q.shape == (5, 64) and "/queries/x" in note
    bare = networks.write_network(tmp_path / "c.h5", net)
    assert _default_queries(bare, networks.read_network_file(bare)) == (None, None)
