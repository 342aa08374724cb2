"""Expansion phase: student seeds and widths, training one student and many (in-process, pools)."""

import concurrent.futures as cf

import numpy as np
import pytest

from ecflow import teachers
from ecflow.engines.base import TrainConfig, TrainResult
from ecflow.expansion import student_seeds, student_width, train_student, train_students
from ecflow.networks import glorot_normal
from ecflow.parallel import make_executor

TEACHER = teachers.synthetic_teacher(teachers.TeacherConfig(2, (1,), "tanh"), 0)
X = teachers.sample_inputs(300, 2, 0)
Y = TEACHER.forward(X)
QUICK = TrainConfig(max_seconds=3.0, max_steps=200)


def test_student_seeds_are_reproducible_and_distinct():
    a = student_seeds(0, 10)
    assert a == student_seeds(0, 10)
    assert len(set(a)) == 10
    assert student_seeds(0, 3) == a[:3]
    assert set(student_seeds(1, 10)).isdisjoint(a)
    with pytest.raises(ValueError, match="n_students"):
        student_seeds(0, 0)
    with pytest.raises(TypeError, match="n_students"):
        student_seeds(0, 2.0)


def test_student_width():
    assert student_width(4, 4) == 16
    assert student_width(3, 1.5) == 5
    assert student_width(3, 2.0) == 6
    with pytest.raises(ValueError, match="rho"):
        student_width(4, 0)


def test_train_student_starts_from_glorot_and_is_reproducible():
    res = train_student(X, Y, hidden=(3,), activation="tanh", seed=7, config=QUICK)
    assert isinstance(res, TrainResult)
    assert res.network.sizes == (2, 3, 1)
    assert [a.name for a in res.network.activations] == ["tanh", "identity"]
    init = glorot_normal((2, 3, 1), ["tanh", "identity"], 7)
    init_loss = float(np.mean((init.forward(X) - Y) ** 2))
    assert res.loss < init_loss
    again = train_student(X, Y, hidden=(3,), activation="tanh", seed=7, config=QUICK)
    assert again.loss == pytest.approx(res.loss, rel=1e-6, abs=1e-25)


def test_train_students_in_process_and_in_an_executor_agree():
    calls = []
    seeds = student_seeds(3, 2)
    local = train_students(X, Y, hidden=(2,), activation="tanh", seeds=seeds, config=QUICK,
                           progress=lambda d, n: calls.append((d, n)))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    with cf.ThreadPoolExecutor(2) as ex:
        threaded = train_students(X, Y, hidden=(2,), activation="tanh", seeds=seeds,
                                  config=QUICK, executor=ex)
    for a, b in zip(local, threaded):
        np.testing.assert_allclose(a.network.flatten(), b.network.flatten(), rtol=1e-6,
                                   atol=1e-9)


def test_train_students_in_a_process_pool():
    # train_student must pickle (spawned workers import it by name).
    with make_executor(workers=1) as ex:
        out = train_students(X, Y, hidden=(2,), activation="tanh", seeds=[1], config=QUICK,
                             executor=ex)
    assert len(out) == 1 and out[0].network.sizes == (2, 2, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden=()), "hidden"),
        (dict(hidden=(0,)), "hidden"),
        (dict(activation="nope"), "unknown activation"),
        (dict(seeds=[]), "seeds"),
    ],
)
def test_train_students_rejects_bad_input(kwargs, match):
    args = {**dict(hidden=(2,), activation="tanh", seeds=[0], config=QUICK), **kwargs}
    with pytest.raises(ValueError, match=match):
        train_students(X, Y, **args)


def test_train_student_rejects_bad_pairs():
    with pytest.raises(ValueError, match="same number of samples"):
        train_student(X, Y[:5], hidden=(2,), activation="tanh", seed=0, config=QUICK)
    with pytest.raises(TypeError, match="floating"):
        train_student(X.astype(int), Y, hidden=(2,), activation="tanh", seed=0, config=QUICK)


class _Spy:
    """Records the initial network the engine is given (then trains it for real)."""

    def __init__(self, monkeypatch):
        import ecflow.expansion as expansion

        real = expansion.get_engine
        self.inits = []

        def get_engine(name):
            engine = real(name)
            spy = self

            class Engine:
                def train(self, x, y, init, config, **kw):
                    spy.inits.append(init)
                    return engine.train(x, y, init, config, **kw)

            return Engine()

        monkeypatch.setattr(expansion, "get_engine", get_engine)


def test_deep_students_start_with_standardised_layer_inputs(monkeypatch):
    from ecflow.networks import MLP, standardise_inputs

    spy = _Spy(monkeypatch)
    x = teachers.sample_inputs(400, 2, 1)
    y = np.tanh(x @ [[1.0], [-0.5]])
    cfg = TrainConfig(max_steps=1, max_seconds=2.0)
    train_student(x, y, hidden=(3,), activation="g", seed=3, config=cfg)
    shallow = spy.inits[-1]
    np.testing.assert_array_equal(
        shallow.flatten(), glorot_normal((2, 3, 1), ["g", "identity"], 3).flatten()
    )
    train_student(x, y, hidden=(4, 3), activation="g", seed=3, config=cfg)
    deep = spy.inits[-1]
    glorot = glorot_normal((2, 4, 3, 1), ["g", "g", "identity"], 3)
    np.testing.assert_array_equal(deep.layers[0].weight, glorot.layers[0].weight)
    for k in (1, 2):
        h = deep.hidden(x, k - 1)
        # the glorot layer on standardised inputs: the same function of (h - mean) / std
        z = (h - h.mean(axis=0)) / h.std(axis=0)
        g = glorot.layers[k]
        np.testing.assert_allclose(
            h @ deep.layers[k].weight.T + deep.layers[k].bias, z @ g.weight.T + g.bias, atol=1e-12
        )
        assert deep.layers[k].weight.shape == g.weight.shape
    # over frozen layers: their weights stay, the first trained layer gets standardised inputs
    fixed = glorot.layers[:1]
    train_student(x, y, hidden=(3,), activation="g", seed=3, config=cfg, fixed=fixed)
    on_fixed = spy.inits[-1]
    np.testing.assert_array_equal(on_fixed.layers[0].weight, fixed[0].weight)
    h = on_fixed.hidden(x, 0)
    expect = standardise_inputs(glorot_normal((4, 3, 1), ["g", "identity"], 3).layers[0], h)
    np.testing.assert_allclose(on_fixed.layers[1].weight, expect.weight)
    assert isinstance(on_fixed, MLP)
