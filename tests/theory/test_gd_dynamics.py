"""Merged GD branches versus joint GD, and the stability threshold of GD.

With a shared H, GD is affine in the optimum, θ_k(S) = θ_k⋆ + (I − ηH)^S(θ(0) − θ_k⋆), so the
token-weighted merge of branches equals joint GD on the mixture; group-specific Hessians break
this at first order. GD on a quadratic diverges iff η > 2/λ_max.
"""

import numpy as np
import pytest

from merit_jax.core import quadratic
from merit_jax.core import quadratic_split

DIMENSION = 6
GROUPS = [[0, 1], [2, 3, 4], [5, 6]]


def _model(seed, token_counts=None):
    rng = np.random.default_rng(seed)
    counts = rng.integers(20, 200, size=7) if token_counts is None else token_counts
    return quadratic.LinearQuadraticModel.from_displacements(
        quadratic.random_psd_hessian(rng, DIMENSION), rng.normal(size=(7, DIMENSION)),
        token_counts=counts,
    ), rng.normal(size=DIMENSION)


def _learning_rate(hessian, fraction=0.3):
    return fraction * quadratic.stability_threshold(hessian)


def test_merge_equals_joint_gd_with_shared_hessian():
    model, offset = _model(0)
    theta0 = model.joint_optimum + offset
    learning_rate = _learning_rate(model.hessian)

    branches = quadratic_split.train_branches(model, GROUPS, learning_rate, 7, theta0)
    merged = quadratic.merged_point(branches, quadratic_split.group_weights(model, GROUPS))
    joint = quadratic.gradient_descent(model.mixture_loss(), theta0, learning_rate, 7)[-1]

    np.testing.assert_allclose(merged, joint, rtol=1e-10, atol=1e-12)


def test_budget_matched_merge_equals_shorter_joint_gd():
    # Equal token counts and group sizes, so w_k = 1/K and each branch takes S/K = 5 steps.
    model, offset = _model(1, token_counts=np.full(7, 10.0))
    model = quadratic.LinearQuadraticModel(model.hessian, model.optima[:6], model.token_counts[:6])
    groups = [[0, 1, 2], [3, 4, 5]]
    theta0 = model.joint_optimum + offset
    learning_rate = _learning_rate(model.hessian)
    mixture = model.mixture_loss()

    branches = quadratic_split.train_branches(model, groups, learning_rate, 5, theta0)
    merged = quadratic.merged_point(branches, quadratic_split.group_weights(model, groups))
    trajectory = quadratic.gradient_descent(mixture, theta0, learning_rate, 10)

    np.testing.assert_allclose(merged, trajectory[5], rtol=1e-10, atol=1e-12)
    assert float(mixture(merged)) > float(mixture(trajectory[10])) + 1e-6
    assert np.linalg.norm(merged - theta0) < np.linalg.norm(trajectory[10] - theta0)


def _group_specific_gap(epsilon, seed=2, num_steps=8):
    """Return ‖θ̄ − θ_joint‖ after num_steps when group k has Hessian H + εE_k."""
    model, offset = _model(seed)
    rng = np.random.default_rng(seed + 100)
    theta0 = model.joint_optimum + offset
    learning_rate = _learning_rate(model.hessian, 0.2)
    weights = quadratic_split.group_weights(model, GROUPS)

    losses = []
    for group in GROUPS:
        shared = model.group_loss(group)
        perturbation = rng.normal(size=(DIMENSION, DIMENSION))
        hessian = shared.hessian + epsilon * (perturbation + perturbation.T) / 2.0
        losses.append(quadratic.QuadraticLoss(hessian, shared.center, shared.offset))

    branches = np.stack([
        quadratic.gradient_descent(loss, theta0, learning_rate, num_steps)[-1] for loss in losses
    ])
    joint_loss = quadratic.mix_quadratics(losses, weights)
    joint = quadratic.gradient_descent(joint_loss, theta0, learning_rate, num_steps)[-1]
    return float(np.linalg.norm(quadratic.merged_point(branches, weights) - joint))


def test_group_specific_hessians_gap_grows_linearly():
    gaps = np.array([_group_specific_gap(epsilon) for epsilon in [1e-4, 2e-4, 4e-4]])

    assert _group_specific_gap(0.0) < 1e-12
    assert gaps[0] > 1e-7
    np.testing.assert_allclose(gaps[1:] / gaps[:-1], 2.0, rtol=1e-2)


def test_mix_quadratics_equals_weighted_sum():
    rng = np.random.default_rng(3)
    losses = []
    for _ in range(3):
        hessian = quadratic.random_indefinite_hessian(rng, DIMENSION)
        center, linear = rng.normal(size=(2, DIMENSION))
        losses.append(quadratic.QuadraticLoss(hessian, center, rng.normal(), linear))
    weights = rng.dirichlet(np.ones(3))
    points = rng.normal(size=(5, DIMENSION))

    mixed = quadratic.mix_quadratics(losses, weights)

    expected = sum(w * loss(points) for w, loss in zip(weights, losses))
    np.testing.assert_allclose(mixed(points), expected, rtol=1e-10)
    expected_gradient = sum(w * loss.gradient(points) for w, loss in zip(weights, losses))
    np.testing.assert_allclose(mixed.gradient(points), expected_gradient, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("factor", [0.5, 0.9, 0.99, 1.01, 1.1, 2.0])
def test_gd_diverges_iff_learning_rate_exceeds_threshold(factor):
    rng = np.random.default_rng(4)
    loss = quadratic.QuadraticLoss(quadratic.random_psd_hessian(rng, DIMENSION, rank=4),
                                   np.zeros(DIMENSION))
    theta0 = rng.normal(size=DIMENSION)
    learning_rate = factor * quadratic.stability_threshold(loss.hessian)

    losses = loss(quadratic.gradient_descent(loss, theta0, learning_rate, 3000))

    assert quadratic.is_divergent(losses, losses[0]) == (factor > 1.0)


def test_joint_and_branch_thresholds_either_can_be_lower():
    # Branch 1 is stiffer than the mixture, branch 2 flatter.
    stiff = quadratic.QuadraticLoss(np.diag([10.0, 0.1]), np.array([1.0, -1.0]))
    flat = quadratic.QuadraticLoss(np.diag([0.1, 0.2]), np.array([-1.0, 2.0]))
    joint = quadratic.mix_quadratics([stiff, flat], [0.5, 0.5])
    thresholds = {name: quadratic.stability_threshold(loss.hessian)
                  for name, loss in [("stiff", stiff), ("flat", flat), ("joint", joint)]}
    assert thresholds["stiff"] < thresholds["joint"] < thresholds["flat"]

    def diverges(loss, learning_rate):
        theta0 = np.array([0.3, 0.4])
        trajectory = quadratic.gradient_descent(loss, theta0, learning_rate, 2000)
        with np.errstate(over="ignore", invalid="ignore"):
            losses = loss(trajectory)
        return quadratic.is_divergent(losses, float(loss(theta0)))

    between_stiff_and_joint = np.sqrt(thresholds["stiff"] * thresholds["joint"])
    assert diverges(stiff, between_stiff_and_joint)
    assert not diverges(joint, between_stiff_and_joint)
    between_joint_and_flat = np.sqrt(thresholds["joint"] * thresholds["flat"])
    assert diverges(joint, between_joint_and_flat)
    assert not diverges(flat, between_joint_and_flat)


def test_stiffest_branch_threshold_never_above_joint():
    # λ_max is convex, so λ_max(Σ_k w_k H_k) ≤ max_k λ_max(H_k) for PSD H_k (our inference).
    rng = np.random.default_rng(5)
    for _ in range(200):
        ranks = rng.integers(1, 5, size=3)
        hessians = [quadratic.random_psd_hessian(rng, 4, rank=int(rank)) for rank in ranks]
        weights = rng.dirichlet(np.ones(3))
        joint = sum(w * h for w, h in zip(weights, hessians))
        stiffest = min(quadratic.stability_threshold(h) for h in hessians)
        assert stiffest <= quadratic.stability_threshold(joint) * (1 + 1e-12)
