"""Tests for the barrier of a loss curve along a linear path, and its bootstrap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merit_jax.core import lmc
from merit_jax.core import quadratic

ALPHAS = np.linspace(0.0, 1.0, 21)


def _convex_path(seed=0, dimension=6):
    """Return (loss, θ_a, θ_b) with a PSD quadratic loss and L(θ_a) ≠ L(θ_b)."""
    rng = np.random.default_rng(seed)
    loss = quadratic.QuadraticLoss(
        quadratic.random_psd_hessian(rng, dimension), rng.normal(size=dimension), offset=0.3
    )
    return loss, rng.normal(size=dimension), 2.0 * rng.normal(size=dimension)


def _path_losses(loss, theta_a, theta_b, alphas):
    points = (1.0 - alphas)[:, None] * theta_a + alphas[:, None] * theta_b
    return loss(points)


def _ring_losses(alphas, dimension=3):
    """Return L(θ_α) for L = (‖θ‖² − 1)² with θ_b = −θ_a on the unit sphere."""
    theta_a = np.ones(dimension) / np.sqrt(dimension)
    points = (1.0 - alphas)[:, None] * theta_a - alphas[:, None] * theta_a
    return (np.sum(points**2, axis=1) - 1.0) ** 2


def test_convex_quadratic_curve_lies_below_chord():
    loss, theta_a, theta_b = _convex_path()
    losses = _path_losses(loss, theta_a, theta_b, ALPHAS)
    delta = theta_a - theta_b
    curvature = delta @ loss.hessian @ delta

    expected = lmc.chord(ALPHAS, losses) - 0.5 * ALPHAS * (1.0 - ALPHAS) * curvature

    np.testing.assert_allclose(losses, expected, rtol=1e-12, atol=1e-12 * curvature)
    assert lmc.linear_barrier(ALPHAS, losses) == 0.0
    assert lmc.dip(ALPHAS, losses) == pytest.approx(-curvature / 8.0, rel=1e-10)
    assert lmc.summarize_curve(ALPHAS, losses).dip_alpha == 0.5


def test_ring_loss_barrier_is_one_at_midpoint():
    losses = _ring_losses(ALPHAS)

    summary = lmc.summarize_curve(ALPHAS, losses)

    assert summary.linear_barrier == pytest.approx(1.0, abs=1e-12)
    assert summary.argmax_alpha == 0.5
    assert summary.loss_a == pytest.approx(0.0, abs=1e-15)
    assert summary.loss_b == pytest.approx(0.0, abs=1e-15)


def test_linear_and_midpoint_barriers_agree_for_equal_endpoints():
    rng = np.random.default_rng(1)
    bumpy = rng.normal(size=ALPHAS.size)
    bumpy[-1] = bumpy[0]

    for losses in (_ring_losses(ALPHAS), bumpy):
        assert lmc.linear_barrier(ALPHAS, losses) == pytest.approx(
            lmc.midpoint_barrier(ALPHAS, losses), abs=1e-12
        )


def test_midpoint_barrier_positive_for_unequal_endpoints():
    # Negative control for B_mid: a convex path with L_a ≠ L_b has B_lin = 0 but B_mid > 0.
    loss, theta_a, theta_b = _convex_path(seed=2)
    losses = _path_losses(loss, theta_a, theta_b, ALPHAS)

    assert abs(losses[0] - losses[-1]) > 1e-2
    assert lmc.midpoint_barrier(ALPHAS, losses) >= 0.5 * abs(losses[0] - losses[-1]) - 1e-12
    assert lmc.linear_barrier(ALPHAS, losses) == 0.0


def test_refining_grid_never_lowers_barrier():
    def curve(alphas):
        return np.sin(7.3 * alphas) + 0.4 * np.cos(23.0 * alphas) + alphas

    previous = -np.inf
    for points in [3, 5, 9, 17, 33, 65, 129, 257]:
        # Each grid contains the previous one.
        alphas = np.linspace(0.0, 1.0, points)
        barrier = lmc.linear_barrier(alphas, curve(alphas))
        assert barrier >= previous
        previous = barrier
    assert previous > 0.5


def test_barrier_accepts_unsorted_grid():
    losses = _ring_losses(ALPHAS)
    order = np.random.default_rng(3).permutation(ALPHAS.size)

    assert lmc.linear_barrier(ALPHAS[order], losses[order]) == lmc.linear_barrier(ALPHAS, losses)
    np.testing.assert_allclose(
        lmc.chord(ALPHAS[order], losses[order]), lmc.chord(ALPHAS, losses)[order]
    )


def test_barrier_rejects_grid_without_endpoints_or_with_nan():
    with pytest.raises(ValueError, match="both endpoints"):
        lmc.linear_barrier(ALPHAS[1:], np.zeros(ALPHAS.size - 1))
    losses = np.zeros(ALPHAS.size)
    losses[4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        lmc.linear_barrier(ALPHAS, losses)


def test_interpolate_is_float32_with_exact_endpoints():
    params_a = {"w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3), "b": {"c": jnp.ones(4)}}
    params_b = jax.tree.map(lambda leaf: -2.0 * leaf, params_a)

    for alpha, expected in [(0.0, params_a), (1.0, params_b)]:
        result = lmc.interpolate(params_a, params_b, alpha)
        for leaf, reference in zip(jax.tree.leaves(result), jax.tree.leaves(expected)):
            assert leaf.dtype == jnp.float32
            np.testing.assert_array_equal(leaf, np.asarray(reference, np.float32))

    middle = jax.jit(lmc.interpolate)(params_a, params_b, 0.25)
    np.testing.assert_allclose(middle["b"]["c"], np.full(4, 0.25), rtol=1e-7)


def _noisy_per_example_curves(seed, num_examples=200, bump=0.0):
    """Per-example loss sums (A, N) of convex paths plus noise, and token counts (N,)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 20, size=num_examples).astype(np.float64)
    start, end = rng.uniform(1.0, 2.0, size=(2, num_examples))
    alphas = ALPHAS[:, None]
    mean_loss = (1 - alphas) * start + alphas * end - 0.3 * alphas * (1 - alphas)
    mean_loss = mean_loss + bump * np.sin(np.pi * alphas) ** 2
    noise = 0.05 * rng.normal(size=mean_loss.shape)
    return (mean_loss + noise) * tokens, tokens


def test_bootstrap_matches_explicit_resampling():
    loss_sums, tokens = _noisy_per_example_curves(seed=4)

    result = lmc.bootstrap_barrier(ALPHAS, loss_sums, tokens, num_resamples=50, seed=7)

    draws = np.random.default_rng(7).integers(0, tokens.size, size=(50, tokens.size))
    expected = [
        lmc.linear_barrier(ALPHAS, loss_sums[:, draw].sum(axis=1) / tokens[draw].sum())
        for draw in draws
    ]
    np.testing.assert_allclose(result.samples, expected, rtol=1e-12, atol=1e-15)
    full = lmc.linear_barrier(ALPHAS, loss_sums.sum(axis=1) / tokens.sum())
    assert result.barrier == full
    assert result.standard_error == pytest.approx(np.std(expected, ddof=1))
    assert result.ci_low <= np.median(expected) <= result.ci_high


def test_bootstrap_is_reproducible_for_a_seed():
    loss_sums, tokens = _noisy_per_example_curves(seed=5)

    first = lmc.bootstrap_barrier(ALPHAS, loss_sums, tokens, num_resamples=100, seed=3)
    second = lmc.bootstrap_barrier(ALPHAS, loss_sums, tokens, num_resamples=100, seed=3)
    other = lmc.bootstrap_barrier(ALPHAS, loss_sums, tokens, num_resamples=100, seed=4)

    np.testing.assert_array_equal(first.samples, second.samples)
    assert not np.array_equal(first.samples, other.samples)


def test_zero_barrier_rule_on_flat_and_bumped_paths():
    flat_sums, flat_tokens = _noisy_per_example_curves(seed=6)
    bumped_sums, bumped_tokens = _noisy_per_example_curves(seed=6, bump=0.5)

    flat = lmc.bootstrap_barrier(ALPHAS, flat_sums, flat_tokens, num_resamples=200, seed=0)
    bumped = lmc.bootstrap_barrier(ALPHAS, bumped_sums, bumped_tokens, num_resamples=200, seed=0)

    assert lmc.is_zero_barrier(flat.barrier, flat.standard_error, tol_abs=1e-3)
    assert bumped.barrier > 0.3
    assert not lmc.is_zero_barrier(bumped.barrier, bumped.standard_error, tol_abs=1e-3)


def test_zero_barrier_rule_thresholds():
    assert lmc.is_zero_barrier(0.01, standard_error=0.006, tol_abs=0.001)
    assert not lmc.is_zero_barrier(0.01, standard_error=0.004, tol_abs=0.001)
    assert lmc.is_zero_barrier(0.01, standard_error=0.0, tol_abs=0.01)
