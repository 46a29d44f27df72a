"""Exact checks of the merging gain and its bounds on toy quadratics.

G_var = Σ_i w_i L(θ_i) − L(θ̄_w) = ½ Σ_ℓ λ_ℓ Var_w(u_ℓᵀδ_i) = ½ Σ_i w_i (δ_i − δ̄_w)ᵀH(δ_i − δ̄_w)
= ¼ Σ_i Σ_j w_i w_j (δ_i − δ_j)ᵀH(δ_i − δ_j) (MERIT, Choi and Kim, Theorem 3.1 and App. F). All in
float64 with a relative tolerance of 1e-10 unless a test sets another.
"""

import numpy as np
import pytest

from merit_jax.core import quadratic
from merit_jax.core import quadratic_split

DIMENSION = 10
RTOL = 1e-10
FORMS = (quadratic.gain_spectral, quadratic.gain_centered, quadratic.gain_pairwise)


def _problem(seed, num_branches, rank=None, hessian=None):
    """Return (loss, thetas (K, d), weights (K,)) with Dirichlet weights and spread-out branches."""
    rng = np.random.default_rng(seed)
    if hessian is None:
        hessian = quadratic.random_psd_hessian(rng, DIMENSION, rank)
    center = rng.normal(size=DIMENSION)
    loss = quadratic.QuadraticLoss(hessian, center, offset=0.7)
    thetas = center + 2.0 * rng.normal(size=(num_branches, DIMENSION))
    return loss, thetas, rng.dirichlet(np.ones(num_branches))


@pytest.mark.parametrize("num_branches", [2, 3, 8])
@pytest.mark.parametrize("rank", [DIMENSION, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_merge_gain_equals_all_forms(num_branches, rank, seed):
    loss, thetas, weights = _problem(seed, num_branches, rank)
    deltas = thetas - loss.center

    gain = quadratic.merge_gain(loss, thetas, weights)

    assert gain > 0.0
    for form in FORMS:
        assert form(loss.hessian, deltas, weights) == pytest.approx(gain, rel=RTOL), form.__name__


@pytest.mark.parametrize("num_branches", [2, 3, 8])
def test_merge_gain_uniform_weights_equals_theorem_f1(num_branches):
    loss, thetas, _ = _problem(2, num_branches)
    uniform = np.full(num_branches, 1.0 / num_branches)

    gain = quadratic.merge_gain(loss, thetas, uniform)

    expected = quadratic.gain_uniform_pairwise(loss.hessian, thetas - loss.center)
    assert expected == pytest.approx(gain, rel=RTOL)


def test_merge_gain_indefinite_hessian_negative_control():
    # Along a negative-curvature direction the merge raises the loss; the identity still holds.
    rng = np.random.default_rng(3)
    hessian = quadratic.random_indefinite_hessian(rng, DIMENSION, negative_eigenvalues=(-2.0,))
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    assert eigenvalues[0] == pytest.approx(-2.0)
    loss = quadratic.QuadraticLoss(hessian, rng.normal(size=DIMENSION))
    thetas = loss.center + rng.normal(size=(3, 1)) * eigenvectors[:, 0]
    weights = rng.dirichlet(np.ones(3))

    gain = quadratic.merge_gain(loss, thetas, weights)

    assert gain < -1e-3
    assert quadratic.gain_centered(hessian, thetas - loss.center, weights) == pytest.approx(
        gain, rel=RTOL
    )


def test_merge_gain_quartic_term_negative_control():
    # A quartic term is outside the quadratic model, so the gain leaves a residual.
    loss, thetas, weights = _problem(4, 3)

    def quartic(theta):
        return loss(theta) + 0.05 * np.sum((theta - loss.center) ** 4)

    residual = quadratic.merge_gain(quartic, thetas, weights) - quadratic.gain_centered(
        loss.hessian, thetas - loss.center, weights
    )
    assert abs(residual) > 1e-3


def _kernel_problem(seed, epsilon):
    """Return branches whose differences lie in ker H (d − 3 dims), plus ε times a range spread."""
    rng = np.random.default_rng(seed)
    basis = quadratic.random_orthogonal(rng, DIMENSION)
    eigenvalues = np.concatenate([[3.0, 2.0, 1.0], np.zeros(DIMENSION - 3)])
    hessian = quadratic.hessian_from_spectrum(eigenvalues, basis)
    loss = quadratic.QuadraticLoss(hessian, rng.normal(size=DIMENSION), offset=0.2)

    common = rng.normal(size=DIMENSION)
    kernel_spread = rng.normal(size=(4, DIMENSION - 3)) @ basis[:, 3:].T
    range_spread = rng.normal(size=(4, 3)) @ basis[:, :3].T
    thetas = loss.center + common + kernel_spread + epsilon * range_spread
    return loss, thetas, rng.dirichlet(np.ones(4))


def test_merge_gain_zero_when_differences_in_kernel():
    loss, thetas, weights = _kernel_problem(5, epsilon=0.0)
    scale = float(weights @ loss(thetas))

    gain = quadratic.merge_gain(loss, thetas, weights)

    assert abs(gain) <= 1e-12 * scale
    for form in FORMS:
        assert abs(form(loss.hessian, thetas - loss.center, weights)) <= 1e-12 * scale


def test_merge_gain_grows_as_epsilon_squared_off_kernel():
    reference_loss, reference_thetas, weights = _kernel_problem(5, epsilon=1.0)
    unit_gain = quadratic.gain_centered(
        reference_loss.hessian, reference_thetas - reference_loss.center, weights
    )

    for epsilon in [1e-1, 1e-2, 1e-3]:
        loss, thetas, weights = _kernel_problem(5, epsilon)
        gain = quadratic.merge_gain(loss, thetas, weights)
        assert gain / epsilon**2 == pytest.approx(unit_gain, rel=1e-6)


def test_kernel_spread_full_rank_negative_control():
    # The same spread under a positive definite H is no longer invisible to the loss.
    loss, thetas, weights = _kernel_problem(5, epsilon=0.0)
    full_rank = quadratic.QuadraticLoss(loss.hessian + 0.5 * np.eye(DIMENSION), loss.center)

    assert quadratic.merge_gain(full_rank, thetas, weights) > 1e-2


def test_merge_gain_invariant_to_linear_term_and_reference():
    loss, thetas, weights = _problem(6, 3)
    rng = np.random.default_rng(7)
    gain = quadratic.merge_gain(loss, thetas, weights)

    linear = rng.normal(size=DIMENSION)
    with_linear = quadratic.QuadraticLoss(loss.hessian, loss.center, 5.0, linear)
    moved = quadratic.QuadraticLoss(loss.hessian, loss.center + rng.normal(size=DIMENSION), -3.0)

    assert quadratic.merge_gain(with_linear, thetas, weights) == pytest.approx(gain, rel=RTOL)
    assert quadratic.merge_gain(moved, thetas, weights) == pytest.approx(gain, rel=RTOL)


def test_merge_gain_cubic_reference_negative_control():
    loss, thetas, weights = _problem(8, 3)
    rng = np.random.default_rng(9)
    direction = rng.normal(size=DIMENSION)
    moved = quadratic.QuadraticLoss(loss.hessian, loss.center + rng.normal(size=DIMENSION))

    gain = quadratic.merge_gain(quadratic.cubic_perturbed(loss, 1.0, direction), thetas, weights)
    moved_gain = quadratic.merge_gain(
        quadratic.cubic_perturbed(moved, 1.0, direction), thetas, weights
    )

    assert abs(gain - moved_gain) > 1e-2


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("uniform", [True, False])
def test_cubic_remainder_within_theorem_f2_bound(seed, uniform):
    loss, thetas, weights = _problem(10 + seed, 3)
    if uniform:
        weights = np.full(3, 1.0 / 3.0)
    direction = np.random.default_rng(seed).normal(size=DIMENSION)
    deltas = thetas - loss.center
    rho = 0.8

    cubic = quadratic.cubic_perturbed(loss, rho, direction)
    measured = quadratic.merge_gain(cubic, thetas, weights)
    deviation = measured - quadratic.gain_centered(loss.hessian, deltas, weights)

    assert abs(deviation) > 1e-6
    assert abs(deviation) <= quadratic.cubic_remainder_bound(deltas, weights, rho) * (1 + 1e-12)


def test_scaled_cubic_violates_theorem_f2_bound_negative_control():
    # K = 2, δ_1 = u, δ_2 = 0, cubic ×10 with ρ kept: 3.75 vs 0.625 in units of ρ/6.
    rng = np.random.default_rng(11)
    hessian = quadratic.random_psd_hessian(rng, DIMENSION)
    loss = quadratic.QuadraticLoss(hessian, np.zeros(DIMENSION))
    unit = quadratic.random_orthogonal(rng, DIMENSION)[:, 0]
    thetas = np.stack([unit, np.zeros(DIMENSION)])
    weights = np.array([0.5, 0.5])
    rho = 0.6

    scaled_cubic = quadratic.cubic_perturbed(loss, 10 * rho, unit)
    measured = quadratic.merge_gain(scaled_cubic, thetas, weights)
    deviation = measured - quadratic.gain_centered(loss.hessian, thetas, weights)
    bound = quadratic.cubic_remainder_bound(thetas, weights, rho)

    assert deviation == pytest.approx(3.75 * rho / 6, rel=RTOL)
    assert bound == pytest.approx(0.625 * rho / 6, rel=RTOL)
    assert deviation > bound + 0.1


@pytest.mark.parametrize("num_branches", [2, 3, 8])
def test_merge_contracts_displacement(num_branches):
    rng = np.random.default_rng(12)
    deltas = rng.normal(size=(num_branches, DIMENSION))

    for weights in (rng.dirichlet(np.ones(num_branches)), np.full(num_branches, 1 / num_branches)):
        terms = quadratic.parallel_axis_terms(deltas, weights)
        assert terms.merged_square < terms.mean_square - 1e-3
        assert terms.merged_square + terms.spread == pytest.approx(terms.mean_square, rel=RTOL)


def test_contraction_is_equality_for_equal_displacements():
    delta = np.random.default_rng(13).normal(size=DIMENSION)

    terms = quadratic.parallel_axis_terms(np.stack([delta] * 3), [0.2, 0.3, 0.5])

    assert terms.merged_square == pytest.approx(terms.mean_square, rel=RTOL)
    assert terms.spread == pytest.approx(0.0, abs=1e-12 * terms.mean_square)


def test_identity_hessian_gain_is_half_euclidean_spread():
    rng = np.random.default_rng(14)
    deltas = rng.normal(size=(4, DIMENSION))
    weights = rng.dirichlet(np.ones(4))
    loss = quadratic.QuadraticLoss(np.eye(DIMENSION), np.zeros(DIMENSION))

    gain = quadratic.merge_gain(loss, deltas, weights)

    spread = quadratic.parallel_axis_terms(deltas, weights).spread
    assert gain == pytest.approx(0.5 * spread, rel=RTOL)


def test_extrapolation_weights_break_contraction_negative_control():
    rng = np.random.default_rng(15)
    deltas = rng.normal(size=(2, DIMENSION))
    difference = np.sum((deltas[0] - deltas[1]) ** 2)

    terms = quadratic.parallel_axis_terms(deltas, [1.5, -0.5])

    # ‖1.5δ_1 − 0.5δ_2‖² − (1.5‖δ_1‖² − 0.5‖δ_2‖²) = 0.75‖δ_1 − δ_2‖² > 0.
    assert terms.merged_square - terms.mean_square == pytest.approx(0.75 * difference, rel=RTOL)
    assert terms.merged_square > terms.mean_square + 1e-2
    assert terms.merged_square + terms.spread == pytest.approx(terms.mean_square, rel=RTOL)


def _two_group_model(seed, theta_offset):
    rng = np.random.default_rng(seed)
    model = quadratic.LinearQuadraticModel.from_displacements(
        quadratic.random_psd_hessian(rng, DIMENSION), rng.normal(size=(6, DIMENSION))
    )
    theta0 = model.joint_optimum + theta_offset * rng.normal(size=DIMENSION)
    return model, theta0


@pytest.mark.parametrize("theta_offset", [0.0, 1.0])
def test_one_step_gain_equals_eq7(theta_offset):
    model, theta0 = _two_group_model(16, theta_offset)
    groups = [[0, 2, 5], [1, 3, 4]]
    learning_rate = 0.05
    first, second = (model.group_loss(group).gradient(theta0) for group in groups)
    difference = first - second

    gain = quadratic_split.measured_gain(model, groups, learning_rate, 1, theta0)

    expected = learning_rate**2 / 8.0 * difference @ model.hessian @ difference
    assert gain == pytest.approx(expected, rel=RTOL)


def test_one_step_gain_equals_k_group_form():
    rng = np.random.default_rng(17)
    model = quadratic.LinearQuadraticModel.from_displacements(
        quadratic.random_psd_hessian(rng, DIMENSION), rng.normal(size=(7, DIMENSION)),
        token_counts=rng.integers(10, 100, size=7),
    )
    groups = [[0, 1], [2, 3, 4], [5, 6]]
    theta0 = model.joint_optimum
    group_gradients = np.stack([model.group_loss(group).gradient(theta0) for group in groups])
    weights = quadratic_split.group_weights(model, groups)

    gain = quadratic_split.measured_gain(model, groups, 0.05, 1)

    expected = quadratic.first_order_gain(model.hessian, group_gradients, weights, 0.05)
    assert gain == pytest.approx(expected, rel=RTOL)


def test_multi_step_gain_departs_from_eq7_negative_control():
    # Eq. 7 is first order: S steps behave like one step of size Sη only while ηλ_max·S ≪ 1.
    model, theta0 = _two_group_model(18, 0.0)
    groups = [[0, 2, 5], [1, 3, 4]]
    largest = np.linalg.eigvalsh(model.hessian)[-1]
    learning_rate = 0.02 / largest
    difference = np.subtract(*(model.group_loss(group).gradient(theta0) for group in groups))

    errors = []
    for steps in [1, 2, 5, 10, 20]:
        gain = quadratic_split.measured_gain(model, groups, learning_rate, steps, theta0)
        first_order = (steps * learning_rate) ** 2 / 8.0 * difference @ model.hessian @ difference
        errors.append(abs(gain - first_order) / first_order)

    assert errors[0] < RTOL
    assert np.all(np.diff(errors) > 0)
    assert errors[-1] > 0.2
