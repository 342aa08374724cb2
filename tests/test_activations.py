"""Activations: values against independent formulas, derivatives against finite differences,
stability for large |z|, and each symmetry class derived and checked by property tests."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecflow.activations import ACTIVATIONS, Symmetry, derive_symmetry, get_activation
from ecflow.networks import MLP

SPEC_NAMES = [
    "g", "sigmoid", "tanh", "softplus", "relu", "leaky_relu", "gelu", "silu", "selu", "mish",
    "identity",
]

# Independent scalar definitions (math module, no shared code with ecflow).
def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _sp(x):
    return math.log1p(math.exp(x))


REFERENCE = {
    "g": lambda x: _sp(x) + _sig(4 * x),
    "sigmoid": _sig,
    "tanh": math.tanh,
    "softplus": _sp,
    "relu": lambda x: max(x, 0.0),
    "leaky_relu": lambda x: x if x > 0 else 0.01 * x,
    "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
    "silu": lambda x: x * _sig(x),
    "selu": lambda x: 1.0507009873554804934193349852946
    * (x if x > 0 else 1.6732632423543772848170429916717 * (math.exp(x) - 1)),
    "mish": lambda x: x * math.tanh(_sp(x)),
    "identity": lambda x: x,
}

EXPECTED_CLASS = {
    "g": Symmetry.NONE,
    "selu": Symmetry.NONE,
    "mish": Symmetry.NONE,
    "tanh": Symmetry.ODD,
    "sigmoid": Symmetry.ODD_CONSTANT,
    "softplus": Symmetry.EVEN_LINEAR,
    "gelu": Symmetry.EVEN_LINEAR,
    "silu": Symmetry.EVEN_LINEAR,
    "relu": Symmetry.EVEN_LINEAR_SCALING,
    "leaky_relu": Symmetry.EVEN_LINEAR_SCALING,
    "identity": Symmetry.EVEN_LINEAR_SCALING,
}


def test_all_spec_activations_present():
    assert sorted(ACTIVATIONS) == sorted(SPEC_NAMES)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_values_match_reference(name):
    z = np.linspace(-8, 8, 161)
    ref = np.array([REFERENCE[name](float(v)) for v in z])
    np.testing.assert_allclose(get_activation(name)(z), ref, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_derivatives_match_finite_differences(name):
    act = get_activation(name)
    # avoid the kink of relu-type functions and selu at 0
    z = np.linspace(-5.03, 5.07, 97)
    h = 1e-5
    f, df, d2f = act.fused(z)
    fd1 = (act(z + h) - act(z - h)) / (2 * h)
    fd2 = (act.df(z + h) - act.df(z - h)) / (2 * h)
    np.testing.assert_allclose(df, fd1, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(d2f, fd2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(f, act(z))


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_stable_for_large_inputs(name):
    act = get_activation(name)
    z = np.array([-1e3, -700.0, -50.0, 0.0, 50.0, 700.0, 1e3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f, df, d2f = act.fused(z)
    for arr in (f, df, d2f):
        assert arr.dtype == np.float64
        assert np.all(np.isfinite(arr))


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_symmetry_class_is_derived(name):
    act = get_activation(name)
    assert act.symmetry is EXPECTED_CLASS[name]
    assert derive_symmetry(act) is act.symmetry


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_declared_constants(name):
    act = get_activation(name)
    assert act.c0 == pytest.approx(float(act(np.zeros(1))[0]), abs=1e-15) or act.symmetry in (
        Symmetry.NONE,
    )
    if act.symmetry in (Symmetry.EVEN_LINEAR, Symmetry.EVEN_LINEAR_SCALING):
        z = np.linspace(0.1, 4, 40)
        np.testing.assert_allclose(act(z) - act(-z), 2 * act.c1 * z, rtol=1e-12, atol=1e-14)


def test_unknown_activation_message():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*expected one of"):
        get_activation("swish")
    with pytest.raises(TypeError):
        get_activation(3)


# --- symmetry property tests: the transformed network computes the same function -----------------

def _one_hidden(W, b, a, c, act):
    return MLP.from_arrays([W, a], [b, c], [act, "identity"])


def _random_net(rng, act, d_in=3, m=4):
    W = rng.normal(size=(m, d_in))
    b = rng.normal(size=m)
    a = rng.normal(size=(1, m))
    c = rng.normal(size=1)
    return W, b, a, c


X = np.random.default_rng(0).uniform(-np.sqrt(3), np.sqrt(3), size=(400, 3))

seeds = st.integers(min_value=0, max_value=2**31 - 1)


@given(seed=seeds, split=st.floats(min_value=-3, max_value=3))
def test_duplicate_split_any_activation(seed, split):
    """Every class: splitting a neuron into two duplicates with a_1 + a_2 = a keeps the function."""
    rng = np.random.default_rng(seed)
    for name in SPEC_NAMES:
        W, b, a, c = _random_net(rng, name)
        net = _one_hidden(W, b, a, c, name)
        W2 = np.vstack([W, W[:1]])
        b2 = np.append(b, b[0])
        a2 = np.hstack([a, a[:, :1] * split])
        a2[0, 0] = a[0, 0] * (1 - split)
        net2 = _one_hidden(W2, b2, a2, c, name)
        np.testing.assert_allclose(net2(X), net(X), rtol=1e-12, atol=1e-12)


@given(seed=seeds)
def test_odd_flip(seed):
    rng = np.random.default_rng(seed)
    W, b, a, c = _random_net(rng, "tanh")
    k = rng.integers(4)
    W2, b2, a2 = W.copy(), b.copy(), a.copy()
    W2[k], b2[k], a2[0, k] = -W[k], -b[k], -a[0, k]
    np.testing.assert_allclose(
        _one_hidden(W2, b2, a2, c, "tanh")(X), _one_hidden(W, b, a, c, "tanh")(X), atol=1e-12
    )


@given(seed=seeds)
def test_odd_constant_flip(seed):
    rng = np.random.default_rng(seed)
    act = get_activation("sigmoid")
    W, b, a, c = _random_net(rng, act)
    k = rng.integers(4)
    W2, b2, a2 = W.copy(), b.copy(), a.copy()
    W2[k], b2[k], a2[0, k] = -W[k], -b[k], -a[0, k]
    c2 = c + 2 * act.c0 * a[0, k]  # σ(z) = 2 c0 - σ(-z)
    np.testing.assert_allclose(
        _one_hidden(W2, b2, a2, c2, act)(X), _one_hidden(W, b, a, c, act)(X), atol=1e-12
    )


@given(seed=seeds, name=st.sampled_from(["softplus", "gelu", "silu", "relu", "leaky_relu"]))
def test_even_linear_flip_with_linear_pair(seed, name):
    """σ(z) = σ(-z) + 2 c1 z: a flipped neuron plus a linear-type pair at another hyperplane
    (σ(u) - σ(-u) = 2 c1 u) reproduce the original exactly."""
    rng = np.random.default_rng(seed)
    act = get_activation(name)
    W, b, a, c = _random_net(rng, act)
    k = 0
    ak = a[0, k]
    # flipped neuron: ak σ(-z) ; missing term: 2 c1 ak z = ak (σ(z) - σ(-z)) with the same z.
    W2 = np.vstack([W, -W[k], W[k], -W[k]])
    b2 = np.concatenate([b, [-b[k], b[k], -b[k]]])
    a2 = np.hstack([a, [[ak, ak, -ak]]])
    a2[0, k] = 0.0
    np.testing.assert_allclose(
        _one_hidden(W2, b2, a2, c, act)(X), _one_hidden(W, b, a, c, act)(X), atol=1e-11
    )


@given(seed=seeds, scale=st.floats(min_value=1e-2, max_value=1e2),
       name=st.sampled_from(["relu", "leaky_relu"]))
def test_positive_scaling(seed, scale, name):
    rng = np.random.default_rng(seed)
    W, b, a, c = _random_net(rng, name)
    k = rng.integers(4)
    W2, b2, a2 = W.copy(), b.copy(), a.copy()
    W2[k] *= scale
    b2[k] *= scale
    a2[0, k] /= scale
    np.testing.assert_allclose(
        _one_hidden(W2, b2, a2, c, name)(X), _one_hidden(W, b, a, c, name)(X), atol=1e-12,
        rtol=1e-12,
    )


@given(seed=seeds, name=st.sampled_from(SPEC_NAMES))
def test_zero_and_constant_neurons(seed, name):
    """Zero-type (output weight 0) and constant-type (w = 0, folded into the bias) neurons."""
    rng = np.random.default_rng(seed)
    act = get_activation(name)
    W, b, a, c = _random_net(rng, act)
    bz = rng.normal()
    az = rng.normal()
    W2 = np.vstack([W, rng.normal(size=(1, 3)), np.zeros((1, 3))])
    b2 = np.concatenate([b, [rng.normal(), bz]])
    a2 = np.hstack([a, [[0.0, az]]])
    c2 = c - az * act(np.array([bz]))
    np.testing.assert_allclose(
        _one_hidden(W2, b2, a2, c2, act)(X), _one_hidden(W, b, a, c, act)(X), atol=1e-12
    )


# --- the compensation algebra ----------------------------------------------------------------


@given(
    name=st.sampled_from([n for n, a in ACTIVATIONS.items() if a.symmetry.sign_invariant]),
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 4),
)
def test_compensate_keeps_the_group_function(name, seed, k):
    # Members v_i = s_i λ_i v computed directly equal the merged neuron plus the constant and
    # linear terms the class leaves: sum_i a_i σ(v_i·[x, 1]) = A σ(v·[x, 1]) + β + Θ̃ [x, 1].
    act = get_activation(name)
    rng = np.random.default_rng(seed)
    d, n_next = 3, 2
    v = rng.normal(size=d + 1)
    signs = rng.choice([-1, 1], size=k)
    scales = rng.uniform(0.5, 2.0, size=k) if act.symmetry.scale_invariant else np.ones(k)
    a = rng.normal(size=(n_next, k))
    X1 = np.hstack([rng.uniform(-2.0, 2.0, size=(200, d)), np.ones((200, 1))])
    direct = sum(np.outer(act(X1 @ (signs[i] * scales[i] * v)), a[:, i]) for i in range(k))
    comp = act.compensate(a, signs, scales, v)
    merged = np.outer(act(X1 @ v), comp.output_weight) + comp.bias + X1 @ comp.linear.T
    np.testing.assert_allclose(merged, direct, rtol=1e-10, atol=1e-10)


def test_compensate_without_symmetry_only_sums_output_weights():
    act = get_activation("g")
    a = np.array([[1.0, 2.0], [3.0, -1.0]])
    comp = act.compensate(a, np.ones(2, dtype=int), np.ones(2), np.array([1.0, 0.5, 0.0]))
    np.testing.assert_array_equal(comp.output_weight, [3.0, 2.0])
    assert not comp.bias.any() and not comp.linear.any()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_output_weight_writes_a_flipped_rescaled_neuron_on_the_original(name):
    act = get_activation(name)
    sym = act.symmetry
    a = np.array([1.5, -0.5])
    w = act.output_weight(a, -1, 2.0)
    expected = a * (2.0 if sym.scale_invariant else 1.0) * (-1 if sym.flip_negates_output else 1)
    np.testing.assert_array_equal(w, expected)
    assert sym.max_cosine_distance == (1.0 if sym.sign_invariant else 2.0)
