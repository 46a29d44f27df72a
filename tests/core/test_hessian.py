"""Tests for Hessian–vector products over the trainable subset and for Lanczos.

References: the dense `jax.hessian` of the token-mean loss on a small MLP (215 trainable
parameters), `numpy.linalg.eigh` for the spectra.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

from merit_jax.core import hessian
from merit_jax.core import tree as tree_lib

VOCAB, FEATURES, HIDDEN, CLASSES = 9, 5, 16, 7
TRAINABLE = tree_lib.path_filter(include=r"^mlp/")


def _init_params(seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 8))

    def normal(shape, scale=0.7):
        return scale * jax.random.normal(next(keys), shape, dtype=jnp.float32)

    return {
        "embed": {"table": normal((VOCAB, FEATURES))},
        "mlp": {
            "hidden": {"kernel": normal((FEATURES, HIDDEN)), "bias": normal((HIDDEN,), 0.1)},
            "output": {"kernel": normal((HIDDEN, CLASSES)), "bias": normal((CLASSES,), 0.1)},
        },
    }


def _logits(params, tokens):
    features = params["embed"]["table"][tokens]
    layer = params["mlp"]["hidden"]
    hidden = jnp.tanh(features @ layer["kernel"] + layer["bias"])
    return hidden @ params["mlp"]["output"]["kernel"] + params["mlp"]["output"]["bias"]


def loss_fn(params, batch):
    log_probs = jax.nn.log_softmax(_logits(params, batch["tokens"]), axis=-1)
    token_loss = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    return jnp.sum(token_loss * batch["mask"]), jnp.sum(batch["mask"])


# A hand-written cross-entropy whose backward pass calls another custom_vjp function, as fused
# kernels do: jvp cannot go through that backward pass, but grad can.
@jax.custom_vjp
def _softmax(logits):
    return jax.nn.softmax(logits, axis=-1)


def _softmax_forward(logits):
    probs = jax.nn.softmax(logits, axis=-1)
    return probs, probs


def _softmax_backward(probs, cotangent):
    return (probs * (cotangent - jnp.sum(cotangent * probs, axis=-1, keepdims=True)),)


_softmax.defvjp(_softmax_forward, _softmax_backward)


@jax.custom_vjp
def _cross_entropy(logits, one_hot):
    return -jnp.sum(one_hot * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _cross_entropy_forward(logits, one_hot):
    return _cross_entropy(logits, one_hot), (logits, one_hot)


def _cross_entropy_backward(residuals, cotangent):
    logits, one_hot = residuals
    return cotangent[..., None] * (_softmax(logits) - one_hot), None


_cross_entropy.defvjp(_cross_entropy_forward, _cross_entropy_backward)


def custom_vjp_loss_fn(params, batch):
    one_hot = jax.nn.one_hot(batch["targets"], CLASSES)
    token_loss = _cross_entropy(_logits(params, batch["tokens"]), one_hot)
    return jnp.sum(token_loss * batch["mask"]), jnp.sum(batch["mask"])


def _batches(seed=1):
    """Two token-masked batches of different shapes, one padded row without supervised tokens."""
    rng = np.random.default_rng(seed)
    batches = []
    for shape in [(3, 4), (2, 6)]:
        mask = (rng.random(shape) < 0.7).astype(np.float32)
        mask[0, 0] = 1.0
        batches.append({
            "tokens": rng.integers(0, VOCAB, shape),
            "targets": rng.integers(0, CLASSES, shape),
            "mask": mask,
        })
    batches[0]["mask"][-1] = 0.0
    return batches


def _dense_hessian(params, batches, loss=loss_fn):
    """Return (H (P, P), unravel) of the token-mean loss over the trainable subset."""
    trainable, frozen = tree_lib.partition(params, TRAINABLE)
    flat, unravel = ravel_pytree(trainable)
    total_tokens = sum(float(np.sum(batch["mask"])) for batch in batches)

    def mean_loss(flat_params):
        full = tree_lib.combine(unravel(flat_params), frozen)
        return sum(loss(full, batch)[0] for batch in batches) / total_tokens

    return np.asarray(jax.hessian(mean_loss)(flat), dtype=np.float64), unravel


def _random_vector(params, seed):
    trainable, _ = tree_lib.partition(params, TRAINABLE)
    flat, unravel = ravel_pytree(trainable)
    direction = np.random.default_rng(seed).normal(size=flat.shape).astype(np.float32)
    return unravel(jnp.asarray(direction / np.linalg.norm(direction)))


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0], dtype=np.float64)


def _assert_close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.max(np.abs(expected)))


@pytest.mark.parametrize("mode", ["forward_over_reverse", "reverse_over_reverse"])
def test_hvp_matches_dense_hessian(mode):
    params, batches = _init_params(), _batches()
    dense, _ = _dense_hessian(params, batches)
    vector = _random_vector(params, seed=3)

    product = hessian.hvp(loss_fn, params, batches, vector, trainable=TRAINABLE, mode=mode)

    assert [path for path, _ in tree_lib.leaves_with_paths(product)] == [
        "mlp/hidden/bias", "mlp/hidden/kernel", "mlp/output/bias", "mlp/output/kernel",
    ]
    _assert_close(_flat(product), dense @ _flat(vector))


def test_hvp_modes_agree():
    params, batches = _init_params(), _batches()
    vector = _random_vector(params, seed=4)

    forward = hessian.hvp(loss_fn, params, batches, vector, trainable=TRAINABLE)
    reverse = hessian.hvp(
        loss_fn, params, batches, vector, trainable=TRAINABLE, mode="reverse_over_reverse"
    )
    central = hessian.hvp(
        loss_fn, params, batches, vector, trainable=TRAINABLE, mode="central_difference",
        epsilon=1e-2,
    )

    _assert_close(_flat(reverse), _flat(forward))
    _assert_close(_flat(central), _flat(forward), rtol=2e-3)


def test_central_difference_error_shrinks_as_epsilon_squared():
    params, batches = _init_params(), _batches()
    vector = _random_vector(params, seed=5)
    exact = _flat(hessian.hvp(loss_fn, params, batches, vector, trainable=TRAINABLE))

    errors = []
    for epsilon in [0.4, 0.2, 0.1]:
        central = hessian.hvp(
            loss_fn, params, batches, vector, trainable=TRAINABLE, mode="central_difference",
            epsilon=epsilon,
        )
        errors.append(np.linalg.norm(_flat(central) - exact))

    # Halving ε divides the O(ε²) truncation error by 4 while round-off is still negligible.
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 3.5), ratios
    assert np.all(ratios < 4.5), ratios


def test_hvp_is_symmetric():
    params, batches = _init_params(), _batches()
    first, second = _random_vector(params, seed=6), _random_vector(params, seed=7)

    h_first = hessian.hvp(loss_fn, params, batches, first, trainable=TRAINABLE)
    h_second = hessian.hvp(loss_fn, params, batches, second, trainable=TRAINABLE)

    left = float(tree_lib.tree_vdot(first, h_second))
    right = float(tree_lib.tree_vdot(h_first, second))
    assert left == pytest.approx(right, rel=1e-5)


def test_hvp_is_linear():
    params, batches = _init_params(), _batches()
    first, second = _random_vector(params, seed=8), _random_vector(params, seed=9)
    combined = jax.tree.map(lambda a, b: 2.0 * a - 0.5 * b, first, second)

    h_first = hessian.hvp(loss_fn, params, batches, first, trainable=TRAINABLE)
    h_second = hessian.hvp(loss_fn, params, batches, second, trainable=TRAINABLE)
    h_combined = hessian.hvp(loss_fn, params, batches, combined, trainable=TRAINABLE)

    _assert_close(_flat(h_combined), 2.0 * _flat(h_first) - 0.5 * _flat(h_second))


def test_hvp_uses_current_frozen_values():
    # The compiled step is cached per loss_fn; frozen leaves baked in as constants would make the
    # second call reuse the first call's embedding table.
    batches = _batches()
    first = _init_params(seed=0)
    second = tree_lib.combine(
        tree_lib.partition(first, TRAINABLE)[0], {"embed": _init_params(seed=5)["embed"]}
    )
    vector = _random_vector(first, seed=10)

    for params in (first, second):
        dense, _ = _dense_hessian(params, batches)
        product = hessian.hvp(loss_fn, params, batches, vector, trainable=TRAINABLE)
        _assert_close(_flat(product), dense @ _flat(vector))


def test_hvp_rejects_mismatched_vector():
    params = _init_params()
    vector = {"mlp": {"hidden": {"kernel": jnp.ones((FEATURES, HIDDEN))}}}

    with pytest.raises(ValueError, match="leaf paths and shapes"):
        hessian.hvp(loss_fn, params, _batches(), vector, trainable=TRAINABLE)


def test_hvp_rejects_unknown_mode_and_empty_batches():
    params = _init_params()
    vector = _random_vector(params, seed=0)

    with pytest.raises(ValueError, match="unknown HVP mode"):
        hessian.hvp(loss_fn, params, _batches(), vector, trainable=TRAINABLE, mode="dense")
    with pytest.raises(ValueError, match="no batches"):
        hessian.hvp(loss_fn, params, [], vector, trainable=TRAINABLE)


def test_operator_auto_mode_uses_forward_over_reverse():
    operator = hessian.make_hvp_operator(loss_fn, _init_params(), _batches(), trainable=TRAINABLE)

    assert operator.mode == "forward_over_reverse"
    assert operator.fallback_reason is None
    assert operator.size == FEATURES * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES


def test_operator_falls_back_through_custom_vjp():
    params, batches = _init_params(), _batches()
    dense, _ = _dense_hessian(params, batches)
    vector = _random_vector(params, seed=11)

    operator = hessian.make_hvp_operator(custom_vjp_loss_fn, params, batches, trainable=TRAINABLE)

    assert operator.mode == "reverse_over_reverse"
    assert "custom_vjp" in operator.fallback_reason
    _assert_close(_flat(operator.apply(vector)), dense @ _flat(vector))


def test_forward_over_reverse_fails_through_custom_vjp():
    # Negative control for the fallback: forcing forward mode on this loss raises.
    params = _init_params()
    with pytest.raises(TypeError, match="custom_vjp"):
        hessian.hvp(
            custom_vjp_loss_fn, params, _batches(), _random_vector(params, seed=0),
            trainable=TRAINABLE, mode="forward_over_reverse",
        )


def test_operator_matvec_uses_canonical_flattening():
    params, batches = _init_params(), _batches()
    dense, _ = _dense_hessian(params, batches)
    operator = hessian.make_hvp_operator(loss_fn, params, batches, trainable=TRAINABLE)
    vector = _random_vector(params, seed=12)

    flat = operator.matvec(operator.flatten(vector))

    # ravel_pytree and leaves_with_paths both follow the jax.tree_util leaf order.
    _assert_close(flat, dense @ _flat(vector))
    _assert_close(flat, _flat(operator.apply(vector)))
    np.testing.assert_array_equal(operator.flatten(operator.unflatten(flat)), flat)


def _diagonal_matvec(eigenvalues):
    diagonal = jnp.asarray(eigenvalues, dtype=jnp.float32)
    return lambda vector: diagonal * jnp.asarray(vector, dtype=jnp.float32)


def test_lanczos_top_eigenvalues_of_mlp_hessian():
    params, batches = _init_params(), _batches()
    dense, _ = _dense_hessian(params, batches)
    expected = np.linalg.eigvalsh(dense)[::-1]
    operator = hessian.make_hvp_operator(loss_fn, params, batches, trainable=TRAINABLE)

    result = hessian.lanczos(operator.matvec, operator.size, num_iterations=60, k=5, seed=0)

    np.testing.assert_allclose(result.eigenvalues, expected[:5], rtol=1e-4)
    assert result.smallest_eigenvalue == pytest.approx(expected[-1], abs=1e-3 * expected[0])
    assert np.all(result.converged)
    for value, vector in zip(expected[:5], np.asarray(result.eigenvectors, np.float64)):
        assert np.linalg.norm(dense @ vector - value * vector) < 1e-3 * expected[0]


def test_lanczos_random_symmetric_matrix():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(500, 500))
    matrix = (matrix + matrix.T) / 2.0
    expected = np.linalg.eigvalsh(matrix)[::-1]
    device_matrix = jnp.asarray(matrix, dtype=jnp.float32)

    result = hessian.lanczos(
        lambda vector: device_matrix @ vector, 500, num_iterations=120, k=3, seed=1
    )

    np.testing.assert_allclose(result.eigenvalues, expected[:3], rtol=1e-4)
    assert result.smallest_eigenvalue == pytest.approx(expected[-1], rel=1e-4)
    assert result.orthogonality_loss < 1e-5


def test_lanczos_diagonal_operator_with_cluster():
    # A cluster of three eigenvalues 1e-3 apart: individual vectors are ill-conditioned, so
    # the test compares the spanned subspace.
    cluster = [10.0, 9.999, 9.998]
    eigenvalues = np.concatenate([cluster, [6.0, 5.0], np.linspace(0.0, 3.0, 295)])

    result = hessian.lanczos(
        _diagonal_matvec(eigenvalues), eigenvalues.size, num_iterations=120, k=5, seed=2
    )

    np.testing.assert_allclose(result.eigenvalues, [*cluster, 6.0, 5.0], rtol=1e-4)
    vectors = np.asarray(result.eigenvectors, dtype=np.float64)
    angles = scipy.linalg.subspace_angles(vectors[:3].T, np.eye(eigenvalues.size)[:, :3])
    assert np.max(np.sin(angles)) < 1e-2


def test_lanczos_without_reorthogonalization_creates_ghosts():
    # Negative control: the isolated top eigenvalue converges early, then the basis loses
    # orthogonality and copies ("ghosts") of it fill the next Ritz values.
    eigenvalues = np.concatenate([[10.0, 7.0], np.linspace(0.0, 1.0, 298)])
    matvec = _diagonal_matvec(eigenvalues)

    plain = hessian.lanczos(
        matvec, eigenvalues.size, num_iterations=100, k=3, seed=3, reorthogonalize=False
    )
    full = hessian.lanczos(matvec, eigenvalues.size, num_iterations=100, k=3, seed=3)

    np.testing.assert_allclose(full.eigenvalues, [10.0, 7.0, 1.0], rtol=1e-4)
    assert full.orthogonality_loss < 1e-5
    assert plain.eigenvalues[0] == pytest.approx(10.0, rel=1e-4)
    assert plain.eigenvalues[1] == pytest.approx(10.0, rel=1e-4)
    assert plain.orthogonality_loss > 0.5


def test_lanczos_host_basis_matches_device_basis():
    eigenvalues = np.concatenate([[4.0, 3.5, 3.0], np.linspace(0.0, 2.0, 197)])
    matvec = _diagonal_matvec(eigenvalues)

    device = hessian.lanczos(matvec, eigenvalues.size, num_iterations=50, k=3, seed=4)
    host = hessian.lanczos(
        matvec, eigenvalues.size, num_iterations=50, k=3, seed=4, basis_on_host=True,
        host_chunk_size=64,
    )

    assert isinstance(host.eigenvectors, np.ndarray)
    np.testing.assert_allclose(host.eigenvalues, device.eigenvalues, rtol=1e-5)
    np.testing.assert_allclose(host.alphas, device.alphas, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.abs(np.asarray(host.eigenvectors)), np.abs(np.asarray(device.eigenvectors)), atol=1e-4
    )
    assert host.orthogonality_loss < 1e-5


def test_lanczos_stops_at_invariant_subspace():
    # Three distinct nonzero eigenvalues plus 0: the Krylov space has dimension 4.
    eigenvalues = np.zeros(50)
    eigenvalues[[3, 17, 40]] = [5.0, 2.0, -1.0]

    result = hessian.lanczos(
        _diagonal_matvec(eigenvalues), 50, num_iterations=20, k=2, seed=5, tol_break=1e-5
    )

    assert result.num_iterations == 4
    assert result.num_matvecs == 4 + 2
    np.testing.assert_allclose(result.eigenvalues, [5.0, 2.0], rtol=1e-5)
    assert result.smallest_eigenvalue == pytest.approx(-1.0, rel=1e-5)


def test_lanczos_diagnostics_are_consistent():
    eigenvalues = np.concatenate([[8.0, 6.0, 5.0], np.linspace(0.0, 4.0, 197)])

    result = hessian.lanczos(
        _diagonal_matvec(eigenvalues), eigenvalues.size, num_iterations=60, k=3, seed=6
    )

    assert result.num_matvecs == 60 + 3
    assert len(result.ritz_history) == 60
    assert [len(values) for values in result.ritz_history[:3]] == [1, 2, 3]
    np.testing.assert_allclose(result.ritz_history[-1], result.ritz_values)
    assert result.alphas.shape == result.betas.shape == (60,)
    assert np.all(result.converged)
    # For converged pairs the cheap estimate β_m|s_m,i| tracks the explicit residual.
    np.testing.assert_allclose(result.residual_estimates, result.residuals, rtol=0.5, atol=1e-5)
    np.testing.assert_allclose(result.gaps, [2.0, 1.0, 1.0], rtol=1e-4)
    np.testing.assert_allclose(result.angle_bounds, result.residuals / result.gaps)


def test_lanczos_rejects_invalid_sizes():
    matvec = _diagonal_matvec(np.ones(10))

    with pytest.raises(ValueError, match="k must be in"):
        hessian.lanczos(matvec, 10, num_iterations=3, k=4, seed=0)
    with pytest.raises(ValueError, match="exceeds the operator size"):
        hessian.lanczos(matvec, 10, num_iterations=11, k=2, seed=0)
