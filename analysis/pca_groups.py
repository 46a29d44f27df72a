"""The PCA split of the datasets and the branches' trajectories along the conflict directions.

    python -m analysis.pca_groups --workdir=DIR [--split_model=merit-2d --reference_runs=joint-1ep]

Writes DIR/figures/pca_groups/pca_groups.json/png/pdf: the split scatter of z_t with the
weighted-median cuts, the scree plot and the cosine heatmap ordered by group. It also writes
trajectories.json/png/pdf: θ − θ0 of every branch snapshot, branch endpoint and the merged model,
projected on the double-centered conflict directions p_1, p_2 in the gradient store's strided
coordinates.
"""

import time

import numpy as np
from absl import flags, logging
from tqdm.auto import tqdm

from analysis import common, plotting, projection
from merit_jax.core import conflicts as conflicts_lib
from merit_jax.core import gradients as gradients_lib
from merit_jax.core import split as split_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Finished pipeline workdir to analyse.")
_SPLIT_MODEL = flags.DEFINE_string("split_model", None, "MERIT model whose split and branches to show; default merit-2d.")
_REFERENCE_RUNS = flags.DEFINE_list("reference_runs", ["joint-1ep"], "Runs drawn for comparison in the trajectory plot.")
_REPLOT = flags.DEFINE_boolean("replot", False, "Redraw the figures from the JSON files without recomputing.")
flags.mark_flag_as_required("workdir")

# Tolerance of the merged-point identity, relative to the largest |coordinate|. The merged
# checkpoint is a float32 weighted sum, so the identity is exact only up to float32 rounding.
MERGE_IDENTITY_RTOL = 1e-4


def split_facts(ctx, split_model: str) -> dict:
    """Collect part (a): scores, full spectrum, groups, cut positions, and whether the split reproduces."""
    inputs = common.conflict_inputs(ctx)
    names, cosine, scores = inputs["names"], inputs["cosine"], inputs["scores"]
    groups = common.branch_runs(ctx, split_model)
    labels = common.group_labels(ctx, split_model, names)
    dims = len(groups[0]["label"])
    weights = inputs["samples"] if inputs["split_weight"] == "samples" else inputs["tokens"]

    full = conflicts_lib.pca_embedding(cosine, len(names) - 1, mode=inputs["pca_mode"])
    score_error = float(np.max(np.abs(full.scores[:, : scores.shape[1]] - scores)))
    recomputed = split_lib.weighted_median_split(scores[:, :dims], weights)
    recomputed_labels = [None] * len(names)
    for label, members in zip(recomputed.labels, recomputed.groups):
        for index in members:
            recomputed_labels[index] = label

    order = sorted(range(len(names)), key=lambda t: (labels[t], scores[t, 0], t))
    return {
        "tasks": names, "families": inputs["families"], "split_model": split_model, "dims": dims,
        "pca_mode": inputs["pca_mode"], "scores": scores, "groups": labels,
        "split_weight": inputs["split_weight"], "weights": weights,
        "eigenvalues": full.eigenvalues, "explained_variance_ratio": full.eigenvalues / full.eigenvalues.sum(),
        "cuts": projection.cut_positions(scores, labels),
        "checks": {"max_score_difference_vs_recomputed_pca": score_error,
                   "split_reproduced": recomputed_labels == labels},
        "heatmap_order": order,
    }


def _epoch_fraction(ctx, run: str, step: int | None) -> tuple[int, float]:
    """Return (step, epochs) of a run's snapshot, or of its final parameters when `step` is None."""
    info = common.run_info(ctx, run)
    epochs = int(run.split("-")[1].removesuffix("ep")) if run.startswith("joint-") else 1
    if info is None:
        total = (ctx.manifest.entry(f"train:{run}") or {}).get("steps")
        return (total, float(epochs)) if step is None else (step, float("nan"))
    total = info["total_steps"]
    step = total if step is None else step
    return step, step / info["steps_per_epoch"]


def collect_points(ctx, split_model: str, reference_runs: list[str], stride: int) -> tuple[list[dict], np.ndarray, list[str]]:
    """Load the strided displacements θ − θ0 of every snapshot, final checkpoint and the merged model."""
    theta0 = projection.strided(common.trainable_part(ctx, ctx.theta0()), stride)
    series = [(group["run"], group["label"]) for group in common.branch_runs(ctx, split_model)]
    series += [(run, run) for run in reference_runs if (ctx.workdir / "runs" / run).exists()]
    points, vectors, notes = [], [], []

    jobs, without = [], []
    for run, label in series:
        steps = common.snapshot_steps(ctx, run)
        if not steps:
            without.append(run)
        jobs += [(run, label, step) for step in steps] + [(run, label, None)]
    if without:
        notes.append(f"No snapshots for {', '.join(without)} (older workdir or train.snapshots = 0): drawn as θ0 → final only.")
    jobs.append((split_model, "merged", None))

    for run, label, step in tqdm(jobs, desc="projecting checkpoints", unit="ckpt"):
        if step is None:
            tree = common.trainable_part(ctx, common.load_params(ctx, run))
        else:
            tree = common.load_snapshot(ctx, run, step)
        vectors.append(projection.strided(tree, stride) - theta0)
        if label == "merged":
            at, epochs = None, 1.0
        else:
            at, epochs = _epoch_fraction(ctx, run, step)
        points.append({"series": label, "run": run, "step": at, "epochs": epochs,
                       "kind": _point_kind(label, step),
                       "checkpoint": common.checkpoint_id(ctx, run, step)})
    return points, np.stack(vectors), notes


def _point_kind(label: str, step: int | None) -> str:
    if label == "merged":
        return "merged"
    return "final" if step is None else "snapshot"


def trajectories(ctx, facts: dict, reference_runs: list[str]) -> dict:
    """Compute part (b): coordinates along −p_1, −p_2, captured fractions and the merged-point identity."""
    cosine = common.conflict_inputs(ctx)["cosine"]
    eigenvalues, eigenvectors = projection.double_centered_axes(cosine, 2)
    eigenvectors, correlation = projection.match_signs(eigenvectors, eigenvalues, np.asarray(facts["scores"]))

    store = gradients_lib.GradientStore(common.require_file(ctx.workdir / "gradients" / "index.json", "gradients", ctx.workdir).parent)
    points, vectors, notes = collect_points(ctx, facts["split_model"], reference_runs, store.stride)
    products = projection.unit_gradient_products(store, facts["tasks"], vectors)
    coordinates = projection.project(products, eigenvectors, eigenvalues)
    norms = np.linalg.norm(vectors, axis=1)

    # Descent directions: a branch whose datasets score positive on PC1 moves along −p_1.
    descent = -coordinates
    scale = float(np.max(np.abs(descent)))
    for point, xy, norm in zip(points, descent, norms):
        point.update(coordinates=xy, scaled=xy / scale, displacement_norm=norm,
                     captured_fraction=float(np.linalg.norm(xy) / norm) if norm > 0 else float("nan"))

    identity = _merged_identity(ctx, facts["split_model"], points, descent, scale)
    logging.info("merged point identity: max |difference| %.3g (tolerance %.3g)", identity["max_abs_difference"], identity["tolerance"])
    return {
        "split_model": facts["split_model"],
        "directions": "p_k = G̃ᵀu_k/√λ_k from the eigenpairs of JCJ (double-centered cosine), unit norm, strided coordinates",
        "plotted_axes": "coordinates along the descent directions −p_1, −p_2, divided by one common scale factor",
        "stride": store.stride, "strided_length": int(vectors.shape[1]),
        "eigenvalues": eigenvalues, "axis_correlation_with_split_scores": correlation,
        "scale_factor": scale, "points": points, "merged_identity": identity, "notes": notes,
    }


def _merged_identity(ctx, split_model, points, coordinates, scale) -> dict:
    """Check x_merged = Σ_k w_k x_k,final (projection is linear); raise when it fails."""
    weights_file = common.require_file(ctx.workdir / "merged" / split_model / "weights.json", f"merge:{split_model}", ctx.workdir)
    merge = common.read_json(weights_file)
    final = {p["run"]: xy for p, xy in zip(points, coordinates) if p["kind"] == "final"}
    combined = sum(w * final[run] for run, w in zip(merge["branches"], merge["weights"]))
    merged = next(xy for p, xy in zip(points, coordinates) if p["kind"] == "merged")
    difference = float(np.max(np.abs(merged - combined)))
    tolerance = MERGE_IDENTITY_RTOL * scale
    if difference > tolerance:
        raise AssertionError(
            f"merged point {merged} differs from Σ w_k x_k = {combined} by {difference:.3g} > {tolerance:.3g}; "
            f"merged/{split_model} is not the weighted average of its branches")
    return {"merged": merged, "weighted_sum_of_finals": combined, "weights": merge["weights"],
            "branches": merge["branches"], "max_abs_difference": difference, "tolerance": tolerance}


def plot_split(outputs, facts: dict) -> None:
    scores = np.asarray(facts["scores"])
    weights = np.asarray(facts["weights"])
    labels, model, size = facts["groups"], facts["split_model"], len(facts["tasks"])
    figure, axes = plotting.plt.subplots(1, 3, figsize=(17, 5.2))

    sizes = 15 + 185 * weights / weights.max()
    plotting.scatter_by(axes[0], scores[:, :2], labels, sizes=sizes, legend_title=f"{model} group")
    cuts = facts["cuts"]
    axes[0].axvline(cuts[""], color="black", linewidth=1.2, label="level-1 cut (PC1)")
    left, right = axes[0].get_xlim()
    for prefix, (start, stop) in (("0", (left, cuts[""])), ("1", (cuts[""], right))):
        if prefix in cuts:
            axes[0].hlines(cuts[prefix], start, stop, colors="black", linestyles="--", linewidth=1.0)
    axes[0].set_xlim(left, right)
    ratio = facts["explained_variance_ratio"]
    axes[0].set_xlabel(f"z_t,1: PC1 score ({100 * ratio[0]:.1f}% of variance)")
    axes[0].set_ylabel(f"z_t,2: PC2 score ({100 * ratio[1]:.1f}% of variance)")
    axes[0].set_title(f"{model} split of {size} datasets (solid: PC1 cut, dashed: PC2 cuts)")

    shown = min(len(ratio), 20)
    axes[1].bar(np.arange(1, shown + 1), 100 * np.asarray(ratio[:shown]), color="tab:blue", label="per component")
    axes[1].plot(np.arange(1, shown + 1), 100 * np.cumsum(ratio[:shown]), "k.-", label="cumulative")
    axes[1].set_xlabel("principal component")
    axes[1].set_ylabel("explained variance (%)")
    axes[1].xaxis.set_major_locator(plotting.plt.MaxNLocator(integer=True))
    axes[1].set_title(f"Scree plot of the cosine matrix C (PCA mode {facts['pca_mode']})")
    axes[1].legend()

    order = facts["heatmap_order"]
    cosine = np.asarray(facts["cosine"])[np.ix_(order, order)]
    image = axes[2].imshow(cosine, cmap="RdBu_r", vmin=-1, vmax=1)
    ordered_labels = [labels[t] for t in order]
    for boundary in [i for i in range(1, size) if ordered_labels[i] != ordered_labels[i - 1]]:
        axes[2].axhline(boundary - 0.5, color="black", linewidth=1)
        axes[2].axvline(boundary - 0.5, color="black", linewidth=1)
    axes[2].set_title("C ordered by group, then by PC1 score")
    axes[2].set_xlabel("dataset (ordered)")
    axes[2].set_ylabel("dataset (ordered)")
    axes[2].grid(False)
    figure.colorbar(image, ax=axes[2], label="cosine of dataset gradients")
    plotting.caption(figure, (
        f"{size} datasets, point area ∝ split weight ({facts['split_weight']}). Groups are the bit labels of the recursive "
        f"weighted-median split (bit j = side of the cut on PC j). Split reproduced from the stored scores: "
        f"{facts['checks']['split_reproduced']}." + (" Level-3 cuts (PC3) are not drawable here." if facts["dims"] > 2 else "")))
    outputs.save_figure(figure, "pca_groups")
    plotting.close(figure)


def plot_trajectories(outputs, result: dict, size: int) -> None:
    points = result["points"]
    figure, axis = plotting.plt.subplots(figsize=(7.5, 7))

    axis.scatter([0], [0], marker="*", s=250, color="gold", edgecolor="black", zorder=5, label="θ0 (base)")
    series = [s for s in dict.fromkeys(p["series"] for p in points) if s != "merged"]
    colours = plotting.category_colours([s for s in series if not s.startswith("joint")])
    for name in series:
        members = sorted((p for p in points if p["series"] == name), key=lambda p: p["step"] or 0)
        xy = np.array([[0.0, 0.0]] + [p["scaled"] for p in members])
        reference = name.startswith("joint")
        style = dict(color="grey", linestyle="--") if reference else dict(color=colours[name])
        axis.plot(xy[:, 0], xy[:, 1], marker="o", markersize=4, label=f"{'run ' if reference else 'group '}{name}", **style)
        for point in members:
            if point["epochs"] is not None and np.isfinite(point["epochs"]):
                axis.annotate(f"{point['epochs']:.2f}", point["scaled"], fontsize=6, xytext=(3, 3), textcoords="offset points")

    merged = next(p for p in points if p["kind"] == "merged")
    axis.scatter(*merged["scaled"], marker="X", s=160, color="black", zorder=6, label=f"merged {result['split_model']}")
    axis.axhline(0, color="black", linewidth=0.5)
    axis.axvline(0, color="black", linewidth=0.5)
    axis.set_xlim(-1.1, 1.1)
    axis.set_ylim(-1.1, 1.1)
    axis.set_aspect("equal")
    axis.set_xlabel("⟨θ − θ0, −p₁⟩ / s  (descent direction of conflict PC1)")
    axis.set_ylabel("⟨θ − θ0, −p₂⟩ / s  (descent direction of conflict PC2)")
    axis.set_title(f"Branch trajectories of {result['split_model']} in the conflict-PC plane")
    axis.legend(loc="best")

    # Zero displacements (none in practice) have no captured fraction: NaN, or None after JSON.
    captured = [p["captured_fraction"] for p in points if p["captured_fraction"] is not None and np.isfinite(p["captured_fraction"])]
    plotting.caption(figure, (
        f"{size} datasets; {len(series)} runs; labels = epochs trained. One common scale s = {result['scale_factor']:.3g} "
        f"(parameter units, strided coordinates, stride {result['stride']}). The plane captures "
        f"{100 * min(captured):.1f}–{100 * max(captured):.1f}% of ‖θ − θ0‖. Merged point = Σ w_k (branch endpoints) "
        f"to {result['merged_identity']['max_abs_difference']:.1e}. " + " ".join(result["notes"])))
    outputs.save_figure(figure, "trajectories")
    plotting.close(figure)


def main():
    outputs = common.Outputs(_WORKDIR.value, "pca_groups")
    if _REPLOT.value:
        facts = outputs.read_json("pca_groups.json")
        result = outputs.read_json("trajectories.json")
    else:
        started = time.perf_counter()
        ctx = common.open_workdir(_WORKDIR.value)
        split_model = _SPLIT_MODEL.value or common.default_split_model(ctx)
        facts = split_facts(ctx, split_model)
        result = trajectories(ctx, facts, list(_REFERENCE_RUNS.value))
        facts["cosine"] = common.conflict_inputs(ctx)["cosine"]
        checkpoints = {p["run"] + ("" if p["step"] is None else f"@{p['step']}"): p["checkpoint"] for p in result["points"]}
        facts["provenance"] = common.provenance(ctx)
        result["provenance"] = common.provenance(ctx, checkpoints=checkpoints)
        result["wall_seconds"] = facts["wall_seconds"] = time.perf_counter() - started
        outputs.write_json("pca_groups.json", facts)
        outputs.write_json("trajectories.json", result)
    plot_split(outputs, facts)
    plot_trajectories(outputs, result, len(facts["tasks"]))
    outputs.report()


if __name__ == "__main__":
    common.run(main)
