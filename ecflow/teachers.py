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
neuron's hyperplane lies inside the support of its inputs.

Inputs are uniform in ``[-√3, √3]^{d_in}`` (zero mean, unit variance per coordinate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ecflow._checks import check_int
from ecflow.activations import Activation, get_activation
from ecflow.networks import MLP, Layer

__all__ = [
    "TeacherConfig",
    "INPUT_HALF_WIDTH",
    "sample_inputs",
    "synthetic_teacher",
    "query",
    "parse_hidden",
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
            raise ValueError("hidden must name at least one hidden layer size")
        for h in hidden:
            check_int(h, "hidden layer size")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        get_activation(self.activation)
        if self.n_normalise < 2:
            raise ValueError(f"n_normalise must be at least 2, got {self.n_normalise}")


def sample_inputs(n: int, d_in: int, rng: np.random.Generator | int | None) -> np.ndarray:
    """Draw inputs uniform in ``[-√3, √3]^{d_in}``.

    Returns
    -------
    x : ndarray of shape (n, d_in), float64
    """
    n = check_int(n, "n")
    d_in = check_int(d_in, "d_in")
    rng = np.random.default_rng(rng)
    return rng.uniform(-INPUT_HALF_WIDTH, INPUT_HALF_WIDTH, size=(n, d_in))


def _draw_layer(n_in: int, n_out: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    max_distinct = (3**n_in - 1) * len(_BIAS_VALUES) // 2
    if n_out > max_distinct:
        raise ValueError(
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
        raise ValueError(f"seed must be non-negative, got {seed}")
    act: Activation = get_activation(config.activation)
    rng = np.random.default_rng(seed)
    x = sample_inputs(config.n_normalise, config.d_in, np.random.default_rng([seed, 1]))
    layers: list[Layer] = []
    h = x
    n_in = config.d_in
    for depth, n_out in enumerate(config.hidden):
        W, b = _draw_layer(n_in, n_out, rng)
        if depth > 0:
            mu = h.mean(axis=0)
            sd = h.std(axis=0)
            sd = np.where(sd > 0, sd, 1.0)
            # σ(W (h - μ)/sd + b) = σ((W/sd) h + b - (W/sd) μ)
            W = W / sd
            b = b - W @ mu
        layers.append(Layer(W, b, act))
        h = act(h @ W.T + b)
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
            raise ValueError(f"hidden sizes must be comma-separated positive integers, got {text!r}")
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"hidden sizes must be comma-separated positive integers, got {text!r}"
            ) from None
    else:
        sizes = tuple(int(s) for s in text)
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"hidden sizes must be positive integers, got {text!r}")
    return sizes
