"""End-to-end runs of every analysis script on a copy of the quick demo workdir, with small budgets."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.demo_runs import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(quick_workdir, tmp_path_factory) -> Path:
    """A writable copy of the quick demo workdir, shared by the tests of this module."""
    copy = tmp_path_factory.mktemp("analysis") / "workdir"
    shutil.copytree(quick_workdir, copy)
    return copy


def run_analysis(name: str, workdir: Path, *flags: str) -> Path:
    command = [sys.executable, "-m", f"analysis.{name}", f"--workdir={workdir}", *flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"analysis.{name} failed:\n{result.stderr[-4000:]}"
    return workdir / "figures" / name


def read(directory: Path, filename: str) -> dict:
    return json.loads((directory / filename).read_text())


def assert_figures(directory: Path, *stems: str) -> None:
    for stem in stems:
        for suffix in (".png", ".pdf"):
            path = directory / f"{stem}{suffix}"
            assert path.exists(), path
            assert path.stat().st_size > 1000, path


def test_tsne_outputs_and_replot(workdir):
    directory = run_analysis("tsne", workdir, "--perplexities=5,15,100", "--seeds=2", "--max_iter=250")
    results = read(directory, "tsne.json")
    assert results["settings"]["perplexities"] == [5.0, 15.0]
    assert results["input"]["max_distance_error"] < 1e-8
    for run in results["runs"]:
        assert np.isfinite(run["kl_divergence"])
        assert run["kl_divergence"] >= 0
        assert all(0.0 <= value <= 1.0 for value in run["trustworthiness"].values())
        assert np.asarray(run["embedding"]).shape == (len(results["tasks"]), 2)
    assert results["provenance"]["versions"]["jax"]
    assert_figures(directory, "tsne", "tsne_grid")

    modified = (directory / "tsne.json").stat().st_mtime_ns
    run_analysis("tsne", workdir, "--replot")
    assert (directory / "tsne.json").stat().st_mtime_ns == modified


def test_pca_groups_merged_point_is_weighted_sum(workdir):
    directory = run_analysis("pca_groups", workdir)
    facts = read(directory, "pca_groups.json")
    assert facts["checks"]["split_reproduced"]
    assert facts["checks"]["max_score_difference_vs_recomputed_pca"] < 1e-8

    result = read(directory, "trajectories.json")
    points = result["points"]
    finals = {p["run"]: np.asarray(p["coordinates"]) for p in points if p["kind"] == "final"}
    merged = next(np.asarray(p["coordinates"]) for p in points if p["kind"] == "merged")
    identity = result["merged_identity"]
    combined = sum(w * finals[run] for run, w in zip(identity["branches"], identity["weights"]))
    np.testing.assert_allclose(merged, combined, atol=1e-4 * result["scale_factor"])
    assert all(0.0 <= p["captured_fraction"] <= 1.0 + 1e-9 for p in points)
    assert any(p["kind"] == "snapshot" for p in points)
    assert max(abs(c) for p in points for c in p["scaled"]) == pytest.approx(1.0)
    assert_figures(directory, "pca_groups", "trajectories")


def test_lmc_barriers_and_endpoints(workdir):
    directory = run_analysis("lmc", workdir, "--split_model=merit-1d", "--examples_per_task=2", "--num_alphas=5",
                             "--refine_steps=2", "--bootstrap=50", "--dirichlet=4")
    results = read(directory, "lmc.json")
    assert len(results["paths"]) == 1 + 2
    for path in results["paths"]:
        assert path["linear_barrier"] >= 0.0
        assert path["dip"] <= 0.0
        assert len(path["alphas"]) == 5 + 2
        assert path["endpoint_check"]["max_abs_difference"] < 1e-5

    _check_endpoint_against_batch_loss(workdir, results)
    simplex = read(directory, "simplex.json")
    assert simplex["at_merge_weights"]["merged_loss"] == pytest.approx(simplex["stored_merged_loss"], abs=1e-4)
    assert len(simplex["dirichlet"]) == 4
    assert (directory / "lmc_summary.csv").read_text().count("\n") == 1 + 3
    assert_figures(directory, "lmc_curves")


def _check_endpoint_against_batch_loss(workdir, results):
    """Check that L(α = 0) of the first path equals the branch's loss computed batch-wise, without analysis code."""
    from merit_jax import data as data_lib
    from merit_jax.evaluation.metrics import heldout_loss
    from merit_jax.pipeline.context import Context

    ctx = Context.from_workdir(workdir)
    path = results["paths"][0]
    params = ctx.load_params(workdir / "runs" / path["a"] / "params")
    examples = [item for name in ctx.task_names for item in ctx.encoded(name, "heldout")[:2]]
    batches = data_lib.make_eval_batches(examples, batch_size=64, bucket_lengths=tuple(ctx.config.data.bucket_lengths))
    assert heldout_loss(ctx.jitted_loss, params, batches).loss == pytest.approx(path["loss_a"], rel=1e-5)


def test_hessian_alignment_report(workdir):
    directory = run_analysis("hessian_alignment", workdir, "--k=3", "--lanczos_iterations=9", "--examples_per_task=4",
                             "--null_draws=40", "--uniform_draws=200", "--bootstrap=2", "--gain_test", "--gain_splits=40")
    results = read(directory, "alignment.json")
    lanczos = read(directory, "lanczos.json")
    assert lanczos["eigenvalues"][0] > 0
    assert len(lanczos["residuals"]) == 3 and all(r >= 0 for r in lanczos["residuals"])
    assert len(lanczos["converged"]) == 3
    assert results["hvp_mode"] in ("forward_over_reverse", "reverse_over_reverse", "central_difference")
    for variant in ("raw", "centered"):
        observed = results["observed"][variant]
        assert 0.0 <= observed["max_abs_cos"] <= 1.0
        assert observed["mean_top1_abs_cos"] <= observed["max_abs_cos"]
        assert 0.0 <= observed["leading_angle_deg"] <= 90.0
        uniform = results["comparisons"][variant]["uniform_random_frame"]["mean_top1_abs_cos"]
        assert uniform["null_mean"] < observed["mean_top1_abs_cos"]
    assert len(results["selected_tasks"]) == 4
    assert results["stride_fidelity"]["pearson"] > 0.9
    assert results["gain"]["splits"]["merit-1d"]["observed"] > 0
    assert_figures(directory, "alignment_tiers", "cos_heatmap", "principal_angles", "gain_percentile", "ritz_history")


def test_hessian_alignment_parameter_subset(workdir, tmp_path):
    copy = tmp_path / "workdir"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("figures"))
    directory = run_analysis("hessian_alignment", copy, "--hessian_include=layers/1/", "--lanczos_basis_on_host",
                             "--k=2", "--lanczos_iterations=6", "--examples_per_task=2", "--null_draws=10",
                             "--uniform_draws=20", "--bootstrap=1")
    results = read(directory, "alignment.json")

    from merit_jax.core import tree as tree_lib
    from merit_jax.pipeline.context import Context

    ctx = Context.from_workdir(copy)
    theta0 = ctx.theta0()
    subset, _ = tree_lib.partition(theta0, lambda path: ctx.trainable(path) and "layers/1/" in path)
    trainable, _ = tree_lib.partition(theta0, ctx.trainable)
    assert results["parameters"] == tree_lib.tree_size(subset)
    assert results["parameters"] < tree_lib.tree_size(trainable)
    assert results["settings"]["hessian_include"] == ["layers/1/"]
    assert results["settings"]["lanczos_basis_on_host"] is True


def test_calibration_nested_curve_reaches_one(workdir):
    directory = run_analysis("calibration", workdir, "--draws=3", "--fit_bootstrap=5", "--split_draws=2")
    results = read(directory, "calibration.json")
    reference = results["settings"]["reference_size"]
    for task in results["per_task"].values():
        nested = task["curves"]["nested"]
        assert nested["n"][-1] == reference
        np.testing.assert_allclose(nested["cosines"][-1], 1.0, atol=1e-9)
        assert task["B_independent"] > 0
        assert task["store_check_cosine"] == pytest.approx(1.0, abs=1e-5)
    independent = results["summary"]["independent"]["mean"]
    assert all(0.0 < value < 1.0 for value in independent)
    assert set(results["split_stability"]) == {"1", "2", "3"}
    assert (directory / "calibration.npz").exists()
    assert_figures(directory, "calibration_curve", "calibration_B_hist", "split_stability")


def test_diagnostics_identity_and_perturbation(workdir):
    directory = run_analysis("diagnostics", workdir, "--sigmas=0,0.1", "--draws=2", "--examples_per_task=2",
                             "--train_examples_per_task=2", "--perturb_models=joint-1ep,merit-2d")
    displacement = read(directory, "diagnostics.json")
    for identity in displacement["parallel_axis"].values():
        assert identity["float64_weighted_sum"]["relative_residual"] < 1e-12
        assert identity["stored_merged_checkpoint"]["relative_residual"] < 1e-5
    norms = {row["model"]: row["norm"] for row in displacement["rows"]}
    assert norms["joint-2ep"] > 0
    assert norms["merit-2d"] > 0

    perturbed = read(directory, "perturbation.json")
    for result in perturbed["models"].values():
        assert result["mean_delta"][0] == 0.0
        assert np.isfinite(result["auc"])
    assert (directory / "displacement.csv").exists()
    assert_figures(directory, "displacement", "perturbation")


def test_lr_sweep_rows_and_resume(workdir):
    flags = ["--etas=0.3", "--train_examples_per_task=2", "--eval_examples_per_task=2", "--exact_match_examples_per_task=1"]
    directory = run_analysis("lr_sweep", workdir, *flags)
    results = read(directory, "lr_sweep.json")
    assert len(results["rows"]) == 5
    assert {row["method"] for row in results["rows"]} == {"joint-1ep", "joint-2ep", "merit-1d", "merit-2d", "merit-3d"}
    for row in results["rows"]:
        assert np.isfinite(row["average_loss"]) or row["diverged"]
    assert "loss_sensitivity" in results["analysis"]["merit-2d"]
    assert (directory / "lr_sweep.csv").read_text().count("\n") == 1 + 5
    assert_figures(directory, "lr_sweep")

    resumed = subprocess.run([sys.executable, "-m", "analysis.lr_sweep", f"--workdir={workdir}", *flags],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0
    assert "final parameters exist, loading" in resumed.stderr
