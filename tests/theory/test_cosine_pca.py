"""Lemma 1 and Theorem F.4: cosine versus Gram eigenspaces under norm perturbations.

C = D⁻¹KD⁻¹ with D = diag(‖g_t‖). When the norms are ᾱ(1 + δ_t) with |δ_t| ≤ ϵ, the top-r
eigenspaces of K and C are O(ϵ‖K‖/γ) apart for an eigengap γ (MERIT, Choi and Kim, App. F.2).
"""

import numpy as np
import pytest
import scipy.linalg

from merit_jax.core import conflicts

# Sylvester–Hadamard matrix over √4: an orthonormal basis whose rows all have entries ±1/2, so
# C = Q diag(μ) Qᵀ has unit diagonal whenever Σμ = 4.
HADAMARD = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
NORM_DIRECTION = np.array([0.9, -0.4, 1.0, -1.0])  # δ_t = ϵ · NORM_DIRECTION_t
MEAN_NORM = 3.0


def _unit_gradients(gap):
    """Return unit rows G̃ (4, 4) with C = G̃G̃ᵀ of eigenvalues (1.5 + γ/2, 1.5 − γ/2, 0.5, 0.5)."""
    eigenvalues = np.array([1.5 + gap / 2, 1.5 - gap / 2, 0.5, 0.5])
    return HADAMARD.T * np.sqrt(eigenvalues)


def _top_subspace_sine(first, second, r):
    """Return the largest principal-angle sine between the top-r eigenspaces of two matrices."""
    top_first = np.linalg.eigh(first)[1][:, -r:]
    top_second = np.linalg.eigh(second)[1][:, -r:]
    return float(np.max(np.sin(scipy.linalg.subspace_angles(top_first, top_second))))


def _gram_and_cosine(gap, epsilon, r=1):
    unit = _unit_gradients(gap)
    gradients = MEAN_NORM * (1.0 + epsilon * NORM_DIRECTION)[:, None] * unit
    gram = gradients @ gradients.T
    return gram, conflicts.cosine_from_gram(gram), unit @ unit.T


def test_cosine_equals_normalized_gram_lemma1():
    rng = np.random.default_rng(0)
    gradients = rng.uniform(0.1, 5.0, size=(7, 1)) * rng.normal(size=(7, 50))
    gram = gradients @ gradients.T
    norms = np.linalg.norm(gradients, axis=1)

    cosine = conflicts.cosine_from_gram(gram)

    inverse = np.diag(1.0 / norms)
    np.testing.assert_allclose(cosine, inverse @ gram @ inverse, rtol=1e-12, atol=1e-15)
    unit = gradients / norms[:, None]
    np.testing.assert_allclose(cosine, unit @ unit.T, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("r", [1, 2])
def test_principal_angle_zero_without_norm_perturbation(r):
    gram, cosine, exact_cosine = _gram_and_cosine(gap=0.3, epsilon=0.0)

    np.testing.assert_allclose(cosine, exact_cosine, atol=1e-12)
    assert _top_subspace_sine(gram, cosine, r) < 1e-12


@pytest.mark.parametrize("r", [1, 2])
def test_principal_angle_grows_linearly_in_epsilon(r):
    sines = [_top_subspace_sine(*_gram_and_cosine(0.3, epsilon)[:2], r)
             for epsilon in [1e-4, 2e-4, 4e-4]]

    assert sines[0] > 1e-6
    np.testing.assert_allclose(np.array(sines[1:]) / np.array(sines[:-1]), 2.0, rtol=2e-2)


def test_principal_angle_grows_as_inverse_gap():
    epsilon = 1e-5
    gaps = np.array([0.4, 0.2, 0.1, 0.05])
    sines, bounds = [], []
    for gap in gaps:
        gram, cosine, _ = _gram_and_cosine(gap, epsilon)
        sines.append(_top_subspace_sine(gram, cosine, 1))
        # Davis–Kahan sin Θ with the Yu, Wang and Samworth (2015) constant.
        bounds.append(2.0 * np.linalg.norm(gram / MEAN_NORM**2 - cosine, 2) / gap)

    sines = np.array(sines)
    assert np.all(sines <= np.array(bounds))
    assert np.all(np.diff(sines) > 0)
    products = sines * gaps
    np.testing.assert_allclose(products, products[-1], rtol=2e-2)


def test_large_norm_dominates_gram_negative_control():
    unit = _unit_gradients(0.3)
    scaled = unit.copy()
    scaled[0] *= 10.0

    cosine = conflicts.cosine_from_gram(unit @ unit.T)
    scaled_gram = scaled @ scaled.T
    scaled_cosine = conflicts.cosine_from_gram(scaled_gram)

    np.testing.assert_allclose(scaled_cosine, cosine, atol=1e-12)
    top_gram = np.linalg.eigh(scaled_gram)[1][:, -1]
    top_cosine = np.linalg.eigh(cosine)[1][:, -1]
    assert abs(top_gram[0]) > 0.9
    assert abs(top_cosine[0]) < 0.6
    assert _top_subspace_sine(scaled_gram, cosine, 1) > 0.5
