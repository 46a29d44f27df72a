"""Unit tests of the analysis helpers that need no workdir: embeddings, nulls, fits, identities."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy import stats

from analysis import alignment_nulls as nulls
from analysis import embedding, flatness, noise_scale, projection
from analysis import sweep_metrics as metrics
from tests.demo_runs import ROOT


def _unit_rows(rng, count, size):
    rows = rng.standard_normal((count, size)) + 0.5 * rng.standard_normal(size)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_exact_coordinates_reproduce_distances():
    rows = _unit_rows(np.random.default_rng(0), 12, 300)
    cosine = rows @ rows.T
    coordinates, eigenvalues = embedding.exact_coordinates(cosine)
    assert coordinates.shape == (12, 12)
    assert np.all(eigenvalues > 0)
    assert embedding.distance_error(cosine, coordinates) < 1e-10


def test_procrustes_disparity_of_identical_embeddings_is_zero():
    points = np.random.default_rng(1).standard_normal((20, 2))
    assert embedding.procrustes_disparity(points, points) == pytest.approx(0.0, abs=1e-12)
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
    assert embedding.procrustes_disparity(points, 3.0 * points @ rotation + 5.0) == pytest.approx(0.0, abs=1e-12)


def test_procrustes_disparity_of_unrelated_embeddings_is_large():
    rng = np.random.default_rng(2)
    assert embedding.procrustes_disparity(rng.standard_normal((20, 2)), rng.standard_normal((20, 2))) > 0.5


def _monte_carlo_frames(rng, size, k, r, draws):
    """Sample explicit uniformly random r-frames in R^size against the first k basis vectors."""
    samples = {name: np.empty(draws) for name in nulls.SCALAR_METRICS}
    for draw in range(draws):
        frame, _ = np.linalg.qr(rng.standard_normal((size, r)))
        values = nulls.metrics_from_cosines(frame[:k].T)
        for name in nulls.SCALAR_METRICS:
            samples[name][draw] = values[name]
    return samples


def test_uniform_null_matches_monte_carlo():
    size, k, r, draws = 40, 4, 2, 3000
    exact = nulls.uniform_null(np.random.default_rng(3), size, k, r, draws)
    sampled = _monte_carlo_frames(np.random.default_rng(4), size, k, r, draws)
    for name in nulls.SCALAR_METRICS:
        assert stats.ks_2samp(exact[name], sampled[name]).pvalue > 1e-3, name


def test_uniform_null_single_cosine_follows_beta():
    size = 60
    samples = nulls.uniform_null(np.random.default_rng(5), size, 1, 1, 4000)["max_abs_cos"]
    assert stats.kstest(samples**2, stats.beta(0.5, (size - 1) / 2).cdf).pvalue > 1e-3


def test_beta_log_tail_matches_scipy_where_finite():
    for x in (1e-3, 4e-3, 8e-3):
        assert nulls.beta_log_tail(x, 0.5, 40000.0) == pytest.approx(stats.beta.logsf(x, 0.5, 40000.0), rel=1e-4)
    assert np.isfinite(nulls.beta_log_tail(0.1, 0.5, 1e6))


def test_alignment_metrics_match_explicit_vectors():
    rng = np.random.default_rng(6)
    gradients = rng.standard_normal((6, 50))
    eigenvectors, _ = np.linalg.qr(rng.standard_normal((50, 3)))
    coefficients = rng.standard_normal((2, 6))
    result = nulls.alignment_metrics(coefficients, gradients @ gradients.T, gradients @ eigenvectors)

    directions, _ = np.linalg.qr((coefficients @ gradients).T)
    explicit = nulls.metrics_from_cosines(directions.T @ eigenvectors)
    np.testing.assert_allclose(result["principal_cosines"], explicit["principal_cosines"], atol=1e-10)
    assert result["subspace_energy"] == pytest.approx(explicit["subspace_energy"], abs=1e-10)


def test_span_coefficients_are_isotropic_unit_scale_in_span():
    rng = np.random.default_rng(7)
    gradients = rng.standard_normal((5, 40))
    gram = gradients @ gradients.T
    coefficients = np.concatenate([nulls.span_coefficients(rng, gram, 1) for _ in range(4000)])
    vectors = coefficients @ gradients
    np.testing.assert_allclose(np.mean(np.sum(vectors**2, axis=1)), 5.0, rtol=0.05)


def test_split_gain_equals_explicit_quadratic_form():
    rng = np.random.default_rng(8)
    gradients = rng.standard_normal((6, 10))
    hessian = rng.standard_normal((10, 10))
    hessian = hessian @ hessian.T
    tokens = rng.integers(1, 10, size=6).astype(float)
    groups = [[0, 2, 5], [1, 3, 4]]
    gain = nulls.split_gain(gradients @ hessian @ gradients.T, groups, tokens)

    means = [tokens[g] @ gradients[g] / tokens[g].sum() for g in groups]
    weights = np.array([tokens[g].sum() for g in groups]) / tokens.sum()
    average = weights @ np.stack(means)
    expected = sum(w * (m - average) @ hessian @ (m - average) for w, m in zip(weights, means))
    assert gain == pytest.approx(expected, rel=1e-10)


def test_null_summary_p_value_and_percentile():
    summary = nulls.null_summary(3.0, np.array([1.0, 2.0, 3.0, 4.0]))
    assert summary["p_value"] == pytest.approx(3 / 5)
    assert summary["percentile"] == pytest.approx(50.0)


def _noisy_gradients(rng, noise_scale, count, size=4000):
    mean = rng.standard_normal(size)
    sigma = np.sqrt(noise_scale * np.sum(mean**2) / size)
    return mean + sigma * rng.standard_normal((count, size))


def test_noise_scale_fit_recovers_known_b():
    rng = np.random.default_rng(9)
    true_noise_scale, reference = 20.0, np.arange(100)
    gradients = _noisy_gradients(rng, true_noise_scale, 300)
    gram = gradients @ gradients.T
    sizes, cosines = [], []
    for n in (5, 10, 25, 50, 100, 200):
        for _ in range(20):
            subset = rng.choice(np.arange(100, 300), size=n, replace=False)
            sizes.append(n)
            cosines.append(noise_scale.subset_cosine(gram, subset, reference))
    fitted = noise_scale.fit_noise_scale(noise_scale.independent_cosine, np.array(cosines), np.array(sizes, float), 100.0)
    assert fitted == pytest.approx(true_noise_scale, rel=0.15)


def test_moment_noise_scale_recovers_known_b():
    rng = np.random.default_rng(10)
    gradients = _noisy_gradients(rng, 15.0, 400)
    tokens = rng.integers(5, 30, size=400).astype(float)
    # Rows are per-example gradient sums a_i = n_i x_i.
    sums = gradients * tokens[:, None]
    assert noise_scale.moment_noise_scale(sums @ sums.T, tokens) == pytest.approx(15.0, rel=0.1)


def test_nested_cosine_is_one_at_reference_size():
    assert noise_scale.nested_cosine(37.0, 200, 200) == pytest.approx(1.0)
    assert noise_scale.independent_cosine(37.0, 200, 200) < 1.0


def test_split_agreement_ignores_label_names():
    first = np.array([0, 0, 1, 1, 2, 2])
    agreement = noise_scale.split_agreement(first, np.array([5, 5, 3, 3, 9, 9]))
    assert agreement["adjusted_rand_index"] == pytest.approx(1.0)
    assert agreement["matched_agreement"] == pytest.approx(1.0)
    assert noise_scale.matched_agreement(first, np.array([0, 1, 1, 1, 2, 2])) == pytest.approx(5 / 6)


def test_count_sketch_preserves_inner_products_on_average():
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((2, 5000)) + 1.0
    sketch = noise_scale.count_sketch(rng, 5000, 4096)
    sketched = np.asarray(sketch.T @ vectors.T).T
    exact = vectors[0] @ vectors[1]
    assert sketched[0] @ sketched[1] == pytest.approx(exact, rel=0.05)


def test_parallel_axis_identity_holds():
    rng = np.random.default_rng(12)
    deltas = [{"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)} for _ in range(3)]
    weights = np.array([0.2, 0.5, 0.3])
    identity = flatness.parallel_axis(deltas, weights, flatness.weighted_average(deltas, weights))
    assert identity["relative_residual"] < 1e-14
    assert identity["merged_vs_weighted_sum_norm"] < 1e-14
    assert identity["weighted_branch_sq_norm"] > identity["merged_sq_norm"]


def test_perturbation_noise_is_shared_and_relative():
    tree = {"w": np.full((4, 4), 2.0, np.float32), "b": np.ones(3, np.float32)}
    other = {"w": np.full((4, 4), -2.0, np.float32), "b": np.ones(3, np.float32)}
    key = jax.random.key(0)
    first = flatness.perturb(tree, key, 0.1, True)
    second = flatness.perturb(other, key, 0.1, True)
    np.testing.assert_allclose(first["w"] - tree["w"], second["w"] - other["w"], atol=1e-6)
    np.testing.assert_allclose(flatness.perturb(tree, key, 0.0, True)["w"], tree["w"])
    assert not np.allclose(flatness.perturb(tree, jax.random.key(1), 0.1, True)["w"], first["w"])


def test_trapezoid_auc():
    assert flatness.trapezoid_auc([0.0, 0.1, 0.3], [0.0, 1.0, 1.0]) == pytest.approx(0.25)


def test_projection_equals_materialized_directions():
    rng = np.random.default_rng(13)
    rows = _unit_rows(rng, 8, 200)
    cosine = rows @ rows.T
    eigenvalues, eigenvectors = projection.double_centered_axes(cosine, 2)
    centered = rows - rows.mean(axis=0)
    directions = (centered.T @ eigenvectors / np.sqrt(eigenvalues)).T
    np.testing.assert_allclose(directions @ directions.T, np.eye(2), atol=1e-10)

    displacements = rng.standard_normal((3, 200))
    coordinates = projection.project(displacements @ rows.T, eigenvectors, eigenvalues)
    np.testing.assert_allclose(coordinates, displacements @ directions.T, atol=1e-10)


def test_projection_of_weighted_average_is_weighted_average():
    rng = np.random.default_rng(14)
    rows = _unit_rows(rng, 8, 100)
    eigenvalues, eigenvectors = projection.double_centered_axes(rows @ rows.T, 2)
    branches = rng.standard_normal((4, 100))
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    project = lambda v: projection.project(v @ rows.T, eigenvectors, eigenvalues)
    np.testing.assert_allclose(project((weights @ branches)[None])[0], weights @ project(branches), atol=1e-12)


def test_cut_positions_separate_groups():
    scores = np.array([[-2.0, -1.0], [-1.0, 1.0], [1.0, -2.0], [2.0, 2.0]])
    cuts = projection.cut_positions(scores, ["00", "01", "10", "11"])
    assert cuts[""] == pytest.approx(0.0)
    assert cuts["0"] == pytest.approx(0.0)
    assert cuts["1"] == pytest.approx(0.0)


def test_sensitivity_counts_collapse_as_base():
    assert metrics.score_sensitivity([50.0, 10.0, np.nan], base_score=20.0) == pytest.approx((0 + 30 + 30) / 3)
    assert metrics.loss_sensitivity([1.0, np.inf, 3.0], base_loss=2.0) == pytest.approx((0 + 1 + 1) / 3)


def test_stable_etas_and_divergence():
    assert metrics.stable_etas([1, 2, 3], [50.0, 49.5, 40.0], 1.0, higher_is_better=True) == [1.0, 2.0]
    assert metrics.diverged(float("nan"), 1.0)
    assert metrics.diverged(1.6, 1.0)
    assert not metrics.diverged(1.4, 1.0)


def test_log_log_slope_recovers_quadratic_gain():
    etas = np.array([0.01, 0.02, 0.04, 0.08])
    assert metrics.log_log_slope(etas, 3.0 * etas**2)["slope"] == pytest.approx(2.0)


def test_exact_subset_sums_gram_matches_direct(tmp_path):
    from analysis import subset_sums

    rng = np.random.default_rng(15)
    sums = subset_sums.ExactSums(tmp_path, num_sets=2, num_tasks=3, length=50)
    rows = rng.standard_normal((3, 2, 50)).astype(np.float32)
    for task in range(3):
        sums.add(task, rows[task])
    expected = rows[:, 1].astype(np.float64) @ rows[:, 1].astype(np.float64).T
    np.testing.assert_allclose(sums.gram(1), expected, rtol=1e-12)
    sums.close()
    assert not list(tmp_path.iterdir())


def test_missing_workdir_gives_one_line_error(tmp_path):
    workdir = tmp_path / "absent"
    result = subprocess.run([sys.executable, "-m", "analysis.tsne", f"--workdir={workdir}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {workdir / 'config.json'} not found")
    assert not workdir.exists()
