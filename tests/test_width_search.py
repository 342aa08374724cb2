"""Width search (paper section 5 step 1, Fig. A.2B): the smallest width at which short students
reach near-zero loss, the activation that gets there, the deadline and the figure."""

import json
import time

import numpy as np
import pytest

from ecflow import plots, teachers
from ecflow.budget import Budget
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.width_search import (
    WidthSearchConfig,
    WidthStatus,
    doubling_widths,
    search_width,
)

FAST = WidthSearchConfig(n_seeds=2, max_width=8, train=TrainConfig(max_seconds=3.0))


@pytest.fixture(scope="module")
def tanh_pairs():
    teacher = teachers.synthetic_teacher(teachers.TeacherConfig(2, (3,), "tanh"), 1)
    x = teachers.sample_inputs(1000, 2, 0)
    return x, teacher.forward(x)


def test_finds_the_teacher_width_and_activation(tanh_pairs):
    res = search_width(*tanh_pairs, activations=["relu", "tanh", "softplus"], config=FAST)
    assert res.status is WidthStatus.FOUND, res.reason
    assert res.width == 3 and res.student_width == 6 and res.activation == "tanh"
    assert [r.activation for r in res.ranking][0] == "tanh"
    assert all(r.width is None for r in res.ranking[1:])
    assert "tanh chosen of 3 candidates" in res.reason and "width 2 did not" in res.reason
    widths, best = res.curve("tanh")
    assert list(widths) == sorted(widths) and best[list(widths).index(3)] <= 1e-14
    assert {t.width for t in res.trials if t.activation == "relu"} == {1, 2, 4}
    json.dumps(res.to_report())
    fig = plots.width_search_curve(res)
    assert fig.axes[0].get_xlabel() == "student width"


def test_one_activation_and_no_bisection(tanh_pairs):
    config = WidthSearchConfig(n_seeds=2, max_width=8, bisect=False, multiple=1.5,
                               train=TrainConfig(max_seconds=3.0))
    res = search_width(*tanh_pairs, activations="tanh", config=config)
    assert res.width == 4 and res.student_width == 6
    assert "(given)" in res.reason


def test_not_found_and_deadline(tanh_pairs):
    res = search_width(*tanh_pairs, activations="tanh",
                       config=WidthSearchConfig(n_seeds=1, max_width=2,
                                                train=TrainConfig(max_seconds=2.0)))
    assert res.status is WidthStatus.NOT_FOUND and res.width is None
    assert res.student_width is None and "up to 2" in res.reason
    res = search_width(*tanh_pairs, activations="tanh", budget=Budget(time.monotonic() - 1))
    assert res.status is WidthStatus.DEADLINE and res.trials == ()
    assert "--max-minutes" in res.reason
    assert plots.width_search_curve(res) is not None


def test_bad_arguments(tanh_pairs):
    with pytest.raises(InputError, match="unknown activation"):
        search_width(*tanh_pairs, activations=["tanhh"])
    with pytest.raises(InputError, match="at least one"):
        search_width(*tanh_pairs, activations=[])
    with pytest.raises(InputError, match="threshold"):
        search_width(*tanh_pairs, activations="tanh", threshold=0.0)
    with pytest.raises(InputError, match="multiple"):
        WidthSearchConfig(multiple=0.5)
    with pytest.raises(InputError, match="n_seeds"):
        WidthSearchConfig(n_seeds=0)
    with pytest.raises(InputError, match="config"):
        search_width(*tanh_pairs, config=TrainConfig())
    assert doubling_widths(1) == [1] and doubling_widths(12) == [1, 2, 4, 8, 12]


def test_black_box_search_reads_the_activation_from_the_graph(tmp_path):
    from ecflow import blackbox, interop
    from ecflow.width_search import search_black_box

    teacher = teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 0)
    bb = blackbox.from_onnx(interop.write_onnx(tmp_path / "t.onnx", teacher, float32=True))
    x, y = bb.query(teachers.sample_inputs(1000, 2, 0))
    res = search_black_box(bb, x, y, config=FAST)
    assert res.found and res.activation == "tanh" and 2 <= res.width <= 4
    assert res.threshold == bb.near_zero_loss(y) > 1e-14
    assert "read from the model" in res.reason


def test_search_on_pairs_with_a_given_activation(tanh_pairs):
    from ecflow.width_search import search_black_box

    res = search_black_box(None, *tanh_pairs, activation="tanh", config=FAST)
    assert res.found and res.activation == "tanh" and res.threshold == 1e-14
    assert "given (--activation)" in res.reason


class _FakeStudent:
    def __init__(self, loss):
        self.loss = loss


def _fake_trainer(depth_needed, width_needed, calls=None):
    """A stand-in for training: near-zero loss exactly when the student has at least
    ``depth_needed`` hidden layers of at least ``width_needed`` neurons, otherwise a loss that
    falls with width and depth but stays far above it (too few layers only approximate)."""

    def train(x, y, *, hidden, activation, seed, config, engine):
        if calls is not None:
            calls.append(hidden)
        ok = len(hidden) >= depth_needed and hidden[0] >= width_needed
        return _FakeStudent(1e-20 if ok else 1e-3 / (hidden[0] * len(hidden)))

    return train


DEPTHS = WidthSearchConfig(n_seeds=1, max_width=8, depth="auto", max_depth=3)


def test_depth_search_finds_the_smallest_depth_and_its_width(tanh_pairs, monkeypatch):
    import ecflow.width_search as ws

    calls = []
    monkeypatch.setattr(ws, "train_student", _fake_trainer(2, 3, calls))
    res = search_width(*tanh_pairs, activations="tanh", config=DEPTHS)
    assert res.status is WidthStatus.FOUND, res.reason
    assert res.depth == 2 and res.width == 3 and res.student_widths == (6, 6)
    assert res.depth_auto and res.depths == (1, 2)
    # depth 3 is never tried once depth 2 succeeds; depth 1 is tried up to max_width
    assert {len(h) for h in calls} == {1, 2}
    assert max(h[0] for h in calls if len(h) == 1) == 8
    assert len(res.depth_reasons) == 1 and res.depth_reasons[0].startswith("depth 1: no width")
    assert res.reason.startswith("depth 2 (the smallest")
    depths, best = res.depth_curve()
    assert list(depths) == [1, 2] and best[0] > 1e-5 and best[1] <= 1e-14
    widths, best2 = res.curve("tanh", 2)
    assert list(widths) == [1, 2, 3, 4] and best2[2] <= 1e-14
    report = json.loads(json.dumps(res.to_report()))
    assert report["depth"] == 2 and report["student_widths"] == [6, 6]
    assert {t["depth"] for t in report["trials"]} == {1, 2}
    fig = plots.depth_search_curve(res)
    assert [ax.get_xlabel() for ax in fig.axes] == ["student width (every hidden layer)",
                                                   "hidden layers"]


def test_depth_search_that_finds_nothing_says_why_for_every_depth(tanh_pairs, monkeypatch):
    import ecflow.width_search as ws

    monkeypatch.setattr(ws, "train_student", _fake_trainer(9, 1))
    res = search_width(*tanh_pairs, activations="tanh", config=DEPTHS)
    assert res.status is WidthStatus.NOT_FOUND and not res.found
    assert res.depth is None and res.width is None and res.student_widths is None
    assert [r.split(":")[0] for r in res.depth_reasons] == ["depth 1", "depth 2", "depth 3"]
    assert "no depth up to 3" in res.reason
    assert res.to_report()["depths_tried"] == [1, 2, 3]


def test_a_given_depth_trains_students_of_that_many_layers(tanh_pairs, monkeypatch):
    import ecflow.width_search as ws

    calls = []
    monkeypatch.setattr(ws, "train_student", _fake_trainer(2, 2, calls))
    res = search_width(*tanh_pairs, activations="tanh",
                       config=WidthSearchConfig(n_seeds=1, max_width=8, depth=2))
    assert res.found and res.depth == 2 and res.width == 2 and not res.depth_auto
    assert all(len(h) == 2 for h in calls) and "x 2 hidden layers" in res.reason


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": "deep"}, "depth must be a positive integer or 'auto'"),
    ({"depth": 0}, "depth must be a positive integer"),
    ({"max_depth": 0}, "max_depth"),
])
def test_depth_settings_are_checked(kwargs, message):
    with pytest.raises(InputError, match=message):
        WidthSearchConfig(**kwargs)
