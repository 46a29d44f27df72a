"""Properties of the weighted-median split, the merge and the PAC-Bayes term.

The split must balance each cut to within the largest dataset weight and depend only on the
order of the scores; the merge θ̄ = Σ_k w_k θ_k must be an affine average computed to the storage
dtype's rounding; KL(N(θ, σ²I) ‖ N(θ(0), σ²I)) = ‖θ − θ(0)‖²/(2σ²).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from merit_jax.core import merge
from merit_jax.core import quadratic
from merit_jax.core import split as split_lib


def _skewed_problem(seed, num_datasets=41):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_datasets, 3)), rng.lognormal(2.0, 1.2, size=num_datasets)


def _cut_imbalances(split, weights):
    """Yield (|W_low − W_high|, max weight) at every cut of a recursive split."""

    def members(prefix):
        return [t for group, label in zip(split.groups, split.labels)
                if label.startswith(prefix) for t in group]

    depth = len(split.labels[0])
    for level in range(depth):
        for prefix in {label[:level] for label in split.labels}:
            low, high = members(prefix + "0"), members(prefix + "1")
            yield abs(weights[low].sum() - weights[high].sum()), weights[low + high].max()


@pytest.mark.parametrize("seed", range(5))
def test_weighted_median_split_balance_bound(seed):
    scores, weights = _skewed_problem(seed)

    split = split_lib.weighted_median_split(scores, weights, r=3)

    for imbalance, largest in _cut_imbalances(split, weights):
        assert imbalance <= largest


def test_split_invariant_to_monotone_maps():
    scores, weights = _skewed_problem(10)
    reference = split_lib.weighted_median_split(scores, weights, r=3)

    transformed = scores.copy()
    transformed[:, 0] = np.exp(2.0 * scores[:, 0]) + 5.0
    transformed[:, 2] = scores[:, 2] ** 3
    flipped = scores.copy()
    flipped[:, 0] *= -1.0

    by_transform = split_lib.weighted_median_split(transformed, weights, r=3)
    by_flip = split_lib.weighted_median_split(flipped, weights, r=1)
    first_level = split_lib.weighted_median_split(scores, weights, r=1)

    assert by_transform.groups == reference.groups
    assert by_transform.labels == reference.labels
    # Negating the axis relabels the two sides.
    assert by_flip.groups == first_level.groups[::-1]


def test_weighted_median_split_ties_are_deterministic():
    scores = np.zeros((8, 1))
    scores[[1, 6], 0] = 1.0
    weights = np.ones(8)

    first = split_lib.weighted_median_split(scores, weights, r=1)
    second = split_lib.weighted_median_split(scores.copy(), weights.copy(), r=1)

    assert first.groups == second.groups
    # Equal scores are ordered by dataset id, so the low side takes the lowest tied ids.
    assert first.groups == [[0, 2, 3, 4], [1, 5, 6, 7]]


def test_zero_threshold_imbalance_negative_control():
    rng = np.random.default_rng(11)
    weights = rng.uniform(1.0, 2.0, size=40)
    skewed = rng.lognormal(0.0, 1.0, size=40) - 0.5  # mostly positive

    low, high = skewed <= 0, skewed > 0
    imbalance = abs(weights[low].sum() - weights[high].sum())
    median = split_lib.weighted_median_split(skewed[:, None], weights, r=1)

    assert imbalance > 5.0 * weights.max()
    assert abs(median.group_weights[0] - median.group_weights[1]) <= weights.max()


def test_merge_weights_are_normalized():
    budgets = [120.0, 80.0, 200.0, 100.0]

    weights = merge.merge_weights(budgets)

    assert weights.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(weights, np.array(budgets) / 500.0)
    np.testing.assert_array_equal(merge.merge_weights([7.0] * 4), np.full(4, 0.25))


def _branches(seed, num_branches=3, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    frozen = jnp.asarray(rng.normal(size=(5, 2)), dtype=jnp.bfloat16)
    return [
        {"frozen": frozen, "trainable": {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype=dtype)}}
        for _ in range(num_branches)
    ]


def test_merge_of_identical_copies_returns_input():
    tree = _branches(12, num_branches=1)[0]

    merged = merge.weighted_average([tree] * 3, [0.2, 0.3, 0.5])

    np.testing.assert_array_equal(merged["trainable"]["w"], tree["trainable"]["w"])
    np.testing.assert_array_equal(merged["frozen"], tree["frozen"])


def test_merge_keeps_frozen_leaves_bit_identical():
    branches = _branches(13)

    merged = merge.weighted_average(branches, [0.2, 0.3, 0.5])

    assert merged["frozen"].dtype == jnp.bfloat16
    merged_bits = np.asarray(merged["frozen"]).view(np.uint16)
    np.testing.assert_array_equal(merged_bits, np.asarray(branches[0]["frozen"]).view(np.uint16))


def test_merge_is_translation_equivariant():
    branches = _branches(14)
    weights = [0.2, 0.3, 0.5]
    shift = jnp.asarray(np.random.default_rng(15).normal(size=(4, 3)), dtype=jnp.float32)
    shifted = [{**tree, "trainable": {"w": tree["trainable"]["w"] + shift}} for tree in branches]

    merged = merge.weighted_average(branches, weights)["trainable"]["w"]
    merged_shifted = merge.weighted_average(shifted, weights)["trainable"]["w"]

    np.testing.assert_allclose(merged_shifted, merged + shift, rtol=1e-6, atol=1e-6)


def test_unnormalized_weights_break_translation_negative_control():
    # Raw token budgets are not an average: the merge rejects them, and their sum moves a
    # common shift c to (Σ_k N_k)·c.
    branches = _branches(16)
    budgets = np.array([2.0, 3.0, 5.0])
    with pytest.raises(ValueError, match="sum to"):
        merge.weighted_average(branches, budgets)

    stacked = np.stack([np.asarray(tree["trainable"]["w"], np.float64) for tree in branches])
    raw = np.tensordot(budgets, stacked, axes=1)
    raw_shifted = np.tensordot(budgets, stacked + 1.0, axes=1)
    assert np.max(np.abs(raw_shifted - (raw + 1.0))) > 1.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_merge_matches_float64_sum_to_storage_rounding(dtype):
    branches = _branches(17, num_branches=4, dtype=dtype)
    weights = np.random.default_rng(18).dirichlet(np.ones(4))

    merged = np.asarray(merge.weighted_average(branches, weights)["trainable"]["w"], np.float64)

    stacked = np.stack([np.asarray(tree["trainable"]["w"], np.float64) for tree in branches])
    exact = np.tensordot(weights, stacked, axes=1)
    # One rounding to the storage dtype plus float32 accumulation error over 4 terms.
    rounding = float(jnp.finfo(dtype).eps) * np.abs(exact)
    accumulation = 4 * float(jnp.finfo(jnp.float32).eps) * np.abs(stacked).max()
    assert np.all(np.abs(merged - exact) <= rounding + accumulation)


def _monte_carlo_kl(rng, mean_q, mean_p, sigma_q, sigma_p, num_samples=200_000):
    """Estimate KL(Q ‖ P) = E_Q[log q − log p] with scipy densities; return (mean, SE)."""
    samples = mean_q + sigma_q * rng.normal(size=(num_samples, mean_q.size))
    log_ratio = (scipy.stats.norm.logpdf(samples, mean_q, sigma_q).sum(axis=1)
                 - scipy.stats.norm.logpdf(samples, mean_p, sigma_p).sum(axis=1))
    return log_ratio.mean(), log_ratio.std(ddof=1) / np.sqrt(num_samples)


def test_pac_bayes_kl_matches_monte_carlo():
    rng = np.random.default_rng(19)
    theta, theta0, sigma = rng.normal(size=10), rng.normal(size=10), 0.7

    estimate, standard_error = _monte_carlo_kl(rng, theta, theta0, sigma, sigma)

    closed_form = quadratic.pac_bayes_kl(theta, theta0, sigma)
    assert closed_form == pytest.approx(np.sum((theta - theta0) ** 2) / (2 * sigma**2))
    assert abs(estimate - closed_form) < 4 * standard_error
    general = quadratic.gaussian_kl(theta, theta0, sigma, sigma)
    assert general == pytest.approx(closed_form, rel=1e-12)


def test_gaussian_kl_with_unequal_variances_matches_monte_carlo():
    rng = np.random.default_rng(20)
    mean_q, mean_p = rng.normal(size=10), rng.normal(size=10)

    estimate, standard_error = _monte_carlo_kl(rng, mean_q, mean_p, 0.5, 0.8)

    assert abs(estimate - quadratic.gaussian_kl(mean_q, mean_p, 0.5, 0.8)) < 4 * standard_error


def test_equal_variance_kl_negative_control():
    rng = np.random.default_rng(21)
    theta, theta0 = rng.normal(size=10), rng.normal(size=10)

    estimate, standard_error = _monte_carlo_kl(rng, theta, theta0, 0.5, 0.8)

    assert abs(estimate - quadratic.pac_bayes_kl(theta, theta0, 0.8)) > 20 * standard_error


def test_merged_model_has_smaller_pac_bayes_term():
    rng = np.random.default_rng(22)
    theta0 = rng.normal(size=10)
    branches = theta0 + rng.normal(size=(4, 10))
    weights = rng.dirichlet(np.ones(4))

    merged = quadratic.pac_bayes_kl(quadratic.merged_point(branches, weights), theta0, 0.1)

    mean_branch = sum(w * quadratic.pac_bayes_kl(b, theta0, 0.1) for w, b in zip(weights, branches))
    assert merged < mean_branch - 1.0
