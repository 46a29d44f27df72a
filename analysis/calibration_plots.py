"""Figures of `analysis.calibration`, drawn only from calibration.json."""

import numpy as np

from analysis import plotting


def plot_curves(outputs, results: dict) -> None:
    summary, settings = results["summary"], results["settings"]
    tasks = results["per_task"]
    figure, axes = plotting.plt.subplots(1, 2, figsize=(14, 5))
    axis = axes[0]
    for task in tasks.values():
        curve = task["curves"]["independent"]
        axis.plot(curve["n"], np.mean(curve["cosines"], axis=1), color="grey", alpha=0.25, linewidth=0.7)
    for design, colour in (("independent", "tab:blue"), ("nested", "tab:orange")):
        n, mean, sd = summary[design]["n"], np.asarray(summary[design]["mean"]), np.asarray(summary[design]["sd"])
        axis.errorbar(n, mean, yerr=sd, fmt="o-", color=colour, capsize=3, label=f"{design} reference: mean ± sd over tasks")
    n = summary["independent"]["n"]
    axis.plot(n, summary["per_task_B_model_mean"], "--", color="tab:blue", label="model with each task's fitted B")
    single = summary["single_B_fit_to_mean_curve"]
    reference = np.mean([t["reference_n_eff"] for t in tasks.values()])
    axis.plot(n, 1 / np.sqrt((1 + single / np.asarray(n, float)) * (1 + single / reference)), ":", color="black",
              label=f"one B for all tasks (B = {single:.3g})")
    axis.set_xscale("log")
    axis.set_xlabel("calibration examples n (log scale)")
    axis.set_ylabel("cosine to the N-example reference gradient")
    axis.set_title(f"Calibration curve ({len(tasks)} tasks, N = {settings['reference_size']}, {settings['draws']} draws per n)")
    axis.legend(fontsize=7)

    axis = axes[1]
    fits = np.array([t["B_independent"] for t in tasks.values()])
    order = np.argsort(fits)
    low = [t["B_independent_ci95"][0] if t["B_independent_ci95"] else np.nan for t in tasks.values()]
    high = [t["B_independent_ci95"][1] if t["B_independent_ci95"] else np.nan for t in tasks.values()]
    # A percentile bootstrap interval need not contain the point estimate (small or skewed
    # resamples), so the interval is drawn as its own segment rather than as error bars.
    positions = np.arange(len(fits))
    axis.vlines(positions, np.asarray(low)[order], np.asarray(high)[order], color="tab:gray", linewidth=1)
    axis.plot(positions, fits[order], "o", markersize=3, color="tab:blue")
    axis.set_yscale("log")
    axis.set_xticks(np.arange(len(fits)), [list(tasks)[i] for i in order], rotation=90, fontsize=5)
    axis.set_ylabel("noise scale B (effective examples), 95% bootstrap CI")
    axis.set_title("Per-task noise scale B (independent design), sorted")
    plotting.caption(figure, (
        f"Strided per-example gradients at θ0 (stride {settings['stride']}), token-weighted means, n = effective n of each subset. "
        f"Nested subsets come from the reference, so their curve reaches 1 at n = N by construction. Median n_0.9 (cosine 0.9 to the "
        f"true mean) = {summary['n_090_median']:.3g} examples."), y=-0.12)
    outputs.save_figure(figure, "calibration_curve")
    plotting.close(figure)


def plot_noise_scales(outputs, results: dict) -> None:
    tasks = results["per_task"].values()
    figure, axis = plotting.plt.subplots(figsize=(7, 4.5))
    values = {
        "independent fit": [t["B_independent"] for t in tasks],
        "nested fit": [t["B_nested"] for t in tasks],
        "split halves": [t["B_split_half"] for t in tasks],
        "moment estimate": [t["B_moment"] for t in tasks],
    }
    finite = np.concatenate([np.asarray([v for v in vs if v is not None and np.isfinite(v) and v > 0]) for vs in values.values()])
    bins = np.linspace(np.log10(finite.min()) - 0.1, np.log10(finite.max()) + 0.1, 25)
    for label, vs in values.items():
        vs = np.asarray([v for v in vs if v is not None and np.isfinite(v) and v > 0])
        axis.hist(np.log10(vs), bins=bins, histtype="step", linewidth=1.5, label=f"{label} ({vs.size} tasks)")
    axis.set_xlabel("log10 noise scale B (effective examples)")
    axis.set_ylabel("tasks")
    axis.set_title(f"Noise scale B across {len(values['independent fit'])} tasks")
    axis.legend(fontsize=7)
    outputs.save_figure(figure, "calibration_B_hist")
    plotting.close(figure)


def plot_split_stability(outputs, results: dict) -> None:
    stability = results["split_stability"]
    figure, axes = plotting.plt.subplots(1, len(stability), figsize=(5 * len(stability), 4), squeeze=False)
    for axis, (dims, result) in zip(axes[0], stability.items()):
        n = [entry["n"] for entry in result["per_n"]]
        for key, label, style in (("reference_adjusted_rand_index", "vs reference split", "o-"),
                                  ("pipeline_adjusted_rand_index", "vs pipeline split", "s--")):
            values = [np.asarray(entry[key]) for entry in result["per_n"]]
            axis.errorbar(n, [v.mean() for v in values], yerr=[v.std() for v in values], fmt=style, capsize=3, label=label)
        axis.set_xscale("log")
        axis.set_ylim(-0.1, 1.05)
        axis.set_xlabel("calibration examples n (log scale)")
        axis.set_ylabel("adjusted Rand index (mean ± sd over draws)")
        axis.set_title(f"{2 ** int(dims)} groups (r = {dims})")
        axis.legend(fontsize=7)
    settings = results["settings"]
    plotting.caption(figure, (
        f"{len(results['tasks'])} tasks; PCA split recomputed from n-example gradients ({settings['split_draws']} draws per n) and compared "
        f"with the split from the N = {settings['reference_size']} reference and with the pipeline's split. Cosines: "
        f"{settings['split_cosines']}."), y=-0.05)
    outputs.save_figure(figure, "split_stability")
    plotting.close(figure)


def plot_all(outputs, results: dict) -> None:
    plot_curves(outputs, results)
    plot_noise_scales(outputs, results)
    plot_split_stability(outputs, results)
