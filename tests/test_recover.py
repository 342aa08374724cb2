"""The recovery pipeline: config validation, reconstruction from given students, report."""

import json
import math
import re

import numpy as np
import pytest
from test_reconstruction import exact_students, make_teacher

from ecflow import networks, teachers
from ecflow.engines.base import TrainConfig, TrainResult, TrainStatus
from ecflow.networks import MLP
from ecflow.config import DeepConfig, check_width_choice
from ecflow.recover import RecoverConfig, RecoverStatus, reconstruct_from_students, recover

QUICK = TrainConfig(max_seconds=5.0, max_steps=300)


def as_result(net, loss):
    return TrainResult(
        network=net, loss=loss, rmse=math.sqrt(loss), grad_norm=0.0,
        status=TrainStatus.CONVERGED_LOSS, stopped_by="test", steps=0, seconds=0.0,
        history=np.zeros((0, 2)), engine="test",
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n_students=0), "n_students"),
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=1.01), "gamma"),
        (dict(beta_deg=0.0), "beta_deg"),
        (dict(beta_deg=91.0), "beta_deg"),
        (dict(n_queries=0), "n_queries"),
        (dict(n_fresh=-1), "n_fresh"),
        (dict(rho=0.0), "rho"),
        (dict(rho=-2), "rho"),
        (dict(rho=float("inf")), "rho"),
        (dict(hidden=0), "hidden"),
        (dict(hidden=(4, 0)), "hidden"),
        (dict(hidden=()), "hidden"),
        (dict(deep=dict(bias_std_max=0.0)), "bias_std_max"),
        (dict(deep=dict(gamma=0.0)), "gamma"),
        (dict(deep=dict(student_loss=-1.0)), "student_loss"),
        (dict(deep=dict(student_seconds=0.0)), "student_seconds"),
        (dict(rho=2, hidden=8), "rho or hidden"),
        (dict(activation="nope"), "activation"),
        (dict(seed=-1), "seed"),
        (dict(rmse_tol=0.0), "rmse_tol"),
    ],
)
def test_config_rejects_impossible_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        if "deep" in kwargs:  # the deep overrides are their own part of the config
            kwargs = {**kwargs, "deep": DeepConfig(**kwargs["deep"])}
        RecoverConfig(**kwargs)


def test_deep_overrides_are_one_nested_part():
    with pytest.raises(TypeError, match="deep"):
        RecoverConfig(deep={"gamma": 0.3})
    assert RecoverConfig().deep == DeepConfig()
    assert RecoverConfig(deep=DeepConfig(gamma=None)).deep.gamma is None


def test_config_types_and_defaults():
    c = RecoverConfig(hidden=16)
    assert c.hidden == (16,)
    assert (c.n_students, c.gamma, c.beta_deg, c.n_queries, c.n_fresh) == (10, 0.5, 30.0, 30000,
                                                                           10000)
    with pytest.raises(TypeError, match="prune"):
        RecoverConfig(prune="yes")
    with pytest.raises(TypeError, match="train"):
        RecoverConfig(train={"max_seconds": 3})
    with pytest.raises(TypeError, match="n_students"):
        RecoverConfig(n_students=2.5)


@pytest.mark.parametrize("act", ["sigmoid", "softplus", "relu"])
def test_reconstruct_from_exact_students(act, tmp_path):
    rng = np.random.default_rng(1)
    teacher = make_teacher(act, d_in=3, r=3, seed=11)
    nets = exact_students(act, teacher, rng)
    students = [as_result(n, loss) for n, loss in zip(nets, [1e-32, 1e-30, 1e-30, 1e-30])]
    x = teachers.sample_inputs(500, 3, 0)
    xf = teachers.sample_inputs(300, 3, 1)
    rec = reconstruct_from_students(
        x, teacher.forward(x), students, config=RecoverConfig(finetune=QUICK),
        x_fresh=xf, y_fresh=teacher.forward(xf), teacher=teacher,
    )
    assert rec.status is RecoverStatus.RECOVERED, rec.reason
    assert rec.hidden_sizes == (3,)
    assert rec.rmse_fresh < 1e-12 and rec.rmse_train < 1e-12
    assert rec.max_cosine_distance < 1e-20
    assert len(rec.teacher_distances) == 3
    assert len(rec.neurons) == 3
    for c in rec.neurons:
        assert c.n_students == 4 and c.source_student == 0
        assert c.median_angle_deg < 1e-5
    assert rec.student_losses == (1e-32, 1e-30, 1e-30, 1e-30)

    report = json.loads(json.dumps(rec.to_report()))
    assert report["status"] == "RECOVERED"
    assert report["hidden_sizes"] == [3]
    assert len(report["neurons"]) == 3
    path = networks.write_network(tmp_path / "rec.h5", rec.network, attrs=rec.to_attrs())
    back = networks.read_network_file(path)
    assert back.attrs["status"] == "RECOVERED"
    assert json.loads(back.attrs["neurons"])[0]["n_students"] == 4
    np.testing.assert_array_equal(back.attrs["student_losses"], rec.student_losses)


def test_no_aligned_cluster_gives_no_network():
    rng = np.random.default_rng(0)
    nets = [
        MLP.from_arrays([rng.normal(size=(3, 2)), rng.normal(size=(1, 3))],
                        [rng.normal(size=3), np.zeros(1)], ["tanh", "identity"])
        for _ in range(3)
    ]
    x = rng.uniform(-1, 1, size=(50, 2))
    y = np.sin(x[:, :1])
    rec = reconstruct_from_students(
        x, y, [as_result(n, 0.1) for n in nets], config=RecoverConfig(gamma=1.0, beta_deg=1.0)
    )
    assert rec.status is RecoverStatus.NO_CLUSTERS
    assert rec.network is None and rec.hidden_sizes == () and rec.rmse_train is None
    assert "gamma" in rec.reason
    json.dumps(rec.to_report())
    assert "rmse_train" not in rec.to_attrs()


def test_recover_teacher_path_end_to_end_small():
    teacher = teachers.synthetic_teacher(teachers.TeacherConfig(2, (1,), "tanh"), 3)
    config = RecoverConfig(n_students=2, n_queries=400, n_fresh=200, rho=2, train=QUICK,
                           finetune=QUICK, early_stop=False)
    phases = []
    rec = recover(teacher=teacher, config=config, progress=lambda p, d, n: phases.append(p))
    assert {"students", "clustering", "fine-tune", "pruning"} <= set(phases)
    assert rec.student_width == 2 and len(rec.student_losses) == 2
    assert rec.hidden_sizes == (1,)
    assert rec.rmse_fresh < 1e-10
    assert rec.max_cosine_distance < 1e-8
    assert set(rec.phase_seconds) >= {"students", "clustering", "fine-tune", "metrics"}


def test_recover_rejects_inconsistent_inputs():
    teacher = make_teacher("g", d_in=2, r=2)
    x = np.zeros((10, 2))
    y = np.zeros((10, 1))
    with pytest.raises(ValueError, match="not both"):
        recover(teacher=teacher, x=x, y=y, config=RecoverConfig(rho=2))
    with pytest.raises(ValueError, match="give a teacher"):
        recover(config=RecoverConfig(hidden=4))
    with pytest.raises(ValueError, match="rho needs a teacher"):
        recover(x=x, y=y, config=RecoverConfig(rho=2))
    deep = MLP.from_arrays([np.ones((2, 2)), np.ones((2, 2)), np.ones((1, 2))],
                           [np.zeros(2), np.zeros(2), np.zeros(1)], ["g", "g", "identity"])
    with pytest.raises(ValueError, match="one hidden layer's width"):
        recover(teacher=deep, config=RecoverConfig(hidden="auto"))
    # no width given means the width search, which finds one hidden layer's width
    with pytest.raises(ValueError, match="one hidden layer's width"):
        recover(teacher=deep, config=RecoverConfig())
    assert RecoverConfig(hidden=(4, 2)).hidden == (4, 2)
    with pytest.raises(TypeError, match="RecoverConfig"):
        recover(teacher=teacher, config={"rho": 2})
    with pytest.raises(ValueError, match="d_in"):
        recover(teacher=teacher, x=np.zeros((5, 3)), config=RecoverConfig(rho=2))


@pytest.mark.parametrize(
    "rho, hidden, teacher, flags, message",
    [
        (2, None, False, False, "rho needs a teacher"),
        (2, None, False, True, "--rho needs --teacher"),
        (2, 8, True, False, "give rho or hidden, not both"),
        (2, 8, None, True, "give --rho or --hidden, not both"),
        (2, "auto", True, True, "give --rho or --hidden, not both"),
    ],
)
def test_the_width_rule_is_one_function_in_two_vocabularies(rho, hidden, teacher, flags,
                                                            message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_width_choice(rho, hidden, teacher=teacher, flags=flags)
    # a config alone does not know whether a teacher will come; neither width means the search
    check_width_choice(None, None, teacher=None)
    check_width_choice(None, None, teacher=True, flags=flags)
    check_width_choice(None, None, teacher=False, flags=flags)
    check_width_choice(2, None, teacher=True, flags=flags)


def test_depth_auto_hands_the_depth_and_width_found_to_the_stages(monkeypatch):
    import importlib

    import ecflow.width_search as ws

    rec_mod = importlib.import_module("ecflow.recover")  # the package exports the function
    from ecflow.width_search import WidthSearchConfig

    class Student:
        def __init__(self, loss):
            self.loss = loss

    def two_layers_of_two(x, y, *, hidden, activation, seed, config, engine):
        return Student(1e-20 if len(hidden) >= 2 and hidden[0] >= 2 else 1e-4)

    seen = {}

    def pipeline(queries, run, budget, *, widths, activation, **kwargs):
        seen.update(widths=widths, activation=activation, teacher=queries.teacher)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ws, "train_student", two_layers_of_two)
    monkeypatch.setattr(rec_mod, "_pipeline", pipeline)
    deep = teachers.synthetic_teacher(teachers.TeacherConfig(3, (3, 2), "tanh"), 0)
    config = RecoverConfig(hidden="auto", n_queries=300, n_fresh=10, width_search=WidthSearchConfig(
        n_seeds=1, max_width=4, depth="auto"))
    with pytest.raises(RuntimeError, match="stop here"):
        recover(teacher=deep, config=config)
    assert seen["widths"] == (4, 4) and seen["activation"] == "tanh"
    assert seen["teacher"] is not None
