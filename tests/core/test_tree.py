"""Tests for leaf paths, path filters and the trainable/frozen partition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merit_jax.core import tree as tree_lib


def _example_tree():
    return {
        "model": {
            "layers": {
                10: {"kernel": np.full((2, 3), 10.0, np.float32)},
                2: {"kernel": np.full((2, 3), 2.0, np.float32), "bias": np.zeros(3, np.float32)},
            },
            "embed": {"table": np.arange(8, dtype=np.float32).reshape(4, 2)},
        },
        "vision": {"proj": {"kernel": np.ones((3, 3), np.float32)}},
    }


def test_leaves_with_paths_canonical_order():
    paths = [path for path, _ in tree_lib.leaves_with_paths(_example_tree())]

    assert paths == [
        "model/embed/table",
        "model/layers/2/bias",
        "model/layers/2/kernel",
        "model/layers/10/kernel",
        "vision/proj/kernel",
    ]


def test_leaves_with_paths_matches_jax_flatten_order():
    tree = _example_tree()
    leaves = [leaf for _, leaf in tree_lib.leaves_with_paths(tree)]

    for ours, expected in zip(leaves, jax.tree_util.tree_leaves(tree)):
        assert ours is expected


def test_leaves_with_paths_rejects_colliding_paths():
    # A key containing the separator collides with the nested path it spells.
    with pytest.raises(ValueError, match="'layers/3'"):
        tree_lib.leaves_with_paths({"layers/3": np.zeros(1), "layers": {"3": np.zeros(1)}})


def test_path_filter_include_and_exclude():
    keep = tree_lib.path_filter(include=r"^model/", exclude=[r"embed"])

    assert keep("model/layers/2/kernel")
    assert not keep("model/embed/table")
    assert not keep("vision/proj/kernel")


def test_path_filter_default_selects_everything():
    assert tree_lib.path_filter()("anything/at/all")


def test_path_filter_invalid_regex_names_pattern():
    with pytest.raises(ValueError, match=r"invalid exclude regex 'vision\[\('"):
        tree_lib.path_filter(include=".*", exclude=["vision[("])


def test_partition_splits_disjointly_and_prunes_empty_dicts():
    tree = _example_tree()
    selected, rest = tree_lib.partition(tree, tree_lib.path_filter(r"^model/layers/"))

    assert [p for p, _ in tree_lib.leaves_with_paths(selected)] == [
        "model/layers/2/bias",
        "model/layers/2/kernel",
        "model/layers/10/kernel",
    ]
    assert [p for p, _ in tree_lib.leaves_with_paths(rest)] == [
        "model/embed/table",
        "vision/proj/kernel",
    ]
    assert "layers" not in rest["model"]
    assert "vision" not in selected


def test_partition_then_combine_restores_tree():
    tree = _example_tree()
    selected, rest = tree_lib.partition(tree, tree_lib.path_filter(r"kernel$"))
    restored = tree_lib.combine(selected, rest)

    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(tree)
    for (path, leaf), (_, expected) in zip(
        tree_lib.leaves_with_paths(restored), tree_lib.leaves_with_paths(tree)
    ):
        assert leaf is expected, path


def test_partition_selecting_nothing_names_filter_and_examples():
    with pytest.raises(ValueError, match=r"language_model.*model/embed/table"):
        tree_lib.partition(_example_tree(), tree_lib.path_filter(r"^language_model/"))


def test_combine_rejects_overlapping_leaf():
    with pytest.raises(ValueError, match="'model/layers/2'"):
        tree_lib.combine({"model": {"layers": {2: 1.0}}}, {"model": {"layers": {2: 2.0}}})


def test_combine_inside_jit():
    selected, rest = tree_lib.partition(_example_tree(), tree_lib.path_filter(r"layers"))

    @jax.jit
    def total(selected, rest):
        full = tree_lib.combine(selected, rest)
        return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(full))

    expected = sum(float(np.sum(leaf)) for leaf in jax.tree_util.tree_leaves(_example_tree()))
    assert float(total(selected, rest)) == pytest.approx(expected)


def test_tree_size_vdot_and_norm_match_numpy():
    tree = _example_tree()
    leaves = jax.tree_util.tree_leaves(tree)
    flat = np.concatenate([np.ravel(leaf) for leaf in leaves]).astype(np.float64)
    other = jax.tree.map(lambda leaf: leaf * 0.5 + 1.0, tree)
    other_flat = flat * 0.5 + 1.0

    assert tree_lib.tree_size(tree) == flat.size
    assert float(tree_lib.tree_vdot(tree, other)) == pytest.approx(flat @ other_flat, rel=1e-6)
    assert float(tree_lib.tree_l2_norm(tree)) == pytest.approx(np.linalg.norm(flat), rel=1e-6)


def test_tree_vdot_accumulates_bfloat16_in_float32():
    ones = {"w": jnp.ones(4096, jnp.bfloat16)}

    # bfloat16 has 8 significant bits, so a bfloat16 running sum would stall at 256.
    assert float(tree_lib.tree_vdot(ones, ones)) == 4096.0
    assert tree_lib.tree_vdot(ones, ones).dtype == jnp.float32


def test_tree_vdot_rejects_different_structures():
    with pytest.raises(ValueError, match="one structure"):
        tree_lib.tree_vdot({"a": np.ones(2)}, {"b": np.ones(2)})
