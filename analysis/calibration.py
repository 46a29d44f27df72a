"""Calibration-size sensitivity: how well n-example gradients estimate a task's gradient at θ0.

    python -m analysis.calibration --workdir=DIR [--draws=20 --n_grid=5,10,25,50,100,200,400,800]

Per task, the training examples are split at random into a reference of N examples and a pool.
Independent n-example subsets come from the pool, nested ones from the reference, and split
halves from all examples. Every cosine follows from the per-example Gram matrix of strided
per-example gradients (the gradient store's coordinates, token-weighted means). Writes
DIR/figures/calibration/: calibration.json (per task: noise scale B from each design, n_0.9,
curves with CIs), calibration.npz, calibration_curve, calibration_B_hist and split_stability
figures.
"""

import time

import numpy as np
from absl import flags, logging
from tqdm.auto import tqdm

from analysis import calibration_plots, common, example_gradients, subset_sums
from analysis import noise_scale as model
from merit_jax.core import conflicts as conflicts_lib
from merit_jax.core import gradients as gradients_lib
from merit_jax.core import split as split_lib
from merit_jax.core import tree as tree_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Finished pipeline workdir to analyse.")
_N_GRID = flags.DEFINE_list("n_grid", ["5", "10", "25", "50", "100", "150", "200", "250", "300", "400", "500", "700", "800", "1000"],
                            "Subset sizes n; values larger than the tasks hold are dropped.")
_DRAWS = flags.DEFINE_integer("draws", 20, "Random subsets per (task, n) and split halves per task.")
_REFERENCE_SIZE = flags.DEFINE_integer("reference_size", None, "Reference size N; default half of the smallest task.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples_per_task", 240, "Use at most this many training examples per task "
                                     "(all of them: a value above the task sizes).")
_BATCH = flags.DEFINE_integer("gradient_batch", 16, "Examples per vectorized per-example gradient call.")
_SPLIT_COSINES = flags.DEFINE_enum("split_cosines", "exact", ["exact", "sketch"],
                                   "Cosines of the split-stability draws: exact (a scratch file of draws × tasks × P/s "
                                   "float32 next to the outputs) or from a count sketch (in memory, approximate).")
_SKETCH_DIM = flags.DEFINE_integer("sketch_dim", 32768, "Count-sketch dimension with --split_cosines=sketch.")
_SPLIT_DRAWS = flags.DEFINE_integer("split_draws", 5, "Draws per n whose PCA split is recomputed.")
_FIT_BOOTSTRAP = flags.DEFINE_integer("fit_bootstrap", 200, "Bootstrap resamples of the draws for the CI of B.")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed of subsets, sketch and bootstrap.")
_REPLOT = flags.DEFINE_boolean("replot", False, "Redraw the figures from calibration.json without recomputing.")
flags.mark_flag_as_required("workdir")

PURPOSES = {"subsets": 1, "sketch": 2, "fit_bootstrap": 3}


def plan_draws(rng, count: int, reference_size: int, independent_grid, nested_grid, draws: int) -> dict:
    """Draw the index sets of one task: reference, independent and nested subsets, disjoint halves."""
    order = rng.permutation(count)
    reference, pool = order[:reference_size], order[reference_size:]
    half = count // 2
    halves = []
    for _ in range(draws):
        shuffled = rng.permutation(count)
        halves.append((shuffled[:half], shuffled[half : 2 * half]))
    return {
        "reference": reference,
        "independent": {n: [rng.choice(pool, n, replace=False) for _ in range(draws)] for n in independent_grid},
        "nested": {n: [rng.choice(reference, n, replace=False) for _ in range(draws)] for n in nested_grid},
        "halves": halves,
    }


def fit_task(gram, tokens, plan, rng, bootstrap: int) -> dict:
    """Compute the cosines of every design and fit the noise scale B to each."""
    reference_n = model.effective_n(tokens[plan["reference"]])
    curves = {}
    for design in ("independent", "nested"):
        cosines = np.array([[model.subset_cosine(gram, s, plan["reference"]) for s in subsets] for subsets in plan[design].values()])
        n_eff = np.array([[model.effective_n(tokens[s]) for s in subsets] for subsets in plan[design].values()])
        curves[design] = {"n": list(plan[design]), "cosines": cosines, "n_eff": n_eff, "mean": cosines.mean(axis=1),
                          "ci95_over_draws": np.percentile(cosines, [2.5, 97.5], axis=1).T}
    halves = np.array([model.subset_cosine(gram, a, b) for a, b in plan["halves"]])
    half_n = np.array([model.effective_n(tokens[a]) for a, _ in plan["halves"]])

    independent = curves["independent"]
    fit = model.fit_noise_scale(model.independent_cosine, independent["cosines"].ravel(), independent["n_eff"].ravel(), reference_n)
    resampled = []
    for _ in range(bootstrap):
        picks = rng.integers(0, independent["cosines"].shape[1], size=independent["cosines"].shape)
        rows = np.arange(independent["cosines"].shape[0])[:, None]
        resampled.append(model.fit_noise_scale(model.independent_cosine, independent["cosines"][rows, picks].ravel(),
                                               independent["n_eff"][rows, picks].ravel(), reference_n))
    nested = curves["nested"]
    return {
        "curves": curves, "split_half_cosines": halves, "reference_n_eff": reference_n,
        "B_independent": fit,
        "B_independent_ci95": list(np.percentile(resampled, [2.5, 97.5])) if resampled else None,
        "B_nested": model.fit_noise_scale(model.nested_cosine, nested["cosines"].ravel(), nested["n_eff"].ravel(), reference_n),
        "B_split_half": float(np.median(half_n * (1.0 / np.clip(halves, 1e-12, None) - 1.0))),
        "B_moment": model.moment_noise_scale(gram, tokens),
        "n_090": fit * model.N_090_FACTOR,
        "n_090_ci95": [b * model.N_090_FACTOR for b in np.percentile(resampled, [2.5, 97.5])] if resampled else None,
    }


def _store_check(ctx, store, name, gradients, tokens, used: int) -> float | None:
    """Return the cosine between the calibration examples' mean and the stored gradient.

    Returns None when some calibration examples are beyond the examples used.
    """
    split = ctx.splits[name]
    position = {id(example): index for index, example in enumerate(split.train)}
    indices = [position[id(example)] for example in split.calibration]
    if max(indices) >= used:
        return None
    mean = gradients[indices].astype(np.float64).sum(axis=0) / tokens[indices].sum()
    stored = np.asarray(store.load(name), dtype=np.float64)
    return float(mean @ stored / np.linalg.norm(mean) / np.linalg.norm(stored))


def _splits_of(gram: np.ndarray, names, weights, dims_list, mode) -> dict:
    """Split T tasks by PCA of their gradients' Gram matrix for every depth in `dims_list`."""
    cosine = conflicts_lib.cosine_from_gram(0.5 * (gram + gram.T), names=names)
    scores = conflicts_lib.pca_embedding(cosine, max(dims_list), mode=mode).scores
    return {dims: split_lib.weighted_median_split(scores[:, :dims], weights).assignment() for dims in dims_list}


def split_stability(ctx, inputs, sums, grid, split_draws) -> dict:
    """Compare splits from n-example gradients with the reference split and the pipeline's split."""
    names, dims_list, mode = inputs["names"], list(ctx.config.split.dims), ctx.config.conflicts.pca_mode
    weights = inputs["samples"] if inputs["split_weight"] == "samples" else inputs["tokens"]
    reference = _splits_of(sums.gram(0), names, weights, dims_list, mode)
    pipeline = {dims: np.array(common.group_labels(ctx, f"merit-{dims}d", names)) for dims in dims_list}

    results = {}
    for dims in dims_list:
        per_n = []
        for index, n in enumerate(grid):
            draws = [_splits_of(sums.gram(1 + index * split_draws + r), names, weights, [dims], mode)[dims]
                     for r in range(split_draws)]
            versus_reference = [model.split_agreement(draw, reference[dims]) for draw in draws]
            versus_pipeline = [model.split_agreement(draw, pipeline[dims]) for draw in draws]
            per_n.append({"n": n, **{f"{target}_{metric}": [v[metric] for v in values]
                                     for target, values in (("reference", versus_reference), ("pipeline", versus_pipeline))
                                     for metric in ("adjusted_rand_index", "matched_agreement")}})
        results[str(dims)] = {
            "per_n": per_n,
            "reference_vs_pipeline": model.split_agreement(reference[dims], pipeline[dims]),
        }
    return results


def summarize(per_task: dict, reference_size: int) -> dict:
    """Average the per-task mean cosines over tasks (mean ± sd, the published layout); summarize B."""
    summary = {}
    for design in ("independent", "nested"):
        first = next(iter(per_task.values()))["curves"][design]
        means = np.array([task["curves"][design]["cosines"].mean(axis=1) for task in per_task.values()])
        summary[design] = {"n": first["n"], "mean": means.mean(axis=0), "sd": means.std(axis=0, ddof=1) if len(means) > 1 else 0 * means[0]}
    fits = np.array([task["B_independent"] for task in per_task.values()])
    reference_n = np.mean([task["reference_n_eff"] for task in per_task.values()])
    independent = summary["independent"]
    summary["single_B_fit_to_mean_curve"] = model.fit_noise_scale(model.independent_cosine, independent["mean"], np.array(independent["n"], float), reference_n)
    summary["per_task_B_model_mean"] = [float(np.mean(model.independent_cosine(fits, n, reference_n))) for n in independent["n"]]
    summary["B_independent"] = {"median": float(np.median(fits)), "log10_mean": float(np.mean(np.log10(fits))),
                                "log10_sd": float(np.std(np.log10(fits))), "min": float(fits.min()), "max": float(fits.max())}
    summary["n_090_median"] = float(np.median(fits) * model.N_090_FACTOR)
    summary["reference_size"] = reference_size
    return summary


def _process_tasks(ctx, names, encoded, store, fn, params, sums, plan_settings, split_draws, rngs) -> dict:
    """Per task: per-example gradients, their Gram matrix, the fits, and the split-stability sums."""
    reference_size, independent_grid, nested_grid = plan_settings
    subset_rng, fit_rng = rngs
    per_task = {}
    for task, name in enumerate(tqdm(names, desc="per-example gradients", unit="task")):
        gradients, tokens = example_gradients.task_example_gradients(
            fn, *params, encoded[name], _BATCH.value, ctx.family)
        gram = example_gradients.gram(gradients)
        plan = plan_draws(subset_rng, len(tokens), reference_size, independent_grid, nested_grid, _DRAWS.value)
        per_task[name] = fit_task(gram, tokens, plan, fit_rng, _FIT_BOOTSTRAP.value)
        per_task[name]["examples"] = len(tokens)
        per_task[name]["store_check_cosine"] = _store_check(ctx, store, name, gradients, tokens, len(tokens))

        # Set 0 is the reference; then split_draws draws for every n of the independent grid.
        sets = [plan["reference"]] + [plan["independent"][n][r] for n in independent_grid for r in range(split_draws)]
        indicator = np.zeros((len(sets), len(tokens)), dtype=np.float32)
        for row, members in enumerate(sets):
            indicator[row, members] = 1.0
        sums.add(task, indicator @ gradients)
        del gradients
    return per_task


def compute(ctx, outputs) -> dict:
    keys, key_record = common.purpose_keys(_SEED.value, PURPOSES)
    inputs = common.conflict_inputs(ctx)
    names = inputs["names"]
    store = gradients_lib.GradientStore(common.require_file(ctx.workdir / "gradients" / "index.json", "gradients", ctx.workdir).parent)
    encoded = {name: ctx.encoded(name, "train")[: _MAX_EXAMPLES.value] for name in names}
    smallest = min(len(items) for items in encoded.values())
    reference_size = _REFERENCE_SIZE.value or smallest // 2
    if not 2 <= reference_size <= smallest - 2:
        raise ValueError(f"reference size {reference_size} needs tasks of more than {reference_size + 1} examples; "
                         f"the smallest task has {smallest}; lower --reference_size")
    grid = sorted({int(n) for n in _N_GRID.value})
    independent_grid = sorted({n for n in grid if n < smallest - reference_size} | {smallest - reference_size})
    nested_grid = sorted({n for n in grid if n < reference_size} | {reference_size})

    params = tree_lib.partition(ctx.theta0(), ctx.trainable)
    fn = example_gradients.make_example_gradient_fn(ctx.loss_fn, params[0], store.stride)
    rngs = common.numpy_rng(keys["subsets"]), common.numpy_rng(keys["fit_bootstrap"])
    split_draws = min(_SPLIT_DRAWS.value, _DRAWS.value)
    num_sets = 1 + len(independent_grid) * split_draws
    if _SPLIT_COSINES.value == "exact":
        sums = subset_sums.ExactSums(outputs.directory, num_sets, len(names), store.length)
    else:
        sums = subset_sums.SketchedSums(common.numpy_rng(keys["sketch"]), num_sets, len(names), store.length, _SKETCH_DIM.value)
    try:
        per_task = _process_tasks(ctx, names, encoded, store, fn, params, sums, (reference_size, independent_grid, nested_grid),
                                  split_draws, rngs)
        stability = split_stability(ctx, inputs, sums, independent_grid, split_draws)
    finally:
        sums.close()

    checks = [task["store_check_cosine"] for task in per_task.values() if task["store_check_cosine"] is not None]
    logging.info("calibration means vs stored gradients: min cosine %s over %d tasks", min(checks) if checks else None, len(checks))
    return {
        "tasks": names,
        "settings": {"draws": _DRAWS.value, "reference_size": reference_size, "independent_grid": independent_grid,
                     "nested_grid": nested_grid, "split_half_size": smallest // 2, "max_examples_per_task": _MAX_EXAMPLES.value,
                     "examples_part": "train (the calibration set is a subset of it)", "stride": store.stride,
                     "split_cosines": sums.description, "split_draws": split_draws, "fit_bootstrap": _FIT_BOOTSTRAP.value,
                     "models": {"independent": "[(1 + B/n)(1 + B/N)]^-1/2", "nested": "sqrt((1 + B/N)/(1 + B/n))",
                                "split_half": "1/(1 + B/m)", "n": "effective n = (Σ tokens)² / Σ tokens²"}},
        "per_task": per_task, "summary": summarize(per_task, reference_size), "split_stability": stability,
        "store_check": {"min_cosine": min(checks) if checks else None, "tasks_checked": len(checks)},
        "provenance": common.provenance(ctx, keys=key_record, checkpoints={"base": common.checkpoint_id(ctx, "base")}),
    }


def main():
    outputs = common.Outputs(_WORKDIR.value, "calibration")
    if _REPLOT.value:
        results = outputs.read_json("calibration.json")
    else:
        started = time.perf_counter()
        ctx = common.open_workdir(_WORKDIR.value)
        results = compute(ctx, outputs)
        results["wall_seconds"] = time.perf_counter() - started
        arrays = {f"{design}_cosines": np.stack([t["curves"][design]["cosines"] for t in results["per_task"].values()])
                  for design in ("independent", "nested")}
        arrays["split_half_cosines"] = np.stack([t["split_half_cosines"] for t in results["per_task"].values()])
        outputs.write_npz("calibration.npz", **arrays)
        outputs.write_json("calibration.json", results)
    calibration_plots.plot_all(outputs, results)
    outputs.report()


if __name__ == "__main__":
    common.run(main)
