"""What a black box answers: probabilities, rounding and noise, and the query budget
(:mod:`ecflow.oracle`), alone and through :func:`ecflow.recover.recover` and the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from cli_helpers import run

from ecflow import blackbox, interop, networks, oracle, teachers
from ecflow.config import RecoverConfig
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.metrics import match_vectors
from ecflow.networks import MLP
from ecflow.oracle import OracleConfig, OutputKind
from ecflow.recover import recover

EPS = float(np.finfo(np.float64).eps)


def _teacher(d_in, r, d_out, activation, seed) -> MLP:
    config = teachers.TeacherConfig(d_in, (r,), activation, d_out, n_normalise=20000)
    return teachers.synthetic_teacher(config, seed)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _centred(z):
    return z - z.mean(axis=1, keepdims=True)


# --- output kinds --------------------------------------------------------------------------------


def test_centred_log_probabilities_are_centred_logits():
    z = np.random.default_rng(0).normal(size=(50, 4)) * 3
    got = oracle.centred_log_probabilities(_softmax(z))
    np.testing.assert_allclose(got, _centred(z), atol=1e-13)


def test_one_column_probability_gives_its_logit():
    z = np.random.default_rng(1).normal(size=(40, 1))
    p = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(oracle.centred_log_probabilities(p), z, atol=1e-13)


@pytest.mark.parametrize("bad, words", [
    (np.array([[0.5, 0.7], [0.2, 0.8]]), "do not sum to 1"),
    (np.array([[-0.1, 1.1], [0.2, 0.8]]), "not [0, 1]"),
    (np.array([[1.5], [0.2]]), "not [0, 1]"),
])
def test_answers_that_are_not_probabilities_raise(bad, words):
    bad = np.repeat(bad, 10, axis=0)
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        oracle.read_answers(np.zeros((len(bad), 2)), bad, OutputKind.PROBABILITIES, eps=EPS,
                            config=OracleConfig())


def test_saturated_rows_are_dropped_and_counted():
    z = np.random.default_rng(2).normal(size=(30, 3))
    p = _softmax(z)
    p[:4] = [1.0, 0.0, 0.0]
    x = np.arange(60.0).reshape(30, 2)
    answers = oracle.read_answers(x, p, OutputKind.PROBABILITIES, eps=EPS, config=OracleConfig())
    assert answers.n_dropped == 4
    np.testing.assert_array_equal(answers.x, x[4:])
    np.testing.assert_allclose(answers.y, _centred(z[4:]), atol=1e-13)


def test_logits_pass_unchanged():
    y = np.random.default_rng(3).normal(size=(30, 2))
    answers = oracle.read_answers(np.zeros((30, 1)), y, OutputKind.LOGITS, eps=EPS,
                                  config=OracleConfig())
    assert answers.y is y and answers.floor == 0.0 and answers.step is None


def test_output_kind_user_wins_over_model():
    assert OracleConfig().kind(None) is OutputKind.LOGITS
    assert OracleConfig().kind("probabilities") is OutputKind.PROBABILITIES
    assert OracleConfig(outputs="logits").kind("probabilities") is OutputKind.LOGITS


@pytest.mark.parametrize("field, value", [("outputs", "softmax"), ("output_decimals", -1),
                                          ("noise_std", 0.0), ("max_queries", 0)])
def test_oracle_config_checks(field, value):
    with pytest.raises(InputError, match=field):
        OracleConfig(**{field: value})


# --- rounding and noise floor --------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 2, 4, 6, 8])
def test_rounding_is_read_from_the_values(k):
    y = np.round(np.random.default_rng(k).normal(size=(200, 3)), k)
    assert oracle.detect_decimals(y) == k


def test_unrounded_values_show_no_rounding():
    assert oracle.detect_decimals(np.random.default_rng(0).normal(size=(200, 3))) is None


def test_floor_of_rounded_logits_and_tolerance():
    y = np.round(np.random.default_rng(0).normal(size=(500, 2)), 6)
    answers = oracle.read_answers(np.zeros((500, 1)), y, OutputKind.LOGITS, eps=EPS,
                                  config=OracleConfig())
    assert answers.floor == pytest.approx(1e-6 / np.sqrt(12))
    base = {"precision": "float64", "rmse_floor": 0.0, "rmse_tol": 1e-10,
            "precision_reason": "x"}
    report = oracle.answer_floor(answers, base, 1e-10)
    assert report["output_decimals"] == 6
    assert report["rmse_tol"] == pytest.approx(oracle.NOISE_FACTOR * 1e-6 / np.sqrt(12))
    assert "rounded to 6 decimals" in report["precision_reason"]


def test_stated_noise_sets_the_floor():
    y = np.random.default_rng(0).normal(size=(100, 2))
    answers = oracle.read_answers(np.zeros((100, 1)), y, OutputKind.LOGITS, eps=EPS,
                                  config=OracleConfig(noise_std=1e-5))
    assert answers.floor == pytest.approx(1e-5)


def test_probability_floor_is_divided_by_the_probability():
    p = _softmax(np.random.default_rng(4).normal(size=(40, 2)))
    answers = oracle.read_answers(np.zeros((40, 1)), p, OutputKind.PROBABILITIES, eps=EPS,
                                  config=OracleConfig(noise_std=1e-6))
    expected = np.sqrt(np.mean((1e-6 / p) ** 2))
    assert answers.floor == pytest.approx(expected)


# --- query budget --------------------------------------------------------------------------------


def test_counter_counts_rows_and_refuses_past_the_limit():
    counter = oracle.QueryCounter(lambda x: x, 10, used=3)
    counter(np.zeros((5, 2)))
    assert counter.used == 8 and counter.left == 2
    with pytest.raises(InputError, match="--max-queries 10"):
        counter(np.zeros((3, 2)))
    assert counter.used == 8


def test_split_budget_keeps_a_fresh_share():
    assert oracle.split_budget(30000, 10000, None)[:2] == (30000, 10000)
    assert oracle.split_budget(300, 100, 1000)[:2] == (300, 100)
    train, fresh, note = oracle.split_budget(30000, 10000, 4997)
    assert train + fresh == 4997 and fresh == int(oracle.FRESH_SHARE * 4997)
    assert "--max-queries" in note


class _Counting:
    """A callable teacher that counts every input row it is asked."""

    def __init__(self, net: MLP, answer=None):
        self.net, self.rows, self.answer = net, 0, answer or (lambda z: z)

    def __call__(self, x):
        self.rows += len(x)
        return self.answer(self.net.forward(np.asarray(x, dtype=np.float64)))


@pytest.fixture(scope="module")
def g_teacher():
    return teachers.synthetic_teacher(teachers.TeacherConfig(4, (4,), "g"), 100)


def test_query_budget_is_kept_and_counted(g_teacher):
    teacher = _Counting(g_teacher)
    config = RecoverConfig(hidden=4, activation="g", n_students=2, prune=False,
                           train=TrainConfig(max_seconds=2.0),
                           oracle=OracleConfig(max_queries=500))
    rec = recover(query=teacher, d_in=4, config=config)
    assert 0 < teacher.rows <= 500
    assert rec.precision["queries_used"] == teacher.rows
    assert rec.to_report()["max_queries"] == 500
    assert len(rec.notes) and "--max-queries" in rec.notes[0]


def test_given_inputs_past_the_budget_raise(g_teacher):
    config = RecoverConfig(hidden=8, oracle=OracleConfig(max_queries=100))
    with pytest.raises(InputError, match="--max-queries 100"):
        recover(query=_Counting(g_teacher), d_in=4, x=np.zeros((200, 4)), config=config)


def test_pairs_take_no_query_budget():
    x = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(InputError, match="max_queries"):
        recover(x=x, y=x[:, :1], config=RecoverConfig(
            hidden=2, oracle=OracleConfig(max_queries=10)))


def test_rounded_answers_are_recovered_at_the_exact_size():
    teacher = _Counting(_teacher(4, 3, 1, "tanh", 3), lambda z: np.round(z, 6))
    rec = recover(query=teacher, d_in=4, config=RecoverConfig(hidden=6, activation="tanh",
                                                               n_queries=8000, n_fresh=2000))
    report = rec.to_report()
    assert rec.hidden_sizes == (3,) and rec.recovered
    assert report["output_decimals"] == 6
    assert report["rmse_tol"] == pytest.approx(oracle.NOISE_FACTOR * 1e-6 / np.sqrt(12))
    assert report["rmse_fresh"] <= report["rmse_tol"]


def test_unstated_noise_gives_a_residual_hint():
    net = _teacher(4, 3, 1, "tanh", 3)
    rng = np.random.default_rng(0)
    teacher = _Counting(net, lambda z: z + 1e-4 * rng.standard_normal(z.shape))
    rec = recover(query=teacher, d_in=4, config=RecoverConfig(
        hidden=6, activation="tanh", n_queries=4000, n_fresh=1000, n_students=4,
        train=TrainConfig(max_seconds=3.0), finetune=TrainConfig(max_seconds=3.0)))
    assert not rec.recovered
    hint = [n for n in rec.notes if "--noise-std" in n]
    assert len(hint) == 1
    residual = float(hint[0].split("residual RMSE is ")[1].split(":")[0])
    assert 5e-5 < residual < 2e-4  # the noise, 1e-4


def test_probability_callable_recovers_the_centred_logits():
    net = _teacher(4, 3, 3, "tanh", 1)
    teacher = _Counting(net, _softmax)
    rec = recover(query=teacher, d_in=4, config=RecoverConfig(
        hidden=6, activation="tanh", n_queries=6000, n_fresh=2000,
        oracle=OracleConfig(outputs="probabilities")))
    assert rec.recovered and rec.hidden_sizes == (3,)
    x = teachers.sample_inputs(500, 4, 7)
    err = rec.network.forward(x) - _centred(net.forward(x))
    assert np.sqrt(np.mean(err**2)) <= 1e-8
    assert rec.to_report()["outputs"] == "probabilities"


def test_probability_pairs_need_the_flag_and_are_checked():
    x = np.random.default_rng(0).normal(size=(50, 2))
    y = np.random.default_rng(1).uniform(0.05, 0.6, size=(50, 3))
    with pytest.raises(InputError, match="do not sum to 1"):
        recover(x=x, y=y, config=RecoverConfig(hidden=2,
                                                oracle=OracleConfig(outputs="probabilities")))


# --- ONNX classifiers ----------------------------------------------------------------------------


def _sklearn_classifier(n_classes: int, hidden: int, seed: int):
    sklearn = pytest.importorskip("sklearn.neural_network")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.sqrt(3), np.sqrt(3), size=(400, 4))
    labels = np.digitize(x[:, 0] + np.sin(2 * x[:, 1]) - x[:, 2] * x[:, 3],
                         np.quantile(x[:, 0], np.linspace(0, 1, n_classes + 1)[1:-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sklearn.MLPClassifier(hidden_layer_sizes=(hidden,), activation="tanh",
                                     max_iter=300, random_state=seed).fit(x, labels)


def _skl2onnx(clf, path, zipmap=False, float32=False):
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed")
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    kind = FloatTensorType if float32 else DoubleTensorType
    model = skl2onnx.to_onnx(clf, initial_types=[("X", kind([None, clf.n_features_in_]))],
                             options={id(clf): {"zipmap": zipmap}})
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("zipmap", [False, True])
@pytest.mark.parametrize("float32", [False, True])
def test_skl2onnx_probabilities_are_recognised(tmp_path, zipmap, float32):
    pytest.importorskip("onnxruntime")
    clf = _sklearn_classifier(3, 4, 0)
    box = blackbox.from_onnx(_skl2onnx(clf, tmp_path / "clf.onnx", zipmap, float32))
    assert box.outputs == "probabilities" and box.activation == "tanh"
    assert box.precision == ("float32" if float32 else "float64")
    x = teachers.sample_inputs(20, 4, 0)
    np.testing.assert_allclose(box(x), clf.predict_proba(x), atol=1e-6 if float32 else 1e-12)


def test_export_softmax_answers_probabilities(tmp_path):
    pytest.importorskip("onnxruntime")
    net = _teacher(3, 4, 3, "tanh", 2)
    path = interop.write_onnx(tmp_path / "p.onnx", net, softmax=True)
    box = blackbox.from_onnx(path)
    x = teachers.sample_inputs(30, 3, 0)
    np.testing.assert_allclose(box(x), _softmax(net.forward(x)), atol=1e-14)
    assert box.outputs == "probabilities"
    one = _teacher(3, 2, 1, "tanh", 2)
    box = blackbox.from_onnx(interop.write_onnx(tmp_path / "s.onnx", one, softmax=True))
    np.testing.assert_allclose(box(x), 1 / (1 + np.exp(-one.forward(x))), atol=1e-14)


@pytest.mark.slow
def test_cli_recovers_a_sklearn_classifier_from_its_probabilities(tmp_path):
    pytest.importorskip("onnxruntime")
    clf = _sklearn_classifier(3, 5, 3)
    model = _skl2onnx(clf, tmp_path / "clf.onnx")
    out, report = tmp_path / "rec.h5", tmp_path / "rec.json"
    # no width, no activation and no output kind given: all are found
    res = run("recover", "--teacher", model, "--out", out,
              "--report", report, "--n-queries", "8000", "--n-fresh", "2000")
    assert res.returncode == 0, res.stderr
    rep = json.loads(report.read_text())
    assert rep["hidden_sizes"] == [5] and rep["outputs"] == "probabilities"
    assert rep["width_search"]["status"] == "FOUND" and rep["activation"] == "tanh"
    assert rep["rmse_fresh"] <= 1e-8
    rec = networks.read_network(out)
    t = np.hstack([clf.coefs_[0].T, clf.intercepts_[0][:, None]])
    r = np.hstack([rec.layers[0].weight, rec.layers[0].bias[:, None]])
    match = match_vectors(t, r, rec.layers[0].activation.symmetry)
    assert match.complete and match.max_distance <= 1e-8
    assert "queries used" in res.stdout


def test_cli_export_softmax(tmp_path):
    pytest.importorskip("onnxruntime")
    net = _teacher(3, 2, 3, "tanh", 4)
    path, onnx_path = tmp_path / "n.h5", tmp_path / "n.onnx"
    networks.write_network(path, net)
    res = run("export", path, "--onnx", onnx_path, "--softmax")
    assert res.returncode == 0, res.stderr
    x = teachers.sample_inputs(10, 3, 0)
    box = blackbox.from_onnx(onnx_path)
    np.testing.assert_allclose(box(x), _softmax(net.forward(x)), atol=1e-14)


def test_cli_rejects_bad_probabilities(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 2))
    y = np.random.default_rng(1).uniform(0.05, 0.6, size=(40, 3))
    data = tmp_path / "pairs.h5"
    networks.write_pairs(data, x, y)
    res = run("recover", "--data", data, "--hidden", "2", "--outputs", "probabilities",
              "--out", tmp_path / "o.h5")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "sum to 1" in res.stderr
    assert not (tmp_path / "o.h5").exists()


def test_cli_rejects_an_onnx_model_whose_answers_are_not_probabilities(tmp_path):
    pytest.importorskip("onnxruntime")
    model = interop.write_onnx(tmp_path / "logits.onnx", _teacher(3, 2, 3, "tanh", 5))
    res = run("recover", "--teacher", model, "--hidden", "4", "--outputs", "probabilities",
              "--out", tmp_path / "o.h5")
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "logits.onnx" in res.stderr
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("flags, words", [
    (["--outputs", "softmax"], "--outputs"),
    (["--max-queries", "0"], "--max-queries"),
    (["--noise-std", "-1"], "--noise-std"),
    (["--output-decimals", "-2"], "--output-decimals"),
])
def test_cli_checks_the_answer_flags(tmp_path, flags, words):
    teacher = tmp_path / "t.h5"
    networks.write_network(teacher, _teacher(2, 2, 1, "g", 0))
    res = run("recover", "--teacher", teacher, "--hidden", "4", "--out", tmp_path / "o.h5",
              *flags)
    assert res.returncode == 2 and words in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
