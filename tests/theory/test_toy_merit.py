"""MERIT end to end on the linear–quadratic toy model, against joint GD and random splits.

With a shared H the merge of GD branches is exactly joint GD on the token-weighted mixture, for
any split (linearity), so the split changes the merging gain Σ_k w_k L(θ_k) − L(θ̄_w), not the
merged model. The PCA split should maximize that gain. With budget-matched steps and equal
weights the merge equals joint GD stopped after S/K steps, so its mixture loss is higher and it
stays closer to θ(0).
"""

import numpy as np
import pytest

from merit_jax.core import quadratic
from merit_jax.core import toy_merit

NUM_DATASETS = 8
LEARNING_RATE = 0.05
NUM_STEPS = 12
# Balanced sign pattern along the highest-curvature axis.
PLANTED = np.array([1, -1, 1, 1, -1, -1, 1, -1])


def _planted_model(seed=0, equal_tokens=False):
    rng = np.random.default_rng(seed)
    displacements = 0.25 * rng.normal(size=(NUM_DATASETS, 4))
    displacements[:, 0] += PLANTED
    token_counts = rng.integers(60, 140, NUM_DATASETS)
    if equal_tokens:
        token_counts = np.full(NUM_DATASETS, 100.0)
    return quadratic.LinearQuadraticModel.from_displacements(
        np.diag([4.0, 2.0, 1.0, 0.5]), displacements, token_counts=token_counts
    )


def _theta0(model, seed=1):
    # Away from θ̄⋆, so joint GD moves and the dataset gradients share a mean component.
    return model.joint_optimum + 0.5 * np.random.default_rng(seed).normal(size=4)


def _run(model, method, seed=0, r=1, **kwargs):
    return toy_merit.run_toy_merit(
        model, r=r, learning_rate=LEARNING_RATE, num_steps=NUM_STEPS, method=method, seed=seed,
        theta0=_theta0(model), **kwargs,
    )


def test_toy_merit_pca_split_recovers_planted_groups():
    run = _run(_planted_model(), "pca")

    planted = {frozenset(np.flatnonzero(PLANTED > 0)), frozenset(np.flatnonzero(PLANTED < 0))}
    assert {frozenset(group) for group in run.split.groups} == planted
    np.testing.assert_allclose(np.diagonal(run.cosine), 1.0)


@pytest.mark.parametrize("r", [1, 2])
def test_toy_merit_pca_gain_beats_random_splits(r):
    model = _planted_model()

    pca = _run(model, "pca", r=r)
    random_gains = np.array([_run(model, "random", seed=seed, r=r).gain for seed in range(20)])

    assert pca.gain >= random_gains.max() - 1e-12
    assert pca.gain > 2.0 * random_gains.mean()


def test_toy_merit_merge_equals_joint_gd():
    model = _planted_model()
    joint = toy_merit.run_joint_gd(
        model, learning_rate=LEARNING_RATE, num_steps=NUM_STEPS, theta0=_theta0(model)
    )[-1]

    for method, seed in [("pca", 0), ("random", 0), ("random", 1)]:
        run = _run(model, method, seed=seed)
        np.testing.assert_allclose(run.merged_exact, joint, rtol=1e-10, atol=1e-12)
        # The real merge runs in float32.
        np.testing.assert_allclose(run.merged, joint, rtol=1e-6, atol=1e-6)
        assert run.merged_loss == pytest.approx(float(model.mixture_loss()(joint)), rel=1e-10)


def test_toy_merit_budget_matched_shorter_joint():
    model = _planted_model(equal_tokens=True)
    theta0 = _theta0(model)

    run = _run(model, "pca", r=2, budget_matched=True)
    trajectory = toy_merit.run_joint_gd(
        model, learning_rate=LEARNING_RATE, num_steps=NUM_STEPS, theta0=theta0
    )

    np.testing.assert_array_equal(run.steps, NUM_STEPS // 4)
    np.testing.assert_allclose(run.merged_exact, trajectory[NUM_STEPS // 4], rtol=1e-10)
    mixture = model.mixture_loss()
    assert run.merged_loss > float(mixture(trajectory[-1])) + 1e-3
    assert np.linalg.norm(run.merged_exact - theta0) < np.linalg.norm(trajectory[-1] - theta0)


def test_toy_merit_isotropic_design_negative_control():
    # M ∝ I − 11ᵀ/T: every balanced split gains the same, so PCA cannot beat random splits.
    displacements = np.eye(NUM_DATASETS) - 1.0 / NUM_DATASETS
    model = quadratic.LinearQuadraticModel.from_displacements(
        np.eye(NUM_DATASETS), displacements, token_counts=np.full(NUM_DATASETS, 50.0)
    )
    run_kwargs = dict(r=1, learning_rate=LEARNING_RATE, num_steps=NUM_STEPS)

    pca = toy_merit.run_toy_merit(model, method="pca", **run_kwargs)
    random_gains = [
        toy_merit.run_toy_merit(model, method="random", seed=seed, **run_kwargs).gain
        for seed in range(5)
    ]

    np.testing.assert_allclose(random_gains, pca.gain, rtol=1e-9)
    assert pca.gain > 0


def test_toy_merit_rejects_unknown_split_method():
    with pytest.raises(ValueError, match="unknown split method"):
        _run(_planted_model(), "kmeans")
