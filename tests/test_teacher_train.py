"""Teachers trained on images: gradient, split, accuracy, determinism, ``ecflow teacher train``."""

import numpy as np
import pytest
from test_cli_foundations import assert_bad_input, run

from ecflow import datasets, networks, teachers
from ecflow.errors import InputError

FAST = teachers.ClassifierConfig(max_epochs=20)


def naive_cross_entropy(W, b, A, c, act, x, labels):
    total = 0.0
    for xi, label in zip(x, labels):
        z = A @ act(W @ xi + b) + c
        total += np.log(np.sum(np.exp(z))) - z[label]
    return total / len(labels)


@pytest.mark.parametrize("activation", ["tanh", "g", "sigmoid", "softplus"])
def test_cross_entropy_gradient_matches_finite_differences(activation):
    from ecflow.activations import get_activation

    rng = np.random.default_rng(0)
    shape = (5, 4, 3)
    x, labels = rng.random((7, 5)), rng.integers(0, 3, 7)
    theta = rng.normal(size=5 * 4 + 4 + 3 * 4 + 3)
    act = get_activation(activation)

    def loss(t):
        return naive_cross_entropy(*teachers._unpack(t, *shape), act, x, labels)

    value, grad = teachers._loss_grad(theta, shape, act, x, labels)
    assert value == pytest.approx(loss(theta), rel=1e-12)
    h = 1e-6
    numeric = np.array(
        [(loss(theta + h * e) - loss(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def naive_deep_cross_entropy(params, act, x, labels):
    """Per image: hidden layers by explicit loops over neurons, then the logits."""
    total = 0.0
    for xi, label in zip(x, labels):
        h = xi
        for W, b in zip(params[0:-2:2], params[1:-2:2]):
            h = np.array([act(np.dot(w, h) + bi) for w, bi in zip(W, b)])
        z = np.array([np.dot(a, h) + c for a, c in zip(params[-2], params[-1])])
        total += np.log(np.sum(np.exp(z))) - z[label]
    return total / len(labels)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (4, 3, 5, 2, 3)])
def test_deep_cross_entropy_gradient_matches_finite_differences(activation, shape):
    from ecflow.activations import get_activation

    rng = np.random.default_rng(1)
    x, labels = rng.random((6, shape[0])), rng.integers(0, shape[-1], 6)
    n_params = sum(a * b + b for a, b in zip(shape[:-1], shape[1:]))
    theta = rng.normal(size=n_params)
    act = get_activation(activation)

    def loss(t):
        return naive_deep_cross_entropy(teachers._unpack(t, *shape), act, x, labels)

    value, grad = teachers._loss_grad(theta, shape, act, x, labels)
    assert value == pytest.approx(loss(theta), rel=1e-12)
    h = 1e-6
    numeric = np.array(
        [(loss(theta + h * e) - loss(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_deep_digits_teacher_has_one_layer_per_size_and_learns():
    trained = teachers.train_classifier("digits", (16, 16), "tanh", seed=0, config=FAST)
    net = trained.network
    assert net.sizes == (64, 16, 16, 10)
    assert [a.name for a in net.activations] == ["tanh", "tanh", "identity"]
    # Twenty epochs of Adam take a 16-16 tanh network well past chance (10 %) on the digits.
    assert trained.test_accuracy >= 0.85
    logits = teachers._logits(net.flatten(), net.sizes, net.activations[0], trained.x_train)
    np.testing.assert_allclose(logits, net.forward(trained.x_train), rtol=0, atol=1e-12)


def test_split_is_a_stratified_partition_fixed_by_the_seed():
    labels = datasets.load("digits").labels
    train, val, test = teachers.split_indices(labels, 3)
    everything = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    for part, share in ((train, 0.70), (val, 0.15), (test, 0.15)):
        counts = np.bincount(labels[part], minlength=10)
        expected = share * np.bincount(labels)
        assert np.all(np.abs(counts - expected) <= 1)
    again = teachers.split_indices(labels, 3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(teachers.split_indices(labels, 4)[0], train)


def test_tanh_r12_digits_teacher_is_accurate():
    trained = teachers.train_classifier("digits", 12, "tanh", seed=0)
    assert trained.test_accuracy >= 0.93
    assert trained.stopped_by == "patience" and "early stop" in trained.message
    net = trained.network
    assert net.sizes == (64, 12, 10)
    assert [a.name for a in net.activations] == ["tanh", "identity"]
    np.testing.assert_array_equal(trained.x_train, datasets.load("digits").x[trained.train_index])


def test_training_is_deterministic_given_the_seed():
    a = teachers.train_classifier("digits", 4, "g", seed=5, config=FAST)
    b = teachers.train_classifier("digits", 4, "g", seed=5, config=FAST)
    c = teachers.train_classifier("digits", 4, "g", seed=6, config=FAST)
    np.testing.assert_array_equal(a.network.flatten(), b.network.flatten())
    assert not np.array_equal(a.network.flatten(), c.network.flatten())


def test_max_epochs_reached_says_so():
    trained = teachers.train_classifier(
        "digits", 4, "tanh", seed=0, config=teachers.ClassifierConfig(max_epochs=2)
    )
    assert trained.stopped_by == "max_epochs" and trained.epochs == 2
    assert "increase max_epochs" in trained.message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": 0}, "patience"),
        ({"val_fraction": 0.5}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(InputError, match=message):
        teachers.ClassifierConfig(**kwargs)


@pytest.mark.parametrize(
    "args, message",
    [
        (("cifar", 4, "tanh", 0), "unknown data set"),
        (("digits", 0, "tanh", 0), "hidden"),
        (("digits", (16, 0), "tanh", 0), "hidden must be a positive integer"),
        (("digits", (), "tanh", 0), "at least one hidden layer"),
        (("digits", 4, "swish", 0), "unknown activation"),
        (("digits", 4, "tanh", -1), "seed"),
    ],
)
def test_train_classifier_rejects_bad_input(args, message):
    with pytest.raises(InputError, match=message):
        teachers.train_classifier(*args)


def test_too_small_data_set_is_input_error():
    digits = datasets.load("digits")
    tiny = datasets.Dataset("digits", digits.x[:10], digits.labels[:10], (8, 8), None, "")
    with pytest.raises(InputError, match="too small"):
        teachers.train_classifier(tiny, 3)


def test_cli_teacher_train_end_to_end(tmp_path):
    out = tmp_path / "t.h5"
    args = ("teacher", "train", "--dataset", "digits", "--hidden", 12, "--activation", "tanh")
    res = run(*args, "--seed", 1, "--out", out)
    assert res.returncode == 0, res.stderr
    accuracy = float(res.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.93
    stored = networks.read_network_file(out)
    assert stored.network.sizes == (64, 12, 10)
    assert stored.attrs["dataset"] == "digits" and stored.attrs["seed"] == 1
    assert stored.attrs["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert stored.x.shape[1] == 64 and 0.69 < stored.x.shape[0] / 1797 < 0.71
    np.testing.assert_allclose(stored.y, stored.network.forward(stored.x), rtol=0, atol=0)
    np.testing.assert_array_equal(datasets.query_inputs(out, 64), stored.x)
    info = run("info", out)
    assert info.returncode == 0 and "64-12-10" in info.stdout

    again = tmp_path / "again.h5"
    assert run(*args, "--seed", 1, "--out", again).returncode == 0
    np.testing.assert_array_equal(
        networks.read_network(again).flatten(), stored.network.flatten()
    )


@pytest.mark.parametrize(
    "options, message",
    [
        (("--dataset", "cifar", "--hidden", 4), "unknown data set 'cifar'"),
        (("--dataset", "digits", "--hidden", 0), "hidden must be a positive integer"),
        (("--dataset", "digits", "--hidden", "16,0"), "hidden must be a positive integer"),
        (("--dataset", "digits", "--hidden", "16,x"), "--hidden must be a positive integer or"),
        (("--dataset", "digits", "--hidden", 4, "--activation", "swish"), "unknown activation"),
    ],
)
def test_cli_teacher_train_bad_input_is_one_line(tmp_path, options, message):
    res = run("teacher", "train", *options, "--out", tmp_path / "t.h5")
    assert_bad_input(res, message)
    assert not (tmp_path / "t.h5").exists()


def test_cli_teacher_train_writes_a_deep_logits_network(tmp_path):
    out = tmp_path / "deep.h5"
    res = run("teacher", "train", "--dataset", "digits", "--hidden", "16,12", "--seed", 2,
              "--max-epochs", 3, "--out", out)
    assert res.returncode == 0, res.stderr
    stored = networks.read_network_file(out)
    assert stored.network.sizes == (64, 16, 12, 10)
    assert [a.name for a in stored.network.activations] == ["tanh", "tanh", "identity"]
    assert stored.attrs["epochs"] == 3 and stored.attrs["dataset"] == "digits"
    np.testing.assert_allclose(stored.y, stored.network.forward(stored.x), rtol=0, atol=0)
    assert "64-16-12-10" in res.stdout


def test_cli_teacher_train_without_fashion_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.FASHION_DIR_VARIABLE, str(tmp_path))
    res = run("teacher", "train", "--dataset", "fashion", "--hidden", 4, "--out", tmp_path / "t.h5")
    assert_bad_input(res, "apt-get install dataset-fashion-mnist")


def test_fashion_teacher_trains_when_installed():
    try:
        data = datasets.load("fashion")
    except InputError as exc:
        pytest.skip(str(exc))
    trained = teachers.train_classifier(
        data, 4, "tanh", seed=0, config=teachers.ClassifierConfig(max_epochs=1, batch_size=512)
    )
    assert trained.network.sizes == (784, 4, 10)
    assert trained.test_accuracy > 0.5
