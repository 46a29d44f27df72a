"""Tests for stride subsampling order and the on-disk gradient store."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from merit_jax.core import gradients


def _indexed_tree():
    """Leaves of sizes 3, 4 and 5 whose values are their global canonical indices 0..11."""
    return {
        "a": np.arange(0, 3, dtype=np.float32),
        "b": np.arange(3, 7, dtype=np.float32).reshape(2, 2),
        "c": np.arange(7, 12, dtype=np.float32),
    }


def test_stride_keeps_global_multiples():
    subsampled = gradients.stride_subsample(_indexed_tree(), 5)

    np.testing.assert_array_equal(subsampled, [0.0, 5.0, 10.0])
    assert subsampled.dtype == np.float32


def test_stride_indices_carry_offset_across_leaves():
    indices = gradients.stride_indices([(3,), (2, 2), (5,)], 5)

    assert [i.tolist() for i in indices] == [[0], [2], [3]]


def test_stride_indices_agree_with_subsample():
    tree = {"x": np.arange(7.0).reshape(7, 1), "y": np.arange(7.0, 20.0).reshape(13)}
    indices = gradients.stride_indices([(7, 1), (13,)], 3)

    gathered = np.concatenate([np.ravel(tree["x"])[indices[0]], tree["y"][indices[1]]])
    np.testing.assert_array_equal(gradients.stride_subsample(tree, 3), gathered)


def test_stride_one_is_full_flatten():
    tree = _indexed_tree()

    full = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(gradients.stride_subsample(tree, 1), full)


def test_stride_follows_numeric_order_of_int_keys():
    tree = {"layers": {10: np.array([2.0, 3.0]), 2: np.array([0.0, 1.0])}}

    np.testing.assert_array_equal(gradients.stride_subsample(tree, 1), [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize("stride", [2, 3, 5, 7, 50])
def test_stride_matches_concatenated_flatten(stride):
    rng = np.random.default_rng(stride)
    tree = {
        "w": jnp.asarray(rng.normal(size=(4, 7)), jnp.bfloat16),
        "v": {"b": rng.normal(size=(9,)).astype(np.float32), "a": rng.normal(size=(3, 2, 2))},
    }
    canonical = [tree["v"]["a"], tree["v"]["b"], np.asarray(tree["w"], np.float32)]
    flat = np.concatenate([np.ravel(leaf) for leaf in canonical]).astype(np.float32)

    subsampled = gradients.stride_subsample(tree, stride)

    assert subsampled.shape == (-(-flat.size // stride),)
    np.testing.assert_array_equal(subsampled, flat[::stride])


@pytest.mark.parametrize("stride", [0, -2, 2.5, True])
def test_stride_rejects_invalid_values(stride):
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        gradients.stride_subsample(_indexed_tree(), stride)


def test_store_round_trip_and_index(tmp_path):
    store = gradients.GradientStore(tmp_path, stride=5)
    first = np.array([3.0, 4.0, 0.0], np.float32)
    second = np.array([1.0, -1.0, 2.0], np.float32)

    store.write("vqa/ocr", first, loss_sum=12.5, token_count=10, num_samples=2)
    store.write(
        "captions", second, loss_sum=np.float32(1.0), token_count=np.int64(4), num_samples=1
    )

    assert store.names() == ["vqa/ocr", "captions"]
    np.testing.assert_array_equal(store.load("vqa/ocr"), first)
    np.testing.assert_array_equal(store.load("captions", mmap=False), second)
    np.testing.assert_allclose(store.norms(), [5.0, np.sqrt(6.0)])

    index = json.loads((tmp_path / "index.json").read_text())
    assert index["length"] == 3
    assert index["stride"] == 5
    assert [entry["name"] for entry in index["datasets"]] == ["vqa/ocr", "captions"]
    assert index["datasets"][0]["token_count"] == 10
    assert index["datasets"][1]["loss_sum"] == 1.0


def test_store_reopens_and_overwrites_in_place(tmp_path):
    gradients.GradientStore(tmp_path).write("a", np.ones(4), num_samples=1)
    gradients.GradientStore(tmp_path).write("b", np.zeros(4), num_samples=1)

    store = gradients.GradientStore(tmp_path)
    store.write("a", np.full(4, 2.0), num_samples=3)

    assert store.names() == ["a", "b"]
    assert store.stats("a")["num_samples"] == 3
    np.testing.assert_array_equal(gradients.GradientStore(tmp_path).load("a"), np.full(4, 2.0))


def test_store_leaves_no_temporary_files(tmp_path):
    store = gradients.GradientStore(tmp_path)
    store.write("a", np.ones(4))
    store.write("a", np.ones(4))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "index.json"]


def test_store_rejects_length_mismatch_naming_file(tmp_path):
    store = gradients.GradientStore(tmp_path)
    store.write("a", np.ones(4))

    with pytest.raises(ValueError, match=r"b\.npy has 5 entries.*4"):
        store.write("b", np.ones(5))


def test_store_load_rejects_file_of_wrong_length(tmp_path):
    store = gradients.GradientStore(tmp_path)
    store.write("a", np.ones(4))
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))

    with pytest.raises(ValueError, match=r"a\.npy contains float32 \(3,\)"):
        store.load("a")


def test_store_rejects_non_finite_vector(tmp_path):
    with pytest.raises(ValueError, match="NaN or infinite"):
        gradients.GradientStore(tmp_path).write("a", np.array([1.0, np.nan]))


def test_store_rejects_other_stride(tmp_path):
    gradients.GradientStore(tmp_path, stride=5).write("a", np.ones(2))

    with pytest.raises(ValueError, match="stride 5, not 3"):
        gradients.GradientStore(tmp_path, stride=3)


def test_store_is_complete(tmp_path):
    store = gradients.GradientStore(tmp_path)
    store.write("a", np.ones(4))
    store.write("b", np.ones(4))

    assert store.is_complete(["a", "b"])
    assert not store.is_complete(["a", "b", "c"])
    (tmp_path / "b.npy").unlink()
    assert not store.is_complete(["a", "b"])
    assert store.missing(["a", "b", "c"]) == ["b", "c"]
