"""Synthetic teacher networks (paper appendix A.4) and the queries made to a teacher.

Each hidden neuron ``i`` draws ``w_i ∈ {-1, 0, 1}^{n_in}`` and
``b_i ∈ {-2/3, -1/3, 0, 1/3, 2/3}·√3``; a draw is repeated when ``w_i = 0`` or when the neuron
equals another one up to sign (two such neurons could cancel through their output weights).
Then ``w_i ← 3 w_i / ||w_i||`` and ``b_i ← 3 b_i``: hyperplanes at distance ``|b|/||w||`` from the
origin with a steep rise across them. Output weights ``a_i ∈ {-1, 1}`` are finally rescaled so
that the output has mean 0 and standard deviation 1 over the input distribution,
``a ← a / std(y)``, ``b_out ← -mean(y) / std(y)``.

Deep teachers stack this construction; before drawing layer ``l > 0`` the previous layer's
activations are standardised over the input distribution (as a full-batch batch-norm would do)
and the standardisation is folded into that layer's weights and bias, so that each hidden
neuron's hyperplane lies inside the support of its inputs. Layer ``l > 0`` is drawn again
whenever a neuron of the layer below would get only zero outgoing weights: such a neuron never
reaches the output, so no method can recover it from input-output behaviour and the network's
true size would be smaller than the one asked for (with ternary weights a 4-2 teacher had a
dead first-layer neuron for about a third of the seeds).

Inputs are uniform in ``[-√3, √3]^{d_in}`` (zero mean, unit variance per coordinate).

Teachers trained on images (section 6, Tables 1-2, Fig. 6A) come from :func:`train_classifier`:
one or more hidden layers fitted to a data set of :mod:`ecflow.datasets` by Adam on the softmax
cross-entropy with early stopping, kept as the logits network that recovery queries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ecflow import datasets
from ecflow._checks import check_int, check_number
from ecflow.activations import Activation, get_activation
from ecflow.errors import InputError
from ecflow.safety import check_array_bytes
from ecflow.networks import MLP, Layer, glorot_normal, standardise_inputs

__all__ = [
    "TeacherConfig",
    "INPUT_HALF_WIDTH",
    "sample_inputs",
    "synthetic_teacher",
    "query",
    "parse_hidden",
    "ClassifierConfig",
    "TrainedTeacher",
    "split_indices",
    "train_classifier",
]

INPUT_HALF_WIDTH = float(np.sqrt(3.0))
"""Inputs are uniform in [-√3, √3]: zero mean and unit variance per coordinate."""

_BIAS_VALUES = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / 3.0 * np.sqrt(3.0)
_SCALE = 3.0


@dataclass(frozen=True)
class TeacherConfig:
    """Settings of a synthetic teacher.

    Parameters
    ----------
    d_in : int
        Input dimension.
    hidden : tuple of int
        Hidden layer sizes, e.g. ``(4,)`` for the paper's shallow teachers (r = 4).
    activation : str, default="g"
        Hidden activation; the output layer is ``identity``.
    d_out : int, default=1
    n_normalise : int, default=200_000
        Samples used to standardise layer inputs and the output. At 2e5 the sampling error of
        the output's mean and std is about 0.002, well inside the 0.01 the tests allow.
    """

    d_in: int
    hidden: tuple[int, ...]
    activation: str = "g"
    d_out: int = 1
    n_normalise: int = 200_000

    def __post_init__(self):
        check_int(self.d_in, "d_in")
        check_int(self.d_out, "d_out")
        check_int(self.n_normalise, "n_normalise")
        hidden = tuple(self.hidden)
        if not hidden:
            raise InputError("hidden must name at least one hidden layer size")
        for h in hidden:
            check_int(h, "hidden layer size")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        get_activation(self.activation)
        if self.n_normalise < 2:
            raise InputError(f"n_normalise must be at least 2, got {self.n_normalise}")
        # the standardisation samples are drawn at once: refuse what cannot fit, before drawing
        n_in = self.d_in
        for name, width in (("d_in", self.d_in), *(("hidden layer size", h) for h in hidden)):
            check_array_bytes(
                (self.n_normalise, width), f"{name} {width}: the standardisation samples"
            )
            check_array_bytes((width, n_in), f"{name} {width}: the layer's weights")
            n_in = width


def sample_inputs(n: int, d_in: int, rng: np.random.Generator | int | None) -> np.ndarray:
    """Draw inputs uniform in ``[-√3, √3]^{d_in}``.

    Returns
    -------
    x : ndarray of shape (n, d_in), float64
    """
    n = check_int(n, "n")
    d_in = check_int(d_in, "d_in")
    check_array_bytes((n, d_in), f"{n} inputs of dimension {d_in}")
    rng = np.random.default_rng(rng)
    return rng.uniform(-INPUT_HALF_WIDTH, INPUT_HALF_WIDTH, size=(n, d_in))


def _draw_layer(
    n_in: int, n_out: int, rng: np.random.Generator, *, use_every_input: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    while True:
        W, b = _draw_neurons(n_in, n_out, rng)
        if not use_every_input or np.all(np.any(W != 0.0, axis=0)):
            return W, b


def _draw_neurons(n_in: int, n_out: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    max_distinct = (3**n_in - 1) * len(_BIAS_VALUES) // 2
    if n_out > max_distinct:
        raise InputError(
            f"cannot draw {n_out} distinct neurons with {n_in} inputs (at most {max_distinct})"
        )
    W = np.zeros((n_out, n_in))
    b = np.zeros(n_out)
    seen: set[tuple[float, ...]] = set()
    i = 0
    while i < n_out:
        w = rng.integers(-1, 2, size=n_in).astype(np.float64)
        if not w.any():
            continue
        bias = float(rng.choice(_BIAS_VALUES))
        key = tuple(np.round(np.append(w, bias), 12))
        neg = tuple(np.round(-np.append(w, bias), 12))
        if key in seen or neg in seen:
            continue
        seen.add(key)
        W[i] = _SCALE * w / np.linalg.norm(w)
        b[i] = _SCALE * bias
        i += 1
    return W, b


def synthetic_teacher(config: TeacherConfig, seed: int) -> MLP:
    """Draw a synthetic teacher (appendix A.4), reproducibly from ``seed``.

    Parameters
    ----------
    config : TeacherConfig
    seed : int
        Seeds both the parameter draw and the normalisation sample.

    Returns
    -------
    MLP
        Layers ``d_in -> hidden[0] -> ... -> d_out``, hidden activation ``config.activation``,
        output ``identity``; output mean 0 and std 1 on the input distribution.
    """
    seed = int(seed)
    if seed < 0:
        raise InputError(f"seed must be non-negative, got {seed}")
    act: Activation = get_activation(config.activation)
    rng = np.random.default_rng(seed)
    x = sample_inputs(config.n_normalise, config.d_in, np.random.default_rng([seed, 1]))
    layers: list[Layer] = []
    h = x
    n_in = config.d_in
    for depth, n_out in enumerate(config.hidden):
        W, b = _draw_layer(n_in, n_out, rng, use_every_input=depth > 0)
        layer = Layer(W, b, act)
        if depth > 0:
            layer = standardise_inputs(layer, h)
        layers.append(layer)
        h = act(h @ layer.weight.T + layer.bias)
        n_in = n_out
    a = rng.choice([-1.0, 1.0], size=(config.d_out, n_in))
    y = h @ a.T
    mean, sd = y.mean(axis=0), y.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    layers.append(Layer(a / sd[:, None], -mean / sd, "identity"))
    return MLP(tuple(layers))


def query(network: MLP, x: np.ndarray) -> np.ndarray:
    """Query a network as a black box: its outputs at ``x``.

    Parameters
    ----------
    network : MLP
    x : ndarray of shape (n_samples, d_in), float64

    Returns
    -------
    y : ndarray of shape (n_samples, d_out), float64
    """
    return network.forward(x)


def parse_hidden(text: str | Sequence[int]) -> tuple[int, ...]:
    """Parse hidden sizes from ``"8,4,2"`` (or a sequence), validating each is a positive int."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        if not parts or any(not p for p in parts):
            raise InputError(f"hidden sizes must be comma-separated positive integers, got {text!r}")
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(
                f"hidden sizes must be comma-separated positive integers, got {text!r}"
            ) from None
    else:
        sizes = tuple(int(s) for s in text)
    if not sizes or any(s < 1 for s in sizes):
        raise InputError(f"hidden sizes must be positive integers, got {text!r}")
    return sizes


# --- teachers trained on images (paper section 6, Tables 1-2, Fig. 6A, appendix A.6) ------------
# Any number of hidden layers, softmax cross-entropy, Adam on minibatches and early stopping on the validation
# loss, as the paper trains its MNIST teachers. The network keeps the logits (identity last
# layer): recovery needs the values before the softmax, not only the class.

_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999
_ADAM_EPS = 1e-8
# A validation loss must drop by this relative amount to count as progress, so that noise at the
# fourth digit does not keep training alive.
_MIN_RELATIVE_IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of :func:`train_classifier`.

    Parameters
    ----------
    learning_rate : float, default=3e-3
        Adam step size.
    batch_size : int, default=64
    max_epochs : int, default=2000
        Upper bound only; early stopping ends digits and MNIST runs after a few hundred epochs.
    patience : int, default=30
        Epochs without a lower validation loss before training stops.
    val_fraction, test_fraction : float, default=0.15
        Shares of each class held out for early stopping and for the reported test accuracy;
        the rest (70 %) is the training set.
    """

    learning_rate: float = 3e-3
    batch_size: int = 64
    max_epochs: int = 2000
    patience: int = 30
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    def __post_init__(self):
        check_number(self.learning_rate, "learning_rate", positive=True)
        check_int(self.batch_size, "batch_size")
        check_int(self.max_epochs, "max_epochs")
        check_int(self.patience, "patience")
        for name in ("val_fraction", "test_fraction"):
            value = check_number(getattr(self, name), name, positive=True)
            if value >= 0.5:
                raise InputError(f"{name} must be below 0.5, got {value}")


@dataclass(frozen=True, eq=False)
class TrainedTeacher:
    """A classifier trained by :func:`train_classifier`, with its split and how training went.

    Parameters
    ----------
    network : MLP
        ``d_in -> n_hidden_1 -> ... -> n_hidden_L -> n_classes``, last layer ``identity``: it
        outputs logits.
    dataset : str
        Name of the data set it was trained on.
    seed : int
    train_index, val_index, test_index : ndarray of shape (n_train,), (n_val,), (n_test,), int64
        Rows of the data set in each part of the split, sorted.
    x_train : ndarray of shape (n_train, d_in), float64
        The training inputs; the queries a teacher file stores.
    train_accuracy, val_accuracy, test_accuracy : float
        Share of correctly classified images (argmax of the logits) in each part.
    val_loss : float
        Lowest validation cross-entropy, reached at ``best_epoch``; ``network`` holds the
        parameters of that epoch.
    epochs, best_epoch : int
    stopped_by : {"patience", "max_epochs"}
    seconds : float
        Wall-clock training time.
    """

    network: MLP
    dataset: str
    seed: int
    train_index: np.ndarray
    val_index: np.ndarray
    test_index: np.ndarray
    x_train: np.ndarray
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    val_loss: float
    epochs: int
    best_epoch: int
    stopped_by: str
    seconds: float

    @property
    def message(self) -> str:
        """Why training stopped, with the remedy where there is one."""
        if self.stopped_by == "patience":
            return (
                f"early stop: validation loss {self.val_loss:.4g} at epoch {self.best_epoch} "
                f"was not improved for {self.epochs - self.best_epoch} epochs"
            )
        return (
            f"max_epochs ({self.epochs}) reached while the validation loss still fell: "
            f"increase max_epochs"
        )

    def file_attrs(self) -> dict[str, object]:
        """Root attributes for the teacher's network file (dataset, seed, split, accuracies)."""
        return {
            "teacher": "trained",
            "dataset": self.dataset,
            "seed": self.seed,
            "split": "stratified by label, train/validation/test "
            f"{len(self.train_index)}/{len(self.val_index)}/{len(self.test_index)}",
            "train_accuracy": self.train_accuracy,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "epochs": self.epochs,
            "stopped_by": self.stopped_by,
        }


def split_indices(
    labels: np.ndarray, seed: int, *, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split rows into train/validation/test, stratified by label, reproducibly from ``seed``.

    Each class is shuffled and cut in the given proportions (rounded per class), so every part
    keeps the class balance of the data set.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,), int
    seed : int
    val_fraction, test_fraction : float

    Returns
    -------
    train_index, val_index, test_index : ndarray of int64, sorted
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0])
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(val_fraction * len(rows)))
        n_test = int(round(test_fraction * len(rows)))
        cut = len(rows) - n_val - n_test
        for part, chunk in zip(parts, (rows[:cut], rows[cut : cut + n_val], rows[cut + n_val :])):
            part.append(chunk)
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


def _unpack(theta: np.ndarray, *sizes: int) -> tuple[np.ndarray, ...]:
    """Views ``W_1, b_1, ..., W_L, b_L`` of the flat parameter vector of a network with layer
    sizes ``sizes = (d_in, n_hidden_1, ..., n_classes)``, in :meth:`MLP.flatten` order; for one
    hidden layer ``W (n_hidden, d_in), b (n_hidden,), A (n_classes, n_hidden), c (n_classes,)``."""
    views: list[np.ndarray] = []
    k = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        views.append(theta[k : k + n_out * n_in].reshape(n_out, n_in))
        k += n_out * n_in
        views.append(theta[k : k + n_out])
        k += n_out
    return tuple(views)


def _cross_entropy(z: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of logits ``z (n, n_classes)`` and its gradient in ``z``,
    ``(softmax(z) - onehot(labels)) / n``."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = float(np.mean(np.log(s[:, 0]) - z[rows, labels]))
    dz = e / s
    dz[rows, labels] -= 1.0
    return loss, dz / len(labels)


def _loss_grad(theta, shape, act: Activation, x, labels) -> tuple[float, np.ndarray]:
    """Cross-entropy of the classifier and its exact gradient (backprop).

    With ``h_0 = x``, ``h_l = σ(h_{l-1} W_lᵀ + b_l)`` for the hidden layers and logits
    ``z = h_L W_{L+1}ᵀ + b_{L+1}``: ``δ_{L+1} = ∂loss/∂z``, ``∂W_l = δ_lᵀ h_{l-1}``,
    ``∂b_l = Σ δ_l``, ``δ_{l-1} = (δ_l W_l) ⊙ σ'(h_{l-2} W_{l-1}ᵀ + b_{l-1})``.
    """
    views = _unpack(theta, *shape)
    weights, biases = views[0::2], views[1::2]
    inputs, slopes = [x], []
    for W, b in zip(weights[:-1], biases[:-1]):
        h, dh, _ = act.fused(inputs[-1] @ W.T + b)
        inputs.append(h)
        slopes.append(dh)
    loss, delta = _cross_entropy(inputs[-1] @ weights[-1].T + biases[-1], labels)
    grads: list[np.ndarray] = []
    for l in range(len(weights) - 1, -1, -1):
        grads.append(delta.sum(axis=0))
        grads.append((delta.T @ inputs[l]).ravel())
        if l > 0:
            delta = (delta @ weights[l]) * slopes[l - 1]
    return loss, np.concatenate(grads[::-1])


def _logits(theta, shape, act: Activation, x) -> np.ndarray:
    views = _unpack(theta, *shape)
    h = x
    for W, b in zip(views[0:-2:2], views[1:-2:2]):
        h = act(h @ W.T + b)
    return h @ views[-2].T + views[-1]


def _check_hidden_sizes(hidden: int | Sequence[int]) -> tuple[int, ...]:
    """``hidden`` as a non-empty tuple of positive sizes, one per hidden layer."""
    sizes = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
    if not sizes:
        raise InputError("hidden must name at least one hidden layer size, got none")
    return tuple(check_int(h, "hidden") for h in sizes)


def train_classifier(
    dataset: str | datasets.Dataset,
    hidden: int | Sequence[int],
    activation: str = "tanh",
    seed: int = 0,
    config: ClassifierConfig | None = None,
) -> TrainedTeacher:
    """Train a classifier on a data set: the teachers of Tables 1 and 2 (one hidden layer) and
    of Fig. 6A (several).

    Minimises the mean softmax cross-entropy of the logits
    ``z = σ(... σ(x W_1ᵀ + b_1) ...) W_{L+1}ᵀ + b_{L+1}`` over the training part with Adam on shuffled minibatches (exact gradient, float64), from the paper's
    Glorot-normal initialisation (appendix A.6.1); after each epoch the validation loss is
    measured and the parameters of the best epoch are kept. Everything (split, initialisation,
    batch order) follows from ``seed``.

    Parameters
    ----------
    dataset : str or ecflow.datasets.Dataset
        A name of :data:`ecflow.datasets.NAMES` or a loaded data set.
    hidden : int or sequence of int
        Number of hidden neurons ``r``, or one size per hidden layer (``(16, 16)``).
    activation : str, default="tanh"
        Hidden activation (any of :data:`ecflow.activations.ACTIVATIONS`).
    seed : int, default=0
    config : ClassifierConfig, optional

    Returns
    -------
    TrainedTeacher

    Raises
    ------
    InputError
        Unknown data set or activation, a hidden size below 1, negative seed, fashion not installed,
        a data set too small to leave images in each part of the split.
    """
    config = ClassifierConfig() if config is None else config
    data = datasets.load(dataset) if isinstance(dataset, str) else dataset
    hidden = _check_hidden_sizes(hidden)
    seed = check_int(seed, "seed", minimum=0)
    act = get_activation(activation)
    started = time.perf_counter()
    train, val, test = _split(data, seed, config)
    x, labels = data.x, data.labels
    shape = (data.d_in, *hidden, data.n_classes)
    init = glorot_normal(
        shape, (act,) * len(hidden) + ("identity",), np.random.default_rng([seed, 1])
    )
    fit = _fit(init.flatten(), shape, act, x[train], labels[train], x[val], labels[val],
               np.random.default_rng([seed, 2]), config)

    def accuracy(rows: np.ndarray) -> float:
        predicted = np.argmax(_logits(fit.theta, shape, act, x[rows]), axis=1)
        return float(np.mean(predicted == labels[rows]))

    return TrainedTeacher(
        network=init.unflatten(fit.theta),
        dataset=data.name,
        seed=seed,
        train_index=train,
        val_index=val,
        test_index=test,
        x_train=np.array(x[train]),
        train_accuracy=accuracy(train),
        val_accuracy=accuracy(val),
        test_accuracy=accuracy(test),
        val_loss=float(fit.val_loss),
        epochs=fit.epochs,
        best_epoch=fit.best_epoch,
        stopped_by=fit.stopped_by,
        seconds=time.perf_counter() - started,
    )


def _split(data, seed: int, config: ClassifierConfig):
    """The train/validation/test indices, each part non-empty."""
    train, val, test = split_indices(
        data.labels, seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction
    )
    if min(len(train), len(val), len(test)) == 0:
        raise InputError(
            f"data set {data.name!r} is too small for a train/validation/test split: "
            f"{len(train)}/{len(val)}/{len(test)} images"
        )
    return train, val, test


@dataclass(frozen=True, eq=False)
class _Fit:
    """The best epoch of :func:`_fit`: its parameters and validation loss, and how it ended."""

    theta: np.ndarray
    val_loss: float
    best_epoch: int
    epochs: int
    stopped_by: str


def _fit(theta, shape, act, x_train, y_train, x_val, y_val, batch_rng,
         config: ClassifierConfig) -> _Fit:
    """Adam on shuffled minibatches, the best epoch by validation loss, early stop on
    ``patience`` epochs without a relative improvement of ``_MIN_RELATIVE_IMPROVEMENT``."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    best_theta, best_loss, best_epoch = theta.copy(), np.inf, 0
    step, epoch, stopped_by = 0, 0, "max_epochs"
    while epoch < config.max_epochs:
        epoch += 1
        order = batch_rng.permutation(len(x_train))
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            _, grad = _loss_grad(theta, shape, act, x_train[rows], y_train[rows])
            step += 1
            m = _ADAM_BETA1 * m + (1.0 - _ADAM_BETA1) * grad
            v = _ADAM_BETA2 * v + (1.0 - _ADAM_BETA2) * grad * grad
            m_hat = m / (1.0 - _ADAM_BETA1**step)
            v_hat = v / (1.0 - _ADAM_BETA2**step)
            theta = theta - config.learning_rate * m_hat / (np.sqrt(v_hat) + _ADAM_EPS)
        val_loss, _ = _cross_entropy(_logits(theta, shape, act, x_val), y_val)
        if val_loss < best_loss * (1.0 - _MIN_RELATIVE_IMPROVEMENT):
            best_theta, best_loss, best_epoch = theta.copy(), val_loss, epoch
        elif epoch - best_epoch >= config.patience:
            stopped_by = "patience"
            break
    return _Fit(best_theta, best_loss, best_epoch, epoch, stopped_by)
