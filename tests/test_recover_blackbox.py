"""recover() on black boxes: query functions and ONNX models, hidden="auto" (the width search),
the float32 floor, and the --rho error for a teacher of unknown width."""

import json

import numpy as np
import pytest

from ecflow import blackbox, interop, teachers
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.recover import RecoverConfig, RecoverStatus, recover
from ecflow.width_search import WidthSearchConfig

pytest.importorskip("onnxruntime")

SEARCH = WidthSearchConfig(n_seeds=2, max_width=8, train=TrainConfig(max_seconds=3.0))


def small(**kw):
    base = dict(n_students=4, n_queries=2000, n_fresh=1000, seed=1, width_search=SEARCH,
                train=TrainConfig(max_seconds=10.0))
    return RecoverConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tanh_teacher():
    return teachers.synthetic_teacher(teachers.TeacherConfig(2, (2,), "tanh"), 0)


def test_query_function_with_auto_width(tanh_teacher):
    rec = recover(query=lambda x: tanh_teacher.forward(x), d_in=2,
                  config=small(hidden="auto", activation="tanh"))
    assert rec.status is RecoverStatus.RECOVERED, rec.reason
    assert rec.hidden_sizes == (2,) and rec.rmse_fresh <= 1e-10
    assert rec.width_search is not None and rec.width_search.found
    assert rec.student_width == rec.width_search.student_width
    assert "width search" in rec.phase_seconds
    report = rec.to_report()
    assert report["width_search"]["activation"] == "tanh"
    json.dumps(report)
    assert rec.max_cosine_distance is None  # a black box: no weights to compare with


def test_no_width_given_means_the_width_search(tanh_teacher):
    rec = recover(query=lambda x: tanh_teacher.forward(x), d_in=2,
                  config=small(activation="tanh"))
    assert rec.width_search is not None and rec.width_search.found
    assert rec.hidden_sizes == (2,) and rec.status is RecoverStatus.RECOVERED, rec.reason


def test_float32_onnx_teacher_is_judged_against_its_floor(tanh_teacher, tmp_path):
    box = blackbox.from_onnx(interop.write_onnx(tmp_path / "t.onnx", tanh_teacher,
                                                float32=True))
    rec = recover(teacher=box, config=small(hidden="auto"))
    assert rec.status is RecoverStatus.RECOVERED, rec.reason
    assert rec.hidden_sizes == (2,) and 1e-9 < rec.rmse_fresh <= 1e-5
    assert rec.precision["precision"] == "float32"
    assert rec.rmse_fresh <= rec.precision["rmse_tol"] < 1e-5
    assert rec.activation == "tanh" and "read from the model" in rec.width_search.reason


def test_rho_needs_a_known_width_and_bad_inputs(tanh_teacher, tmp_path):
    box = blackbox.from_onnx(interop.write_onnx(tmp_path / "t.onnx", tanh_teacher))
    with pytest.raises(InputError, match="--hidden auto"):
        recover(teacher=box, config=small(rho=2))
    with pytest.raises(InputError, match="d_in"):
        recover(query=np.tanh, config=small(hidden=3))
    with pytest.raises(InputError, match="not both"):
        recover(teacher=tanh_teacher, query=np.tanh, d_in=2, config=small(hidden=3))
    with pytest.raises(InputError, match="NaN"):
        recover(query=lambda x: np.full((len(x), 1), np.nan), d_in=2, config=small(hidden=3))
    with pytest.raises(InputError, match="'auto'"):
        RecoverConfig(hidden="many")


def test_no_width_found_is_a_status(tanh_teacher):
    x = teachers.sample_inputs(1000, 2, 0)
    search = WidthSearchConfig(n_seeds=1, max_width=1, train=TrainConfig(max_seconds=2.0))
    rec = recover(x=x, y=tanh_teacher.forward(x),
                  config=small(hidden="auto", activation="tanh", width_search=search))
    assert rec.status is RecoverStatus.NO_WIDTH and rec.network is None
    assert "no width up to max_width" in rec.reason
    assert rec.to_report()["width_search"]["status"] == "NOT_FOUND"
