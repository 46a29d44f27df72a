"""Figures of `analysis.hessian_alignment`, drawn only from alignment.json."""

import numpy as np

from analysis import plotting


def _tiers(results: dict) -> list[tuple[str, float, float, str]]:
    """List the (label, value, error, colour) bars of mean top-1 |cos| with the top-k eigenvectors."""
    samples = results["null_samples"]
    n = len(results["selected_tasks"])

    def null(name, label):
        values = np.asarray(samples[name]["mean_top1_abs_cos"])
        return label, float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0, "tab:grey"

    grouping = np.asarray(results["grouping"]["samples"]["mean_top1_abs_cos"])
    tiers = [
        null("uniform_random_frame", "random unit\nvectors (exact)"),
        null("random_frame_in_gradient_span", "random in\nspan{g_t}"),
        null("single_task_gradient", "random task\ngradient"),
        ("random grouping\nḡ_A − ḡ_B", float(grouping.mean()), float(grouping.std(ddof=1)), "tab:grey"),
        null(f"random_{n}_tasks_raw", f"conflict dirs of\n{n} random tasks"),
        ("MERIT-1D\nḡ_A − ḡ_B", results["grouping"]["observed"]["mean_top1_abs_cos"], 0.0, "tab:green"),
    ]
    for variant in ("raw", "centered"):
        ci = results["bootstrap"][variant]["mean_top1_abs_cos"]["sd"] or 0.0
        tiers.append((f"PCA conflict\ndirections ({variant})", results["observed"][variant]["mean_top1_abs_cos"], ci, "tab:blue"))
    return tiers


def plot_tiers(outputs, results: dict) -> None:
    tiers = _tiers(results)
    figure, axis = plotting.plt.subplots(figsize=(12, 4.8))
    positions = np.arange(len(tiers))
    axis.bar(positions, [t[1] for t in tiers], yerr=[t[2] for t in tiers], capsize=4, color=[t[3] for t in tiers])
    for position, (_, value, _, _) in zip(positions, tiers):
        axis.annotate(f"{value:.3g}", (position, value), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    axis.set_xticks(positions, [t[0] for t in tiers], fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel(f"mean over directions of max_j |cos(p, v_j)|, j ≤ {results['settings']['k']}")
    raw = results["comparisons"]["raw"]
    axis.set_title("Alignment of directions with the top Hessian eigenvectors at θ0 (grey: nulls, mean ± sd)")
    plotting.caption(figure, (
        f"{len(results['tasks'])} tasks, {results['settings']['examples_per_task']} calibration examples each; selected tasks "
        f"{', '.join(results['selected_tasks'])}; Hessian on the {results['settings']['hessian_probe']} probe "
        f"({results['hessian_probe_examples']} examples), {results['parameters']} parameters, HVP mode {results['hvp_mode']}. "
        f"Raw PCA directions vs span null: p = {raw['random_frame_in_gradient_span']['mean_top1_abs_cos']['p_value']:.3g}, "
        f"ratio {raw['random_frame_in_gradient_span']['mean_top1_abs_cos']['ratio_to_null_mean']:.2f}; vs single task gradients: "
        f"ratio {raw['single_task_gradient']['mean_top1_abs_cos']['ratio_to_null_mean']:.2f}. Error bars on PCA bars: bootstrap sd over "
        f"examples ({results['settings']['bootstrap']} resamples)."))
    outputs.save_figure(figure, "alignment_tiers")
    plotting.close(figure)


def plot_heatmap(outputs, results: dict) -> None:
    eigenvalues = results["lanczos"]["eigenvalues"]
    figure, axes = plotting.plt.subplots(1, 2, figsize=(13, 3.6))
    for axis, variant in zip(axes, ("raw", "centered")):
        observed = results["observed"][variant]
        cosines = np.asarray(observed["abs_cos"])
        image = axis.imshow(cosines, cmap="viridis", vmin=0, vmax=max(cosines.max(), 1e-12), aspect="auto")
        axis.set_xticks(range(len(eigenvalues)), [f"v{j + 1}\n{value:.3g}" for j, value in enumerate(eigenvalues)], fontsize=7)
        axis.set_yticks(range(cosines.shape[0]), [f"p{i + 1} (pᵀHp/θ₁ {q:.2f})" for i, q in enumerate(observed["rayleigh_over_top_eigenvalue"])],
                        fontsize=7)
        axis.set_xlabel("Hessian eigenvector (Ritz value)")
        axis.set_title(f"|cos(p_i, v_j)|, {variant} conflict directions; max {observed['max_abs_cos']:.3f}")
        axis.grid(False)
        figure.colorbar(image, ax=axis, label="|cos|")
    plotting.caption(figure, f"Directions from the tasks {', '.join(results['selected_tasks'])}; full-coordinate gradients.", y=-0.05)
    outputs.save_figure(figure, "cos_heatmap")
    plotting.close(figure)


def plot_angles(outputs, results: dict) -> None:
    samples = results["null_samples"]
    n = len(results["selected_tasks"])
    figure, axes = plotting.plt.subplots(1, 2, figsize=(12, 4))
    for variant, marker in (("raw", "o-"), ("centered", "s-")):
        angles = np.degrees(np.arccos(np.clip(results["observed"][variant]["principal_cosines"], 0, 1)))
        axes[0].plot(np.arange(1, len(angles) + 1), angles, marker, label=f"PCA conflict directions ({variant})")
    axes[0].set_xlabel("principal angle index")
    axes[0].set_ylabel("principal angle (degrees)")
    axes[0].set_title("Principal angles between span{p_i} and the top-k eigenspace")
    axes[0].legend()
    for name, label in (("random_frame_in_gradient_span", "random in span{g_t}"), (f"random_{n}_tasks_raw", f"{n} random tasks (raw)")):
        axes[1].hist(samples[name]["leading_angle_deg"], bins=40, alpha=0.5, label=label)
    uniform = np.mean(samples["uniform_random_frame"]["leading_angle_deg"])
    axes[1].axvline(uniform, color="grey", linestyle=":", label=f"uniform random (mean {uniform:.2f}°)")
    for variant, style in (("raw", "-"), ("centered", "--")):
        axes[1].axvline(results["observed"][variant]["leading_angle_deg"], color="black", linestyle=style, label=f"observed ({variant})")
    axes[1].set_xlabel("leading principal angle (degrees)")
    axes[1].set_ylabel("null draws")
    axes[1].set_title("Leading angle against the nulls")
    axes[1].legend(fontsize=7)
    plotting.caption(figure, f"k = {results['settings']['k']} eigenvectors, r_p = {results['settings']['conflict_dims']} directions; "
                             f"{results['settings']['null_draws']} draws per sampled null.", y=-0.04)
    outputs.save_figure(figure, "principal_angles")
    plotting.close(figure)


def plot_gain(outputs, results: dict) -> None:
    splits = results["gain"]["splits"]
    figure, axes = plotting.plt.subplots(1, max(len(splits), 1), figsize=(5 * max(len(splits), 1), 3.8), squeeze=False)
    for axis, (model, gain) in zip(axes[0], splits.items()):
        axis.hist(gain["random_gains"], bins=40, color="tab:grey", alpha=0.7, label="random balanced splits")
        axis.axvline(gain["observed"], color="tab:blue", label=f"PCA split ({gain['pca_vs_random']['percentile']:.0f}th pct.)")
        axis.axvline(gain["kmeans"], color="tab:orange", linestyle="--", label=f"K-means ({gain['kmeans_percentile']:.0f}th pct.)")
        axis.set_xlabel("Σ_k w_k (ḡ_k − ḡ_w)ᵀH(ḡ_k − ḡ_w)")
        axis.set_ylabel("splits")
        axis.set_title(f"{model}: {gain['groups']} groups")
        axis.legend(fontsize=7)
    plotting.caption(figure, f"First-order merge gain up to η²/2, from M = GHGᵀ ({len(results['tasks'])} task-gradient HVPs); "
                             f"{results['settings']['gain_splits']} random splits balanced by the same weighted-median rule.", y=-0.04)
    outputs.save_figure(figure, "gain_percentile")
    plotting.close(figure)


def plot_ritz(outputs, results: dict) -> None:
    report = results["lanczos"]
    k = len(report["eigenvalues"])
    figure, axes = plotting.plt.subplots(1, 2, figsize=(12, 4))
    for index in range(k):
        track = [values[index] for values in report["ritz_history"] if len(values) > index]
        axes[0].plot(np.arange(len(report["ritz_history"]) - len(track) + 1, len(report["ritz_history"]) + 1), track, linewidth=1)
    axes[0].set_xlabel("Lanczos iteration")
    axes[0].set_ylabel("Ritz value (largest algebraic)")
    axes[0].set_title(f"Ritz values of the top {k} pairs")
    axes[1].bar(np.arange(1, k + 1), report["residuals"], color=["tab:green" if c else "tab:red" for c in report["converged"]])
    axes[1].set_yscale("log")
    axes[1].set_xlabel("Ritz pair")
    axes[1].set_ylabel("‖Hy − θy‖ (green: converged)")
    axes[1].set_title("Explicit residuals")
    plotting.caption(figure, (f"{report['num_iterations']} iterations, {report['num_matvecs']} HVPs ({report['hvp_mode']}), "
                              f"orthogonality loss {report['orthogonality_loss']:.1e}, smallest Ritz value {report['smallest_eigenvalue']:.3g}."), y=-0.04)
    outputs.save_figure(figure, "ritz_history")
    plotting.close(figure)


def plot_all(outputs, results: dict) -> None:
    plot_tiers(outputs, results)
    plot_heatmap(outputs, results)
    plot_angles(outputs, results)
    if results.get("gain"):
        plot_gain(outputs, results)
    plot_ritz(outputs, results)
