"""Merging gain on quadratics: Σ w_k L(θ_k) − L(θ̄) = ½ Σ_k w_k (θ_k − θ̄)ᵀ H (θ_k − θ̄).

The merge runs through `weighted_average` in float32; losses and the gap are evaluated in float64.
With H ⪰ 0 the gap is non-negative, so the merged loss never exceeds the weighted mean loss.
"""

import numpy as np
import pytest

from merit_jax.core import merge

DIMENSION = 24


def _loss(theta, hessian, optimum, offset):
    delta = theta - optimum
    return 0.5 * delta @ hessian @ delta + offset


def _wishart(rng, rank):
    factor = rng.normal(size=(DIMENSION, rank))
    return factor @ factor.T / rank


def _merge_flat(thetas, weights):
    """Merge flat float32 vectors through the tree API, split into two leaves."""
    trees = [{"a": theta[:10], "b": {"c": theta[10:].reshape(7, 2)}} for theta in thetas]
    merged = merge.weighted_average(trees, weights)
    flat = np.concatenate([np.asarray(merged["a"]), np.asarray(merged["b"]["c"]).ravel()])
    return flat.astype(np.float64)


def _weighted_mean_loss(thetas, weights, hessian, optimum, offset):
    return sum(
        w * _loss(theta.astype(np.float64), hessian, optimum, offset)
        for w, theta in zip(weights, thetas)
    )


def _gap_terms(thetas, weights, hessian, optimum, offset):
    """Return (Σ w_k L(θ_k) − L(θ̄), ½ Σ_k w_k (θ_k − θ̄)ᵀ H (θ_k − θ̄)), θ̄ from the JAX merge."""
    merged = _merge_flat(thetas, weights)
    thetas64 = [theta.astype(np.float64) for theta in thetas]
    mean_loss = _weighted_mean_loss(thetas64, weights, hessian, optimum, offset)
    gap = mean_loss - _loss(merged, hessian, optimum, offset)
    spread = 0.5 * sum(
        w * (theta - merged) @ hessian @ (theta - merged) for w, theta in zip(weights, thetas64)
    )
    return gap, spread


def _branches(rng, num_branches, optimum, directions=None):
    if directions is None:
        displacements = rng.normal(size=(num_branches, DIMENSION))
    else:
        displacements = rng.normal(size=(num_branches, 1)) * directions
    return [(optimum + d).astype(np.float32) for d in displacements]


@pytest.mark.parametrize("num_branches", [2, 3, 8])
@pytest.mark.parametrize("rank", [DIMENSION, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_merge_gain_identity_on_psd_quadratic(num_branches, rank, seed):
    rng = np.random.default_rng(100 * seed + 10 * num_branches + rank)
    hessian = _wishart(rng, rank)
    optimum = rng.normal(size=DIMENSION)
    weights = rng.dirichlet(np.ones(num_branches))
    thetas = _branches(rng, num_branches, optimum)

    gap, spread = _gap_terms(thetas, weights, hessian, optimum, offset=1.5)

    assert gap >= 0.0
    assert gap == pytest.approx(spread, rel=1e-6)


def test_merge_gain_zero_when_spread_lies_in_kernel():
    rng = np.random.default_rng(5)
    hessian = _wishart(rng, 5)
    kernel = np.linalg.eigh(hessian)[1][:, 0]  # eigenvalue 0 because the rank is 5 < 24
    optimum = rng.normal(size=DIMENSION)
    weights = rng.dirichlet(np.ones(4))
    thetas = _branches(rng, 4, optimum, directions=kernel)

    gap, spread = _gap_terms(thetas, weights, hessian, optimum, offset=0.0)

    assert abs(gap) < 1e-5
    assert abs(spread) < 1e-10


def test_indefinite_hessian_breaks_inequality_but_not_identity():
    # Negative control: along a negative-curvature direction the merge raises the loss.
    rng = np.random.default_rng(9)
    basis, _ = np.linalg.qr(rng.normal(size=(DIMENSION, DIMENSION)))
    eigenvalues = np.concatenate([[-2.0], rng.uniform(0.5, 3.0, size=DIMENSION - 1)])
    hessian = basis @ np.diag(eigenvalues) @ basis.T
    optimum = rng.normal(size=DIMENSION)
    weights = rng.dirichlet(np.ones(3))
    thetas = _branches(rng, 3, optimum, directions=basis[:, 0])

    gap, spread = _gap_terms(thetas, weights, hessian, optimum, offset=0.0)
    merged_loss = _loss(_merge_flat(thetas, weights), hessian, optimum, 0.0)
    mean_loss = _weighted_mean_loss(thetas, weights, hessian, optimum, 0.0)

    assert merged_loss > mean_loss
    assert gap < 0.0
    assert gap == pytest.approx(spread, rel=1e-6)
