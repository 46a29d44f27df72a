"""Recursive splits along orthogonal curvature axes add up, end to end.

In the factorial design (H = diag(λ), one dataset per sign pattern Δ_t = s_t ⊙ α), the real
pipeline (`dataset_mean_gradient` → `cosine_from_gram` → `pca_embedding` →
`weighted_median_split`) groups datasets by their signs on the axes with the largest λ_j²α_j²,
and one GD step then gains (η²/2) Σ_{j ≤ r} λ_j³α_j².
"""

import numpy as np
import pytest

from merit_jax.core import quadratic_split
from merit_jax.core import toy_merit

AMPLITUDES = np.ones(4)
SORTED_EIGENVALUES = np.array([4.0, 2.5, 1.6, 1.0])  # λ_j²α_j² = 16, 6.25, 2.56, 1
UNSORTED_EIGENVALUES = np.array([1.0, 4.0, 1.6, 2.5])  # λ_j²α_j² = 1, 16, 2.56, 6.25
LEARNING_RATE = 0.05


def _run(eigenvalues, r):
    model = quadratic_split.factorial_design(eigenvalues, AMPLITUDES)
    return toy_merit.run_toy_merit(model, r=r, learning_rate=LEARNING_RATE, num_steps=1)


def _partition(groups):
    return {frozenset(group) for group in groups}


@pytest.mark.parametrize("r", [1, 2, 3])
def test_factorial_split_groups_are_sign_patterns(r):
    run = _run(SORTED_EIGENVALUES, r)

    expected = quadratic_split.factorial_groups(range(r), AMPLITUDES.size)
    assert _partition(run.split.groups) == _partition(expected)
    assert run.gain == pytest.approx(
        quadratic_split.factorial_gain(SORTED_EIGENVALUES, AMPLITUDES, range(r), LEARNING_RATE),
        rel=1e-10,
    )


def test_factorial_gain_increases_with_depth():
    gains = [_run(SORTED_EIGENVALUES, r).gain for r in [1, 2, 3]]

    increments = np.diff([0.0] + gains)
    expected = LEARNING_RATE**2 / 2.0 * SORTED_EIGENVALUES[:3] ** 3 * AMPLITUDES[:3] ** 2
    np.testing.assert_allclose(increments, expected, rtol=1e-9)
    assert np.all(increments > 0)


def test_factorial_unsorted_curvature_negative_control():
    # With λ_j²α_j² out of coordinate order, PCA takes the axes by λ_j²α_j² (1, 3, 2), so the
    # groups and gains no longer follow coordinates 0..r−1.
    pca_axes = [1, 3, 2]

    for r in [1, 2, 3]:
        run = _run(UNSORTED_EIGENVALUES, r)
        coordinate_order = quadratic_split.factorial_gain(
            UNSORTED_EIGENVALUES, AMPLITUDES, range(r), LEARNING_RATE
        )
        by_pca_axes = quadratic_split.factorial_gain(
            UNSORTED_EIGENVALUES, AMPLITUDES, pca_axes[:r], LEARNING_RATE
        )

        assert _partition(run.split.groups) != _partition(
            quadratic_split.factorial_groups(range(r), AMPLITUDES.size)
        )
        assert _partition(run.split.groups) == _partition(
            quadratic_split.factorial_groups(pca_axes[:r], AMPLITUDES.size)
        )
        assert abs(run.gain - coordinate_order) > 1e-3 * by_pca_axes
        assert run.gain == pytest.approx(by_pca_axes, rel=1e-10)
