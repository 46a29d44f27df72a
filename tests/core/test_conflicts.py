"""Tests for the blockwise Gram matrix, the cosine matrix and the three PCA modes."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from merit_jax.core import conflicts
from merit_jax.core import split as split_lib
from merit_jax.core.gradients import GradientStore

NUM_DATASETS, LENGTH = 9, 1003


def _gradients(seed=0):
    rng = np.random.default_rng(seed)
    # A shared component plus dataset-specific noise and varied norms, like real task gradients.
    shared = rng.normal(size=LENGTH)
    scales = rng.uniform(0.1, 3.0, size=(NUM_DATASETS, 1))
    rows = scales * (0.7 * shared + rng.normal(size=(NUM_DATASETS, LENGTH)))
    return rows.astype(np.float32)


def _reference_cosine(matrix):
    rows = matrix.astype(np.float64)
    size = rows.shape[0]
    cosine = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            norms = np.sqrt(np.sum(rows[i] ** 2) * np.sum(rows[j] ** 2))
            cosine[i, j] = np.sum(rows[i] * rows[j]) / norms
    return cosine


def _sign_fixed(scores):
    """Apply the sign rule independently: the largest-|score| dataset of each axis is positive."""
    scores = scores.copy()
    for axis in range(scores.shape[1]):
        leader = np.argmax(np.abs(scores[:, axis]))
        scores[:, axis] *= np.sign(scores[leader, axis])
    return scores


@pytest.fixture(name="store")
def fixture_store(tmp_path):
    store = GradientStore(tmp_path / "gradients", stride=5)
    for index, row in enumerate(_gradients()):
        store.write(f"task_{index}", row)
    return store


@pytest.mark.parametrize("block_size", [1, 7, 100, LENGTH - 1, LENGTH, 4096])
def test_gram_blockwise_equals_full_product(store, block_size):
    matrix = _gradients().astype(np.float64)

    gram = conflicts.gram_blockwise(store, block_size=block_size)

    assert gram.dtype == np.float64
    np.testing.assert_allclose(gram, matrix @ matrix.T, rtol=1e-12)
    np.testing.assert_array_equal(gram, gram.T)


def test_gram_blockwise_accepts_paths_and_arrays(store):
    from_paths = conflicts.gram_blockwise(store.paths(), block_size=64)
    from_arrays = conflicts.gram_blockwise(list(_gradients()), block_size=64)

    np.testing.assert_array_equal(from_paths, from_arrays)


def test_gram_blockwise_rejects_length_mismatch_naming_file(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(5, np.float32))
    np.save(tmp_path / "b.npy", np.ones(6, np.float32))

    with pytest.raises(ValueError, match=r"b\.npy has shape \(6,\)"):
        conflicts.gram_blockwise([tmp_path / "a.npy", tmp_path / "b.npy"], block_size=2)


def test_cosine_matches_explicit_formula():
    matrix = _gradients()
    gram = matrix.astype(np.float64) @ matrix.T.astype(np.float64)

    cosine = conflicts.cosine_from_gram(gram)

    np.testing.assert_allclose(cosine, _reference_cosine(matrix), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.diagonal(cosine), np.ones(NUM_DATASETS))
    assert np.all(np.abs(cosine) <= 1.0)


def test_cosine_clips_round_off_to_unit_interval():
    gram = np.array([[1.0, 1.0 + 1e-12], [1.0 + 1e-12, 1.0]])

    assert conflicts.cosine_from_gram(gram)[0, 1] == 1.0


def test_cosine_zero_norm_dataset_raises_naming_it():
    matrix = _gradients()
    matrix[4] = 0.0
    gram = matrix.astype(np.float64) @ matrix.T.astype(np.float64)
    names = [f"task_{index}" for index in range(NUM_DATASETS)]

    with pytest.raises(ValueError, match="task_4: gradient norm 0"):
        conflicts.cosine_from_gram(gram, names)


def test_cosine_tiny_and_non_finite_norms_raise():
    gram = np.diag([1.0, 1e-14])
    with pytest.raises(ValueError, match="dataset 1: gradient norm 1e-07"):
        conflicts.cosine_from_gram(gram)

    gram = np.diag([1.0, np.nan])
    with pytest.raises(ValueError, match="dataset 1: gradient squared norm is nan"):
        conflicts.cosine_from_gram(gram)


def _cosine():
    return _reference_cosine(_gradients())


@pytest.mark.parametrize("r", [1, 2, 3])
def test_pca_rows_colcentered_matches_sklearn(r):
    cosine = _cosine()
    reference = PCA(n_components=r, svd_solver="full").fit(cosine)

    result = conflicts.pca_embedding(cosine, r, mode="rows_colcentered")

    np.testing.assert_allclose(result.scores, _sign_fixed(reference.transform(cosine)), atol=1e-10)
    np.testing.assert_allclose(
        result.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-10
    )
    # The axes are the sklearn components with the signs that the score rule chose.
    signs = np.sign(np.sum(result.scores * reference.transform(cosine), axis=0))
    np.testing.assert_allclose(
        result.components, signs[:, None] * reference.components_, atol=1e-10
    )


@pytest.mark.parametrize("r", [1, 2, 3])
def test_pca_gram_eig_matches_svd(r):
    matrix = _gradients().astype(np.float64)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    left, singular, _ = np.linalg.svd(unit, full_matrices=False)

    result = conflicts.pca_embedding(unit @ unit.T, r, mode="gram_eig")

    np.testing.assert_allclose(result.scores, _sign_fixed(left[:, :r] * singular[:r]), atol=1e-10)
    expected_ratio = singular[:r] ** 2 / np.sum(singular**2)
    np.testing.assert_allclose(result.explained_variance_ratio, expected_ratio, rtol=1e-10)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_pca_double_centered_matches_svd(r):
    matrix = _gradients().astype(np.float64)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    centered = unit - unit.mean(axis=0)
    left, singular, _ = np.linalg.svd(centered, full_matrices=False)

    result = conflicts.pca_embedding(unit @ unit.T, r, mode="double_centered")

    np.testing.assert_allclose(result.scores, _sign_fixed(left[:, :r] * singular[:r]), atol=1e-10)
    expected_ratio = singular[:r] ** 2 / np.sum(singular**2)
    np.testing.assert_allclose(result.explained_variance_ratio, expected_ratio, rtol=1e-10)


@pytest.mark.parametrize("mode", conflicts.PCA_MODES)
def test_pca_sign_rule_and_shapes(mode):
    result = conflicts.pca_embedding(_cosine(), 3, mode=mode)

    assert result.scores.shape == (NUM_DATASETS, 3)
    assert result.components.shape == (3, NUM_DATASETS)
    assert result.eigenvalues.shape == (NUM_DATASETS,)
    assert result.mode == mode
    for axis in range(3):
        leader = np.argmax(np.abs(result.scores[:, axis]))
        assert result.scores[leader, axis] > 0, axis
    assert np.all(np.diff(result.explained_variance_ratio) <= 0)


@pytest.mark.parametrize("mode", conflicts.PCA_MODES)
def test_pca_scores_follow_a_permutation_of_datasets(mode):
    # With the sign rule the embedding is unique, so relabeling datasets only permutes its rows.
    cosine = _cosine()
    order = np.random.default_rng(3).permutation(NUM_DATASETS)

    base = conflicts.pca_embedding(cosine, 2, mode=mode)
    permuted = conflicts.pca_embedding(cosine[np.ix_(order, order)], 2, mode=mode)

    np.testing.assert_allclose(permuted.scores, base.scores[order], atol=1e-10)


@pytest.mark.parametrize("r", [0, NUM_DATASETS, 1.5])
def test_pca_rejects_invalid_r(r):
    with pytest.raises(ValueError, match=r"r must be an integer in \[1, T − 1\]"):
        conflicts.pca_embedding(_cosine(), r)


def test_pca_rejects_asymmetric_or_non_square_input():
    cosine = _cosine()
    cosine[0, 1] += 1e-3
    with pytest.raises(ValueError, match="not symmetric"):
        conflicts.pca_embedding(cosine, 2)

    with pytest.raises(ValueError, match="square"):
        conflicts.pca_embedding(np.ones((3, 4)), 1)


def test_pca_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown PCA mode 'kernel'"):
        conflicts.pca_embedding(_cosine(), 2, mode="kernel")


def test_opposed_clusters_land_in_different_groups(tmp_path):
    # End to end from stored gradients: two clusters pulling in opposite directions must be
    # separated by the first PCA axis, which a random split fails to do.
    rng = np.random.default_rng(11)
    direction = rng.normal(size=LENGTH)
    cluster = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    signs = np.where(cluster == 1, 1.0, -1.0)[:, None]
    rows = signs * direction + 0.3 * rng.normal(size=(cluster.size, LENGTH))
    store = GradientStore(tmp_path)
    for index, row in enumerate(rows):
        store.write(f"task_{index}", row)

    gram = conflicts.gram_blockwise(store, block_size=256)
    cosine = conflicts.cosine_from_gram(gram, store.names())
    scores = conflicts.pca_embedding(cosine, 1).scores
    split = split_lib.weighted_median_split(scores, np.ones(cluster.size))

    clusters = {frozenset(np.flatnonzero(cluster == label).tolist()) for label in (0, 1)}
    assert {frozenset(group) for group in split.groups} == clusters
    random_groups = split_lib.random_split(0, np.ones(cluster.size), 1).groups
    assert {frozenset(group) for group in random_groups} != clusters
