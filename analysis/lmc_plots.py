"""Figures of `analysis.lmc`, drawn only from its saved results."""

import math

import numpy as np

from analysis import plotting


def _short(name: str) -> str:
    """Shorten `merit-2d-b01` to `b01`; merged model names stay whole."""
    return name.rsplit("-", 1)[-1] if "-b" in name else name


def plot_curves(outputs, results: dict) -> None:
    paths = results["paths"]
    columns = min(5, len(paths) + 1)
    rows = math.ceil((len(paths) + 1) / columns)
    figure, axes = plotting.plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False)
    for axis, path in zip(axes.flat, paths):
        alphas, losses, refined = np.asarray(path["alphas"]), np.asarray(path["losses"]), np.asarray(path["refined"], bool)
        axis.plot(alphas, losses, "-", color="tab:blue", linewidth=1)
        axis.plot(alphas[~refined], losses[~refined], "o", color="tab:blue", markersize=3, label="L(α), grid")
        axis.plot(alphas[refined], losses[refined], "^", color="tab:orange", markersize=4, label="golden-section")
        axis.plot(alphas, path["chord"], "--", color="black", linewidth=1, label="chord")
        verdict = "zero" if path["zero_barrier"] else "non-zero"
        axis.set_title(f"{_short(path['a'])} → {_short(path['b'])}: B_lin {path['linear_barrier']:.3g}±{path['barrier_se']:.1g} ({verdict})",
                       fontsize=8)
        axis.set_xlabel("α")
        axis.set_ylabel("loss (nats/token)")
    axes.flat[0].legend(fontsize=6)

    simplex = results["simplex"]
    axis = axes.flat[len(paths)]
    points = simplex["dirichlet"]
    axis.scatter([p["weighted_endpoint_loss"] for p in points], [p["merged_loss"] for p in points], s=10,
                 label=f"{len(points)} Dirichlet weightings")
    merge = simplex["at_merge_weights"]
    axis.scatter([merge["weighted_endpoint_loss"]], [merge["merged_loss"]], marker="X", s=80, color="black", label="merge weights w")
    limits = [min(axis.get_xlim()[0], axis.get_ylim()[0]), max(axis.get_xlim()[1], axis.get_ylim()[1])]
    axis.plot(limits, limits, ":", color="grey", label="y = x")
    axis.set_xlabel("Σ c_k L(θ_k)")
    axis.set_ylabel("L(Σ c_k θ_k)")
    axis.set_title("Simplex check (below the line: merge gains)", fontsize=8)
    axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(paths) + 1:]:
        axis.set_visible(False)

    probe = results["probe"]
    settings = results["settings"]
    plotting.caption(figure, (
        f"{results['split_model']}: {len(results['branches'])} branches, {len(paths)} paths. Probe: {probe['examples']} {probe['part']} "
        f"examples of {probe['tasks']} tasks, the same batches at every α; {settings['num_alphas']} grid points plus "
        f"{settings['refine_steps']} golden-section points. B_lin = max_α [L(α) − chord(α)]; ± = bootstrap SE over examples "
        f"({settings['bootstrap']} resamples); zero if B_lin ≤ max({settings['zero_tolerance']}, 2·SE)."))
    figure.tight_layout()
    outputs.save_figure(figure, "lmc_curves")
    plotting.close(figure)
