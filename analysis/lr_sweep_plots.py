"""Figure of `analysis.lr_sweep`, drawn only from lr_sweep.json."""

import numpy as np

from analysis import plotting


def _series(rows, method, key, etas):
    means, errors = [], []
    for eta in etas:
        values = np.array([np.nan if r.get(key) is None else r[key] for r in rows if r["method"] == method and r["eta"] == eta], float)
        means.append(np.nanmean(values) if np.isfinite(values).any() else np.nan)
        errors.append(np.nanstd(values, ddof=1) if np.isfinite(values).sum() > 1 else 0.0)
    return np.array(means), np.array(errors)


def plot(outputs, results: dict) -> None:
    etas, rows = results["etas"], results["rows"]
    panels = [("average_loss", "average held-out loss (nats/token)")]
    if results["settings"]["exact_match"]:
        panels.insert(0, ("average_exact_match", "average exact match (%)"))
    figure, axes = plotting.plt.subplots(1, len(panels) + 1, figsize=(6 * (len(panels) + 1), 4.6))
    base = results["base"]

    for axis, (key, label) in zip(axes, panels):
        # Diverged losses are orders of magnitude larger: they are drawn as × at a capped height.
        cap = 1.5 * base["average_loss"] if key == "average_loss" else None
        for method in results["methods"]:
            means, errors = _series(rows, method, key, etas)
            diverged = np.array([any(r["diverged"] for r in rows if r["method"] == method and r["eta"] == eta) for eta in etas])
            shown = np.where(diverged & (cap is not None), np.nan, means)
            style = "o--" if method.startswith("joint") else "s-"
            line = axis.errorbar(etas, shown, yerr=errors, fmt=style, capsize=3, label=method)
            marks = [cap if cap is not None or not np.isfinite(mean) else mean for mean in means]
            axis.scatter(np.asarray(etas)[diverged], np.asarray(marks, float)[diverged], marker="x", s=80,
                         color=line[0].get_color(), zorder=5)
        axis.axhline(base[key], color="grey", linestyle=":", label="θ0 (base)")
        axis.set_xscale("log")
        axis.set_title(f"{label.split(' (')[0].capitalize()} against the SGD learning rate")
        axis.set_xlabel("SGD learning rate η (log scale)")
        axis.set_ylabel(label + (" (× diverged, drawn at 1.5 × θ0's)" if cap is not None else ""))
        axis.legend(fontsize=7)

    axis = axes[-1]
    for method in results["methods"]:
        if method.startswith("merit-"):
            gains = np.asarray([np.nan if g is None else g for g in results["analysis"][method]["merge_gain"]], float)
            diverged = np.array([any(r["diverged"] for r in rows if r["method"] == method and r["eta"] == eta) for eta in etas])
            positive = (gains > 0) & ~diverged
            slope = results["analysis"][method]["merge_gain_slope"]["slope"]
            label = f"{method} (slope {slope:.2f})" if slope is not None else method
            axis.plot(np.asarray(etas)[positive], gains[positive], "s-", label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("SGD learning rate η (log scale)")
    axis.set_ylabel("merge gain Σ w_k L(θ_k) − L(θ̄) (positive values)")
    axis.set_title("Merge gain of runs that did not diverge (theory: ∝ η² at small η)")
    axis.legend(fontsize=7)

    settings = results["settings"]
    plotting.caption(figure, (
        f"{len(results['families'])} tasks; {settings['train_examples_per_task']} training examples per task (subsample); scores on "
        f"{settings['eval_examples_per_task']} held-out examples per task (exact match: {settings.get('exact_match_examples_per_task')}); {results['seeds']} seed(s), error bars = sd over seeds. "
        f"{settings['optimizer']}, {settings['schedule']}, clip {settings['clip_norm']}. x = diverged ({settings['divergence']})."), y=-0.04)
    outputs.save_figure(figure, "lr_sweep")
    plotting.close(figure)
