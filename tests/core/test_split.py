"""Tests for the recursive weighted-median split, the random split and group budgets."""

import itertools

import jax
import numpy as np
import pytest

from merit_jax.core import split as split_lib


def _random_problem(num_datasets=37, r=3, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(num_datasets, r))
    # Skewed, real-valued weights: no two cuts balance exactly equally.
    weights = rng.lognormal(mean=3.0, sigma=1.0, size=num_datasets)
    return scores, weights


def _partition(split):
    return {frozenset(group) for group in split.groups}


def _node_imbalances(split, weights):
    """Yield (label prefix, |W_low − W_high|, max weight in the node) for every cut."""

    def members(prefix):
        return [t for group, label in zip(split.groups, split.labels) if label.startswith(prefix)
                for t in group]

    r = len(split.labels[0])
    for depth in range(r):
        for prefix in map("".join, itertools.product("01", repeat=depth)):
            low, high = members(prefix + "0"), members(prefix + "1")
            yield prefix, abs(weights[low].sum() - weights[high].sum()), weights[low + high].max()


@pytest.mark.parametrize("r", [1, 2, 3])
def test_split_groups_partition_datasets(r):
    scores, weights = _random_problem(r=r)
    split = split_lib.weighted_median_split(scores, weights)

    assert split.num_groups == 2**r
    assert split.labels == ["".join(bits) for bits in itertools.product("01", repeat=r)]
    assert sorted(t for group in split.groups for t in group) == list(range(len(weights)))
    assert all(group for group in split.groups)
    assert all(group == sorted(group) for group in split.groups)
    np.testing.assert_allclose(split.group_weights, [weights[g].sum() for g in split.groups])


@pytest.mark.parametrize("seed", range(5))
def test_split_balance_bound_at_every_node(seed):
    scores, weights = _random_problem(seed=seed)
    split = split_lib.weighted_median_split(scores, weights)

    for prefix, imbalance, largest in _node_imbalances(split, weights):
        assert imbalance <= largest, prefix


def test_split_low_side_has_lower_scores():
    scores, weights = _random_problem(r=1)
    split = split_lib.weighted_median_split(scores, weights)

    low, high = split.groups
    assert scores[low, 0].max() < scores[high, 0].min()


def test_split_uses_global_axis_per_depth():
    scores, weights = _random_problem(r=2)
    split = split_lib.weighted_median_split(scores, weights)

    for prefix in ("0", "1"):
        low = split.groups[split.labels.index(prefix + "0")]
        high = split.groups[split.labels.index(prefix + "1")]
        assert scores[low, 1].max() < scores[high, 1].min()


def test_split_is_deterministic():
    scores, weights = _random_problem()

    first = split_lib.weighted_median_split(scores, weights)
    second = split_lib.weighted_median_split(scores.copy(), weights.copy())

    assert first == second


def test_split_ties_resolved_by_dataset_id():
    split = split_lib.weighted_median_split(np.zeros((8, 2)), np.ones(8))

    assert split.groups == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_split_equal_objective_takes_smallest_cut():
    # Weights 1, 1, 1: cutting after 1 or after 2 datasets both leave imbalance 1.
    split = split_lib.weighted_median_split(np.array([[0.0], [1.0], [2.0]]), np.ones(3))

    assert split.groups == [[0], [1, 2]]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_split_invariant_to_axis_sign_flip(axis):
    scores, weights = _random_problem()
    flipped = scores.copy()
    flipped[:, axis] *= -1.0

    original = split_lib.weighted_median_split(scores, weights)
    mirrored = split_lib.weighted_median_split(flipped, weights)

    assert _partition(mirrored) == _partition(original)


def test_split_invariant_to_increasing_transform():
    scores, weights = _random_problem()
    transformed = np.exp(2.0 * scores) + scores**3 - 7.0

    original = split_lib.weighted_median_split(scores, weights)
    assert split_lib.weighted_median_split(transformed, weights) == original


def test_threshold_at_zero_violates_balance_bound():
    # Negative control: a skewed axis cut at 0 gives unequal sides, which the bound would catch.
    rng = np.random.default_rng(7)
    z = rng.exponential(size=(40, 1))
    z -= z.mean()
    weights = np.ones(40)

    negative = z[:, 0] < 0
    assert abs(weights[negative].sum() - weights[~negative].sum()) > weights.max()

    split = split_lib.weighted_median_split(z, weights)
    assert abs(split.group_weights[0] - split.group_weights[1]) <= weights.max()


def test_split_rejects_too_many_groups():
    with pytest.raises(ValueError, match=r"T = 5 datasets into 2\^r = 8 .*r = 3.*r <= 2"):
        split_lib.weighted_median_split(np.zeros((5, 3)), np.ones(5))


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_split_rejects_invalid_weights(bad):
    weights = np.ones(6)
    weights[2] = bad

    with pytest.raises(ValueError, match="dataset 2 has weight"):
        split_lib.weighted_median_split(np.zeros((6, 1)), weights)


def test_split_keeps_groups_nonempty_with_heavy_dataset():
    # The weighted median would put the heavy dataset alone on one side. That side must still
    # yield two groups, so the cut moves and every group stays non-empty.
    scores = np.repeat(np.arange(4.0)[:, None], 2, axis=1)
    split = split_lib.weighted_median_split(scores, [1.0, 1.0, 1.0, 100.0])

    assert all(len(group) == 1 for group in split.groups)


def test_split_uses_first_r_columns_only():
    scores, weights = _random_problem(r=3)

    assert split_lib.weighted_median_split(scores, weights, r=2) == split_lib.weighted_median_split(
        scores[:, :2], weights
    )


def test_random_split_uses_documented_scores():
    weights = np.random.default_rng(0).uniform(1, 10, size=30)
    draws = jax.random.normal(jax.random.key(11), (30, 2), dtype=np.float32)
    expected = split_lib.weighted_median_split(np.asarray(draws, np.float64), weights)

    assert split_lib.random_split(11, weights, 2) == expected
    assert split_lib.random_split(jax.random.key(11), weights, 2) == expected


def test_random_split_seed_determines_groups():
    weights = np.random.default_rng(0).uniform(1, 10, size=64)

    assert split_lib.random_split(3, weights, 2) == split_lib.random_split(3, weights, 2)
    other_seed = split_lib.random_split(4, weights, 2)
    assert _partition(split_lib.random_split(3, weights, 2)) != _partition(other_seed)


def test_random_split_is_balanced():
    weights = np.random.default_rng(1).lognormal(3.0, 1.0, size=64)
    split = split_lib.random_split(5, weights, 3)

    assert split.num_groups == 8
    for prefix, imbalance, largest in _node_imbalances(split, weights):
        assert imbalance <= largest, prefix


def test_group_budgets_sum_per_group():
    split = split_lib.Split(groups=[[0, 3], [1], [2, 4]], labels=["0", "1", "2"],
                            group_weights=[0.0, 0.0, 0.0])

    budgets = split_lib.group_budgets(split, [1, 2, 3, 4, 5], [10.0, 20.0, 30.0, 40.0, 50.0])

    np.testing.assert_array_equal(budgets.sample_counts, [5, 2, 8])
    np.testing.assert_array_equal(budgets.token_counts, [50.0, 20.0, 80.0])


def test_group_budgets_rejects_wrong_length():
    split = split_lib.weighted_median_split(np.zeros((4, 1)), np.ones(4))

    with pytest.raises(ValueError, match=r"token_counts must have shape \(4,\)"):
        split_lib.group_budgets(split, [1, 1, 1, 1], [1, 1, 1])
