"""Tests for merge weights, the in-memory weighted average and the streaming merge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merit_jax.core import merge
from merit_jax.core import tree as tree_lib


def _branch(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {
        "decoder": {
            "layers": {
                0: {"kernel": rng.normal(size=(4, 3)).astype(dtype)},
                1: {"kernel": rng.normal(size=(4, 3)).astype(dtype)},
            },
            "norm": {"scale": rng.normal(size=(3,)).astype(dtype)},
        },
        # Frozen: identical in every branch.
        "vision": {"patch": np.random.default_rng(99).normal(size=(8, 8)).astype(dtype)},
    }


def _float64_average(trees, weights):
    def average(*leaves):
        return sum(w * np.asarray(leaf, np.float64) for w, leaf in zip(weights, leaves))

    return jax.tree.map(average, *trees)


def _paired_leaves(first, second):
    """Yield (path, leaf of first, leaf of second) over two trees of one structure."""
    pairs = zip(tree_lib.leaves_with_paths(first), tree_lib.leaves_with_paths(second))
    for (path, a), (_, b) in pairs:
        yield path, a, b


def test_merge_weights_token_and_uniform():
    np.testing.assert_allclose(merge.merge_weights([100, 300, 600]), [0.1, 0.3, 0.6])
    uniform = merge.merge_weights([100, 300, 600], mode="uniform")
    np.testing.assert_array_equal(uniform, np.full(3, 1 / 3))
    assert merge.merge_weights([7, 9, 2, 5]).sum() == pytest.approx(1.0, abs=1e-15)


def test_merge_weights_equal_budgets_are_uniform():
    np.testing.assert_allclose(merge.merge_weights([250, 250, 250, 250]), np.full(4, 0.25))


@pytest.mark.parametrize("budgets", [[], [1.0, -1.0], [0.0, 0.0], [1.0, np.nan]])
def test_merge_weights_rejects_invalid_budgets(budgets):
    with pytest.raises(ValueError):
        merge.merge_weights(budgets)


def test_merge_weights_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown merge weight mode 'samples'"):
        merge.merge_weights([1, 2], mode="samples")


def test_weighted_average_matches_manual_sum():
    trees = [_branch(seed) for seed in range(3)]
    weights = merge.merge_weights([1000, 3000, 6000])

    merged = merge.weighted_average(trees, weights)
    expected = _float64_average(trees, weights)

    for path, leaf, reference in _paired_leaves(merged, expected):
        assert leaf.dtype == np.float32, path
        np.testing.assert_allclose(np.asarray(leaf), reference, rtol=1e-6, atol=1e-7, err_msg=path)


def test_weighted_average_rounds_bfloat16_once():
    trees = [_branch(seed, dtype=jnp.bfloat16) for seed in range(3)]
    weights = np.array([0.2, 0.3, 0.5])

    merged = merge.weighted_average(trees, weights)
    expected = _float64_average(trees, weights)

    for path, leaf, reference in _paired_leaves(merged, expected):
        assert leaf.dtype == jnp.bfloat16, path
        # One bfloat16 rounding of the float32 sum: within one unit in the last place.
        ulp = np.abs(reference) * 2.0**-7
        assert np.all(np.abs(np.asarray(leaf, np.float64) - reference) <= ulp + 1e-30), path


def test_weighted_average_of_copies_returns_input():
    theta = _branch(0)
    merged = merge.weighted_average([theta] * 4, merge.merge_weights([3, 1, 4, 1]))

    for path, leaf, original in _paired_leaves(merged, theta):
        np.testing.assert_array_equal(np.asarray(leaf), original, err_msg=path)


def test_weighted_average_frozen_bit_identical():
    trees = [_branch(seed) for seed in range(3)]
    merged = merge.weighted_average(trees, [0.1, 0.7, 0.2])

    frozen = trees[0]["vision"]["patch"]
    np.testing.assert_array_equal(np.asarray(merged["vision"]["patch"]), frozen)
    # Negative control: the float32 weighted sum of the frozen leaf is not bit-identical.
    summed = sum(np.float32(w) * frozen for w in (0.1, 0.7, 0.2))
    assert not np.array_equal(summed, frozen)


def test_weighted_average_commutes_with_shift():
    trees = [_branch(seed) for seed in range(4)]
    weights = merge.merge_weights([5, 2, 8, 1])
    shift = jax.tree.map(lambda leaf: np.full_like(leaf, 0.75), trees[0])
    shifted = [jax.tree.map(np.add, tree, shift) for tree in trees]

    merged = merge.weighted_average(trees, weights)
    merged_shifted = merge.weighted_average(shifted, weights)

    for path, a, b in _paired_leaves(merged_shifted, merged):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b) + 0.75, rtol=1e-6, atol=1e-6, err_msg=path
        )


def test_weighted_average_rejects_unnormalized_weights():
    with pytest.raises(ValueError, match="sum to 3, not 1"):
        merge.weighted_average([_branch(0), _branch(1)], [1.0, 2.0])


def _without(tree, *keys):
    tree = jax.tree.map(lambda leaf: leaf, tree)
    node = tree
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return tree


def _with_norm_scale(tree, scale):
    return {**tree, "decoder": {**tree["decoder"], "norm": {"scale": scale}}}


@pytest.mark.parametrize(
    ("make_branch", "path", "reason"),
    [
        (lambda t: _without(t, "decoder", "layers", 0), "decoder/layers/0/kernel", "missing"),
        (lambda t: {**t, "extra": {"bias": np.zeros(3, np.float32)}}, "extra/bias", "extra"),
        (
            lambda t: _with_norm_scale(t, np.zeros(4, np.float32)),
            "decoder/norm/scale",
            r"shape \(4,\) differs from \(3,\)",
        ),
        (
            lambda t: _with_norm_scale(t, t["decoder"]["norm"]["scale"].astype(np.float16)),
            "decoder/norm/scale",
            "dtype float16 differs from float32",
        ),
    ],
)
def test_weighted_average_mismatch_names_first_leaf(make_branch, path, reason):
    trees = [_branch(0), _branch(1), make_branch(_branch(2))]

    with pytest.raises(merge.MergeMismatchError, match=reason) as error:
        merge.weighted_average(trees, [0.2, 0.3, 0.5])

    assert error.value.path == path
    assert error.value.branch == 2


def test_mismatch_reports_earliest_leaf():
    broken = _branch(1)
    first_layer = broken["decoder"]["layers"][0]
    first_layer["kernel"] = first_layer["kernel"].astype(np.float16)
    broken["vision"]["patch"] = np.zeros((3, 3), np.float32)
    broken["decoder"]["norm"]["scale"] = np.zeros(5, np.float32)

    with pytest.raises(merge.MergeMismatchError) as error:
        merge.weighted_average([_branch(0), broken], [0.5, 0.5])

    assert error.value.path == "decoder/layers/0/kernel"


def test_streaming_merge_equals_in_memory():
    trees = [_branch(seed) for seed in range(3)]
    weights = merge.merge_weights([2, 5, 3])

    streamed = merge.merge_streaming([merge.InMemoryLeafSource(tree) for tree in trees], weights)
    in_memory = dict(tree_lib.leaves_with_paths(merge.weighted_average(trees, weights)))

    assert list(streamed) == list(in_memory)
    for path, leaf in streamed.items():
        assert leaf.dtype == in_memory[path].dtype, path
        np.testing.assert_allclose(
            leaf, np.asarray(in_memory[path]), rtol=1e-6, atol=1e-7, err_msg=path
        )
    np.testing.assert_array_equal(streamed["vision/patch"], trees[0]["vision"]["patch"])


class _CountingSource(merge.InMemoryLeafSource):
    def __init__(self, tree, log):
        super().__init__(tree)
        self.log = log

    def read(self, path):
        self.log.append(path)
        return super().read(path)


def test_streaming_merge_checks_specs_before_reading():
    log = []
    broken = _without(_branch(1), "vision")

    with pytest.raises(merge.MergeMismatchError, match="vision/patch"):
        sources = [_CountingSource(_branch(0), log), _CountingSource(broken, log)]
        merge.merge_streaming(sources, [0.5, 0.5])

    assert log == []


def test_streaming_merge_read_order():
    log = []
    sources = [_CountingSource(_branch(seed), log) for seed in range(2)]

    merge.merge_streaming(sources, [0.5, 0.5])

    paths = list(sources[0].leaf_specs())
    assert log == [path for path in paths for _ in range(2)]


def test_streaming_merge_rejects_wrong_leaf():
    class _LyingSource(merge.InMemoryLeafSource):
        def read(self, path):
            return super().read(path).astype(np.float64)

    sources = [merge.InMemoryLeafSource(_branch(0)), _LyingSource(_branch(1))]
    expected = r"branch 1 .*'decoder/layers/0/kernel'.*read float64"
    with pytest.raises(merge.MergeMismatchError, match=expected):
        merge.merge_streaming(sources, [0.5, 0.5])


def test_integer_leaf_that_differs_raises():
    trees = [{"step": np.array(3)}, {"step": np.array(4)}]

    with pytest.raises(merge.MergeMismatchError, match="non-float leaf"):
        merge.weighted_average(trees, [0.5, 0.5])
    with pytest.raises(merge.MergeMismatchError, match="non-float leaf"):
        merge.merge_streaming([merge.InMemoryLeafSource(tree) for tree in trees], [0.5, 0.5])
