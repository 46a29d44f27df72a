"""Balanced two-group splits of the linear–quadratic model, checked by exact enumeration.

One GD step of size η from θ(0) = θ̄⋆ with balanced signs s gives ḡ_1 − ḡ_2 = (2/T)Σ_t s_t g_t and
G_var(s) = η²/(2T²) sᵀMs with M = GHGᵀ; over uniform balanced s, E[sᵀMs] = T/(T−1) tr M when
M1 = 0 (MERIT, Choi and Kim, App. F.4). Means over splits come from exact enumeration.
"""

import math

import numpy as np
import pytest

from merit_jax.core import quadratic
from merit_jax.core import quadratic_split
from merit_jax.core import toy_merit

RTOL = 1e-10
LEARNING_RATE = 0.1


def _random_model(seed, num_datasets, dimension=5):
    rng = np.random.default_rng(seed)
    return quadratic.LinearQuadraticModel.from_displacements(
        quadratic.random_psd_hessian(rng, dimension), rng.normal(size=(num_datasets, dimension))
    )


@pytest.mark.parametrize("num_datasets", [6, 8, 10, 12])
def test_sign_encoding_and_prop_f10_by_enumeration(num_datasets):
    model = _random_model(num_datasets, num_datasets)
    gradients = model.gradients(model.joint_optimum)
    matrix = quadratic_split.gain_matrix(gradients, model.hessian)
    signs = quadratic_split.balanced_signs(num_datasets)
    half = num_datasets // 2
    assert len({tuple(row) for row in signs}) == len(signs) == math.comb(num_datasets, half)
    np.testing.assert_array_equal(signs.sum(axis=1), 0)

    direct = ((signs > 0) @ gradients - (signs < 0) @ gradients) / half
    np.testing.assert_allclose(
        quadratic_split.group_mean_difference(signs, gradients), direct, rtol=1e-12, atol=1e-14
    )

    predicted = quadratic_split.sign_gain(signs, matrix, LEARNING_RATE)
    measured = [
        quadratic_split.measured_gain(model, quadratic_split.groups_from_signs(s), LEARNING_RATE)
        for s in signs
    ]
    np.testing.assert_allclose(measured, predicted, rtol=RTOL)

    forms = np.einsum("si,ij,sj->s", signs.astype(float), matrix, signs.astype(float))
    expected_mean = num_datasets / (num_datasets - 1) * np.trace(matrix)
    assert forms.mean() == pytest.approx(expected_mean, rel=RTOL)
    assert predicted.mean() == pytest.approx(
        quadratic_split.expected_random_gain(matrix, LEARNING_RATE), rel=RTOL
    )


def test_prop_f10_uncentred_gradients_negative_control():
    # Gradients at θ(0) ≠ θ̄⋆ share a component, so M1 ≠ 0 and the tr M formula is off by
    # 1ᵀM1/(T−1). Balanced splits cancel the shared component, so the true mean is unchanged.
    model = _random_model(21, 8)
    theta0 = model.joint_optimum + np.random.default_rng(22).normal(size=5)
    matrix = quadratic_split.gain_matrix(model.gradients(theta0), model.hessian)
    signs = quadratic_split.balanced_signs(8).astype(float)

    mean_form = np.einsum("si,ij,sj->s", signs, matrix, signs).mean()

    formula = 8 / 7 * np.trace(matrix)
    assert abs(mean_form - formula) > 1e-2 * formula
    assert mean_form == pytest.approx(quadratic_split.mean_balanced_form(matrix), rel=RTOL)


def _four_dataset_partition_gains(model):
    return {
        name: quadratic_split.measured_gain(model, groups, LEARNING_RATE)
        for name, groups in quadratic_split.FOUR_DATASET_PARTITIONS.items()
    }


def _pipeline_partition(model):
    """Return the two groups that the real gradient → cosine → PCA → split pipeline picks."""
    gradients = toy_merit.toy_gradients(model, model.joint_optimum)
    split, _ = toy_merit.choose_split(gradients, model.token_counts, r=1)
    return {frozenset(group) for group in split.groups}


def test_four_dataset_partition_gains():
    shape = dict(lambda_1=3.0, lambda_2=1.0, alpha=1.0, beta=1.5)
    model = quadratic_split.four_dataset_model(**shape)
    expected = quadratic_split.four_dataset_gains(**shape, learning_rate=LEARNING_RATE)

    gains = _four_dataset_partition_gains(model)

    assert gains["P1"] == pytest.approx(expected["P1"], rel=RTOL)
    assert gains["P2"] == pytest.approx(expected["P2"], rel=RTOL)
    assert abs(gains["P3"]) < 1e-15
    # Proposition F.6 under (8): λ_1²α² = 9 > λ_2²β² = 2.25.
    assert gains["P1"] >= gains["P2"] > 0.0
    # Corollary F.7: a uniformly random partition gains the mean of the three, which is also
    # Proposition F.10's η² tr M / (2T(T−1)).
    mean_gain = np.mean([gains["P1"], gains["P2"], gains["P3"]])
    assert mean_gain == pytest.approx(expected["random"], rel=RTOL)
    matrix = quadratic_split.gain_matrix(model.gradients(model.joint_optimum), model.hessian)
    assert mean_gain == pytest.approx(
        quadratic_split.expected_random_gain(matrix, LEARNING_RATE), rel=RTOL
    )
    assert expected["random"] < gains["P1"]


def test_four_dataset_pca_split_picks_coordinate_one():
    model = quadratic_split.four_dataset_model(lambda_1=3.0, lambda_2=1.0, alpha=1.0, beta=1.5)

    partition = _pipeline_partition(model)

    expected = quadratic_split.FOUR_DATASET_PARTITIONS["P1"]
    assert partition == {frozenset(group) for group in expected}


def test_four_dataset_pca_not_optimal_negative_control():
    # Remark F.9 is not an equivalence: λ_1²α² = 4 < λ_2²β² = 6.25, so PCA splits along
    # coordinate 2, yet λ_1³α² = 8 > 6.25 = λ_2³β² makes coordinate 1 the better split.
    model = quadratic_split.four_dataset_model(lambda_1=2.0, lambda_2=1.0, alpha=1.0, beta=2.5)

    partition = _pipeline_partition(model)
    gains = _four_dataset_partition_gains(model)

    expected = quadratic_split.FOUR_DATASET_PARTITIONS["P2"]
    assert partition == {frozenset(group) for group in expected}
    assert gains["P2"] < gains["P1"] - 1e-3


def _centred_matrix(seed, num_datasets=10, dimension=6):
    model = _random_model(seed, num_datasets, dimension)
    return quadratic_split.gain_matrix(model.gradients(model.joint_optimum), model.hessian)


@pytest.mark.parametrize("seed", range(10))
def test_principal_sign_gain_at_least_eq9_bound(seed):
    matrix = _centred_matrix(30 + seed)
    signs, _, _ = quadratic_split.principal_signs(matrix)

    gain = quadratic_split.sign_gain(signs, matrix, LEARNING_RATE)

    assert gain >= quadratic_split.principal_gain_bound(matrix, LEARNING_RATE) * (1 - 1e-12)


def test_eq10_implies_pca_beats_random():
    # Planted models: a balanced sign pattern along the top curvature axis plus noise.
    num_datasets, satisfied = 8, 0
    planted = np.array([1, -1, 1, 1, -1, -1, 1, -1])
    for seed in range(20):
        rng = np.random.default_rng(seed)
        displacements = rng.normal(scale=0.4 + 0.1 * seed, size=(num_datasets, 4))
        displacements[:, 0] += planted
        model = quadratic.LinearQuadraticModel.from_displacements(
            np.diag([2.0, 1.0, 0.7, 0.5]), displacements
        )
        matrix = quadratic_split.gain_matrix(model.gradients(model.joint_optimum), model.hessian)
        signs, top, largest = quadratic_split.principal_signs(matrix)
        random_mean_form = num_datasets / (num_datasets - 1) * np.trace(matrix)
        eq10 = largest * np.sum(np.abs(top)) ** 2 > random_mean_form
        if signs.sum() != 0 or not eq10:
            continue

        satisfied += 1
        all_gains = quadratic_split.sign_gain(
            quadratic_split.balanced_signs(num_datasets), matrix, LEARNING_RATE
        )
        assert quadratic_split.sign_gain(signs, matrix, LEARNING_RATE) > all_gains.mean()
    assert satisfied >= 5


@pytest.mark.parametrize("num_datasets", [6, 8, 10])
def test_rank_one_gain_ratio_is_t_minus_one(num_datasets):
    rng = np.random.default_rng(num_datasets)
    planted = quadratic_split.balanced_signs(num_datasets)[rng.integers(0, 20)]
    top = planted / np.sqrt(num_datasets)
    matrix = 3.0 * np.outer(top, top)
    signs, _, _ = quadratic_split.principal_signs(matrix)

    enumeration = quadratic_split.sign_gain(
        quadratic_split.balanced_signs(num_datasets), matrix, LEARNING_RATE
    )
    ratio = quadratic_split.sign_gain(signs, matrix, LEARNING_RATE) / enumeration.mean()

    assert ratio == pytest.approx(num_datasets - 1, rel=RTOL)


@pytest.mark.parametrize("num_datasets", [6, 8, 10])
def test_isotropic_gain_ratio_is_one_negative_control(num_datasets):
    # Corollary F.12(2): with M = c(I − 11ᵀ/T) every balanced split gains the same, so the
    # principal split cannot beat a random one.
    centering = np.eye(num_datasets) - 1.0 / num_datasets
    matrix = 2.5 * centering
    signs = quadratic_split.balanced_signs(num_datasets).astype(float)

    forms = np.einsum("si,ij,sj->s", signs, matrix, signs)

    np.testing.assert_allclose(forms, 2.5 * num_datasets, rtol=RTOL)
    assert forms.max() / forms.mean() == pytest.approx(1.0, rel=RTOL)


def test_remark_f9_sufficient_condition_in_random_draws():
    rng = np.random.default_rng(40)
    draws = 100_000
    smaller, larger = np.sort(rng.uniform(0.01, 10.0, size=(2, draws)), axis=0)
    alpha, beta = rng.uniform(0.01, 10.0, size=(2, draws))
    distinct = larger > smaller
    lambda_1, lambda_2 = larger[distinct], smaller[distinct]
    alpha, beta = alpha[distinct], beta[distinct]

    gradient_pca_picks_one = lambda_1**2 * alpha**2 > lambda_2**2 * beta**2
    split_one_is_better = lambda_1**3 * alpha**2 > lambda_2**3 * beta**2

    assert gradient_pca_picks_one.sum() > draws // 4
    assert not np.any(gradient_pca_picks_one & ~split_one_is_better)
    # Negative control: the converse fails, as in the four-dataset counterexample.
    assert np.any(split_one_is_better & ~gradient_pca_picks_one)
