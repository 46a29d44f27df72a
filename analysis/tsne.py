"""t-SNE of the dataset gradients at θ0, computed exactly from the cosine matrix.

    python -m analysis.tsne --workdir=DIR [--perplexities=5,15,30 --seeds=5 --max_iter=2000]

Writes DIR/figures/tsne/: tsne.json and tsne.npz (coordinates per perplexity × seed, KL,
trustworthiness, Procrustes disparities), tsne.png/pdf (t-SNE coloured by family and by MERIT
group, next to the PCA scatter of the split) and tsne_grid.png/pdf. Distances between clusters,
cluster sizes and densities in t-SNE carry no meaning; conclusions belong to C and its PCA.
"""

import time

import numpy as np
from absl import flags, logging
from tqdm.auto import tqdm

from analysis import common, embedding, plotting

_WORKDIR = flags.DEFINE_string("workdir", None, "Finished pipeline workdir to analyse.")
_PERPLEXITIES = flags.DEFINE_list("perplexities", ["5", "15", "30"], "t-SNE perplexities; values >= T are dropped.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "t-SNE seeds per perplexity (random_state 0..seeds-1).")
_MAX_ITER = flags.DEFINE_integer("max_iter", 2000, "Maximum t-SNE iterations (at least 250).")
_SPLIT_MODEL = flags.DEFINE_string("split_model", None, "Split whose groups colour the twin panel; default merit-2d.")
_MAIN_PERPLEXITY = flags.DEFINE_float("main_perplexity", None, "Perplexity of the main panel; default the middle one.")
_REPLOT = flags.DEFINE_boolean("replot", False, "Redraw the figures from tsne.json without recomputing.")
flags.mark_flag_as_required("workdir")

NEIGHBOURS = [5, 10]


def compute(ctx, perplexities: list[float], seeds: int, max_iter: int, split_model: str) -> dict:
    inputs = common.conflict_inputs(ctx)
    names, cosine = inputs["names"], inputs["cosine"]
    size = len(names)
    valid = [p for p in perplexities if p < size]
    if not valid:
        raise ValueError(f"every perplexity in {perplexities} is >= T = {size}; choose smaller ones")
    if len(valid) < len(perplexities):
        logging.warning("dropped perplexities %s: scikit-learn needs perplexity < T = %d",
                        sorted(set(perplexities) - set(valid)), size)

    coordinates, eigenvalues = embedding.exact_coordinates(cosine)
    error = embedding.distance_error(cosine, coordinates)
    logging.info("exact input: %d datasets in %d dimensions, max distance error %.2e", size, coordinates.shape[1], error)

    runs, embeddings = [], np.zeros((len(valid), seeds, size, 2))
    grid = [(i, p, s) for i, p in enumerate(valid) for s in range(seeds)]
    for index, perplexity, seed in tqdm(grid, desc="t-SNE runs", unit="run"):
        points, kl, iterations = embedding.run_tsne(coordinates, perplexity=perplexity, seed=seed, max_iter=max_iter)
        embeddings[index, seed] = points
        runs.append({
            "perplexity": perplexity, "seed": seed, "kl_divergence": kl, "iterations": iterations,
            "trustworthiness": embedding.trustworthiness_scores(coordinates, points, NEIGHBOURS),
        })

    stability = [_seed_stability(coordinates, embeddings[index], perplexity, max_iter)
                 for index, perplexity in enumerate(valid)]

    return {
        "tasks": names,
        "families": inputs["families"],
        "split_model": split_model,
        "groups": common.group_labels(ctx, split_model, names),
        "split_scores": inputs["scores"][:, :2],
        "explained_variance_ratio": inputs["explained_variance_ratio"],
        "pca_mode": inputs["pca_mode"],
        "input": {
            "construction": "X = Q Λ^(1/2) of the cosine matrix (rows = unit gradients up to rotation)",
            "dimensions": int(coordinates.shape[1]),
            "eigenvalues": eigenvalues,
            "max_distance_error": error,
        },
        "settings": {"perplexities": valid, "seeds": list(range(seeds)), "max_iter": max_iter,
                     "method": "exact", "init": "pca", "learning_rate": "auto", "trustworthiness_k": NEIGHBOURS},
        "runs": runs,
        "seed_stability": stability,
    }, embeddings


def _seed_stability(coordinates, pca_embeddings, perplexity, max_iter) -> dict:
    """Procrustes disparities between the PCA-initialized seeds, and against random initializations.

    With init="pca" scikit-learn uses the seed for nothing that changes the exact method's result,
    so the seeds usually agree exactly. The random-init runs show how much the layout depends on
    the initialization.
    """
    seeds = len(pca_embeddings)
    matrix = embedding.pairwise_disparities(list(pca_embeddings))
    upper = matrix[np.triu_indices(seeds, k=1)]
    random_init = [
        embedding.run_tsne(coordinates, perplexity=perplexity, seed=seed, max_iter=max_iter, init="random")[0]
        for seed in range(seeds)
    ]
    versus_pca = [embedding.procrustes_disparity(pca_embeddings[0], points) for points in random_init]
    return {
        "perplexity": perplexity,
        "disparity_matrix": matrix,
        "mean_disparity": float(upper.mean()) if upper.size else 0.0,
        "max_disparity": float(upper.max()) if upper.size else 0.0,
        "random_init_vs_pca_disparity": versus_pca,
        "random_init_mean_disparity": float(np.mean(versus_pca)),
    }


def plot(outputs, results: dict, embeddings: np.ndarray, main_perplexity: float | None) -> None:
    perplexities = results["settings"]["perplexities"]
    seeds = results["settings"]["seeds"]
    main = main_perplexity if main_perplexity is not None else perplexities[len(perplexities) // 2]
    if main not in perplexities:
        raise ValueError(f"--main_perplexity={main} is not among the computed perplexities {perplexities}")
    row = perplexities.index(main)
    size = len(results["tasks"])
    points = embeddings[row, 0]

    figure, axes = plotting.plt.subplots(1, 3, figsize=(16, 5))
    plotting.scatter_by(axes[0], points, results["families"], legend_title="task family",
                        title=f"t-SNE coloured by task family (perplexity {main:g}, seed 0)")
    plotting.scatter_by(axes[1], points, results["groups"], legend_title=f"{results['split_model']} group",
                        title=f"t-SNE coloured by {results['split_model']} group")
    for axis in axes[:2]:
        axis.set_xlabel("t-SNE 1 (no units)")
        axis.set_ylabel("t-SNE 2 (no units)")
    scores = np.asarray(results["split_scores"])
    ratio = results["explained_variance_ratio"]
    plotting.scatter_by(axes[2], scores, results["groups"], legend_title=f"{results['split_model']} group",
                        title=f"PCA of the cosine matrix ({results['pca_mode']})")
    axes[2].set_xlabel(f"PC1 score ({100 * ratio[0]:.1f}% of variance)")
    axes[2].set_ylabel(f"PC2 score ({100 * ratio[1]:.1f}% of variance)")
    run = next(r for r in results["runs"] if r["perplexity"] == main and r["seed"] == 0)
    plotting.caption(figure, (
        f"{size} datasets, one point each. Exact t-SNE (PCA init, {results['settings']['max_iter']} iterations max) of the "
        f"exact {results['input']['dimensions']}-dimensional embedding of the unit gradients; KL = {run['kl_divergence']:.3f}, "
        "trustworthiness " + ", ".join(f"k={k}: {v:.3f}" for k, v in run["trustworthiness"].items())
        + f". {len(seeds)} seeds were run; see tsne_grid. "
        "t-SNE distances between clusters and cluster sizes carry no meaning."))
    outputs.save_figure(figure, "tsne")
    plotting.close(figure)

    figure, axes = plotting.plt.subplots(len(perplexities), len(seeds), figsize=(2.8 * len(seeds), 2.8 * len(perplexities)),
                                         squeeze=False)
    colours = plotting.category_colours(results["families"])
    for i, perplexity in enumerate(perplexities):
        for j, seed in enumerate(seeds):
            run = next(r for r in results["runs"] if r["perplexity"] == perplexity and r["seed"] == seed)
            axis = axes[i, j]
            axis.scatter(embeddings[i, j, :, 0], embeddings[i, j, :, 1], s=12,
                         c=[colours[f] for f in results["families"]])
            axis.set_title(f"perp. {perplexity:g}, seed {seed}, KL {run['kl_divergence']:.2f}", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
    handles = [plotting.plt.Line2D([], [], marker="o", linestyle="", color=c, label=f) for f, c in colours.items()]
    figure.legend(handles=handles, loc="upper right", title="task family")
    disparities = "; ".join(
        f"perp. {s['perplexity']:g}: {s['mean_disparity']:.2g} between PCA-init seeds, "
        f"{s['random_init_mean_disparity']:.2g} random init vs PCA init"
        for s in results["seed_stability"])
    plotting.caption(figure, f"{size} datasets; rows = perplexity, columns = seed (PCA init). "
                             f"Mean Procrustes disparity: {disparities}.")
    outputs.save_figure(figure, "tsne_grid")
    plotting.close(figure)


def main():
    outputs = common.Outputs(_WORKDIR.value, "tsne")
    if _REPLOT.value:
        results = outputs.read_json("tsne.json")
        embeddings = outputs.read_npz("tsne.npz")["embeddings"]
    else:
        started = time.perf_counter()
        ctx = common.open_workdir(_WORKDIR.value)
        split_model = _SPLIT_MODEL.value or common.default_split_model(ctx)
        perplexities = [float(p) for p in _PERPLEXITIES.value]
        results, embeddings = compute(ctx, perplexities, _SEEDS.value, _MAX_ITER.value, split_model)
        results["provenance"] = common.provenance(ctx, keys={"tsne_random_state": results["settings"]["seeds"]})
        results["wall_seconds"] = time.perf_counter() - started
        results["embeddings_shape"] = "(perplexity, seed, task, 2) in tsne.npz; coordinates also in runs below"
        for run, (i, j) in zip(results["runs"], np.ndindex(embeddings.shape[:2])):
            run["embedding"] = embeddings[i, j]
        outputs.write_npz("tsne.npz", embeddings=embeddings, perplexities=np.array(results["settings"]["perplexities"]))
        outputs.write_json("tsne.json", results)
    plot(outputs, results, embeddings, _MAIN_PERPLEXITY.value)
    outputs.report()


if __name__ == "__main__":
    common.run(main)
