"""The loss along a linear path between two points of a quadratic, in closed form.

L((1 − α)θ_a + αθ_b) = (1 − α)L_a + αL_b − ½α(1 − α)ΔᵀHΔ with Δ = θ_a − θ_b, so the
linear-interpolation barrier is 0 and the largest dip, ⅛ΔᵀHΔ, sits at α = ½.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from merit_jax.core import lmc
from merit_jax.core import quadratic

DIMENSION = 8
ALPHAS = np.linspace(0.0, 1.0, 21)


def _endpoints(seed):
    rng = np.random.default_rng(seed)
    loss = quadratic.QuadraticLoss(
        quadratic.random_psd_hessian(rng, DIMENSION), rng.normal(size=DIMENSION), offset=1.0
    )
    return loss, rng.normal(size=DIMENSION), rng.normal(size=DIMENSION) + 1.0


@pytest.mark.parametrize("seed", range(3))
def test_lmc_curve_equals_closed_form(seed):
    loss, theta_a, theta_b = _endpoints(seed)
    delta = theta_a - theta_b
    curvature = delta @ loss.hessian @ delta
    points = (1.0 - ALPHAS)[:, None] * theta_a + ALPHAS[:, None] * theta_b

    losses = loss(points)

    chord = (1.0 - ALPHAS) * loss(theta_a) + ALPHAS * loss(theta_b)
    expected = chord - 0.5 * ALPHAS * (1.0 - ALPHAS) * curvature
    np.testing.assert_allclose(losses, expected, rtol=1e-10)
    assert lmc.linear_barrier(ALPHAS, losses) == 0.0
    summary = lmc.summarize_curve(ALPHAS, losses)
    assert -summary.dip == pytest.approx(curvature / 8.0, rel=1e-10)
    assert summary.dip_alpha == 0.5


def test_lmc_curve_through_float32_interpolation():
    # The same identity with the path built by `lmc.interpolate` on a pytree, in float32.
    loss, theta_a, theta_b = _endpoints(3)
    delta = theta_a - theta_b
    curvature = delta @ loss.hessian @ delta

    points = np.stack([
        np.asarray(lmc.interpolate({"theta": jnp.asarray(theta_a, jnp.float32)},
                                   {"theta": jnp.asarray(theta_b, jnp.float32)}, alpha)["theta"],
                   dtype=np.float64)
        for alpha in ALPHAS
    ])
    losses = loss(points)

    expected = lmc.chord(ALPHAS, losses) - 0.5 * ALPHAS * (1.0 - ALPHAS) * curvature
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert lmc.linear_barrier(ALPHAS, losses) <= 1e-5 * curvature


def test_ring_loss_barrier_negative_control():
    # L = (‖θ‖² − 1)², θ_b = −θ_a on the unit sphere: both ends at 0, the midpoint at 1.
    theta_a = np.random.default_rng(4).normal(size=DIMENSION)
    theta_a /= np.linalg.norm(theta_a)
    points = (1.0 - ALPHAS)[:, None] * theta_a - ALPHAS[:, None] * theta_a

    losses = (np.sum(points**2, axis=1) - 1.0) ** 2

    summary = lmc.summarize_curve(ALPHAS, losses)
    assert summary.linear_barrier == pytest.approx(1.0, abs=1e-12)
    assert summary.argmax_alpha == 0.5


def test_midpoint_barrier_positive_on_convex_quadratic():
    # The midpoint-minus-mean definition reports a barrier on a path with none, when L_a ≠ L_b.
    loss, theta_a, theta_b = _endpoints(5)
    points = (1.0 - ALPHAS)[:, None] * theta_a + ALPHAS[:, None] * theta_b
    losses = loss(points)
    assert abs(losses[0] - losses[-1]) > 0.1

    assert lmc.linear_barrier(ALPHAS, losses) == 0.0
    assert lmc.midpoint_barrier(ALPHAS, losses) > 1e-2
