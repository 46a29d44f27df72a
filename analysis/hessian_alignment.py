"""Alignment of the conflict directions with the top Hessian eigenvectors at θ0, against nulls.

    python -m analysis.hessian_alignment --workdir=DIR [--k=10 --examples_per_task=16 --null_draws=1000 --gain_test]

Protocol: in each sign quadrant of the double-centered cosine embedding, pick the task farthest
from the origin. The top-3 Gram eigenvectors of these 4 tasks (raw and double-centered) give the
conflict directions, built from full (non-strided) task gradients on `examples_per_task`
calibration examples. Lanczos gives the top-k eigenvectors of the Hessian on the same examples (or on a
mixture probe). Writes DIR/figures/hessian_alignment/: alignment.json (metrics, nulls, Lanczos
report, HVP mode), alignment_tiers, cos_heatmap, principal_angles, gain_percentile and
ritz_history figures.

Memory: the task gradients and the eigenvectors are held on the host as (T + k) × P arrays, with
P the number of parameters the Hessian acts on. For a billion-parameter model, restrict P with
--hessian_include (for example one decoder layer) and add --lanczos_basis_on_host.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from analysis import alignment_nulls as nulls
from analysis import alignment_plots, common, embedding, projection
from analysis.alignment_inputs import (
    combine_rows, cosine_agreement, full_gradients, gram_and_projections, rows_dot, strided_gram, task_batches)
from merit_jax.core import hessian as hessian_lib
from merit_jax.core import split as split_lib
from merit_jax.core import tree as tree_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Finished pipeline workdir to analyse.")
_K = flags.DEFINE_integer("k", 10, "Number of top Hessian eigenvectors.")
_ITERATIONS = flags.DEFINE_integer("lanczos_iterations", None, "Lanczos iterations m; default max(3k, 40).")
_EXAMPLES = flags.DEFINE_integer("examples_per_task", 16, "Calibration examples per task for gradients and the Hessian "
                                 "(the published protocol uses 50, about 3 times slower).")
_CONFLICT_DIMS = flags.DEFINE_integer("conflict_dims", 3, "Conflict directions r_p taken from the 4 selected tasks.")
_PROBE = flags.DEFINE_enum("hessian_probe", "selected", ["selected", "mixture"],
                           "Hessian data: the selected tasks' examples (as published) or a probe of every task.")
_MIXTURE_EXAMPLES = flags.DEFINE_integer("mixture_examples_per_task", 5, "Examples per task of the mixture probe.")
_HVP_MODE = flags.DEFINE_enum("hvp_mode", "auto", ["auto", *hessian_lib.HVP_MODES], "Hessian-vector product mode.")
_NULL_DRAWS = flags.DEFINE_integer("null_draws", 1000, "Draws of each sampled null (span, groupings, random tasks).")
_UNIFORM_DRAWS = flags.DEFINE_integer("uniform_draws", 10000, "Draws of the exact uniform-random-frame null.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 10, "Resamples of the selected tasks' examples (Hessian kept fixed).")
_GAIN_TEST = flags.DEFINE_boolean("gain_test", False, "Also compute M = GHGᵀ (one HVP per task) and the merge-gain "
                                  "percentile of each MERIT split among random balanced splits.")
_GAIN_SPLITS = flags.DEFINE_integer("gain_splits", 1000, "Random balanced splits in the merge-gain percentile test.")
_INCLUDE = flags.DEFINE_list("hessian_include", [], "Regexes on parameter paths (re.search) that restrict the Hessian "
                             "and the directions to part of the trainable parameters; empty: all of them.")
_HOST_BASIS = flags.DEFINE_boolean("lanczos_basis_on_host", False, "Keep the Lanczos basis in host memory and "
                                   "reorthogonalize it in chunks, for bases that do not fit on the device.")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed of the Lanczos start vector and every null.")
_REPLOT = flags.DEFINE_boolean("replot", False, "Redraw the figures from alignment.json without recomputing.")
flags.mark_flag_as_required("workdir")

PURPOSES = {"lanczos_start": 1, "uniform_null": 2, "span_null": 3, "random_tasks_null": 4,
            "grouping_null": 5, "bootstrap": 6, "gain_null": 7, "kmeans": 8}
VARIANTS = {"raw": False, "centered": True}
QUADRANTS = ((1, 1), (1, -1), (-1, 1), (-1, -1))


def select_tasks(cosine: np.ndarray, split_scores: np.ndarray) -> tuple[list[int], dict]:
    """Pick, in each PC1/PC2 sign quadrant of the double-centered embedding, the task farthest from 0."""
    eigenvalues, eigenvectors = projection.double_centered_axes(cosine, 2)
    eigenvectors, _ = projection.match_signs(eigenvectors, eigenvalues, split_scores)
    scores = eigenvectors * np.sqrt(eigenvalues)
    radius = np.linalg.norm(scores, axis=1)
    chosen, notes = [], []
    for signs in QUADRANTS:
        members = [t for t in range(len(radius)) if tuple(np.sign(scores[t])) == signs and t not in chosen]
        if not members:
            members = [t for t in range(len(radius)) if t not in chosen]
            notes.append(f"quadrant {signs} is empty; took the farthest remaining task")
        chosen.append(max(members, key=lambda t: radius[t]))
    return chosen, {"scores": scores[chosen], "notes": notes}


def _seed_of(key) -> int:
    return int(np.asarray(jax.random.key_data(key))[-1] % (2**31 - 1))


def parameter_subset(ctx):
    """Return the predicate of the parameters the Hessian acts on: trainable, and matching --hessian_include."""
    if not _INCLUDE.value:
        return ctx.trainable
    included = tree_lib.path_filter(tuple(_INCLUDE.value), ())
    return lambda path: ctx.trainable(path) and included(path)


def run_lanczos(ctx, theta0, probe_batches, keys, subset) -> tuple:
    operator = hessian_lib.make_hvp_operator(ctx.loss_fn, theta0, probe_batches, trainable=subset, mode=_HVP_MODE.value)
    iterations = _ITERATIONS.value or max(3 * _K.value, 40)
    iterations = min(iterations, operator.size)
    result = hessian_lib.lanczos(operator.matvec, operator.size, num_iterations=iterations, k=_K.value,
                                 seed=_seed_of(keys["lanczos_start"]), basis_on_host=_HOST_BASIS.value,
                                 progress=True)
    report = {name: getattr(result, name) for name in (
        "eigenvalues", "smallest_eigenvalue", "ritz_values", "residuals", "residual_estimates", "gaps", "angle_bounds",
        "converged", "orthogonality_loss", "ritz_history", "alphas", "betas", "num_iterations", "num_matvecs", "wall_time_s")}
    report.update(hvp_mode=operator.mode, fallback_reason=operator.fallback_reason, size=operator.size,
                  start_vector_seed=_seed_of(keys["lanczos_start"]), requested_iterations=iterations)
    return operator, np.asarray(result.eigenvectors, dtype=np.float64), report


def curvature_matrix(operator, gradients: np.ndarray) -> np.ndarray:
    """Compute M = G H Gᵀ (T, T) from T Hessian-vector products, symmetrized."""
    matrix = np.zeros((gradients.shape[0],) * 2)
    for t in tqdm(range(gradients.shape[0]), desc="HVPs of task gradients", unit="hvp"):
        product = np.asarray(operator.matvec(jnp.asarray(gradients[t])), dtype=np.float64)
        matrix[:, t] = rows_dot(gradients, product)
    return 0.5 * (matrix + matrix.T)


def rayleigh_quotients(operator, gradients, curvature):
    """Return a function from coefficients (r, T) of unit directions p = Gᵀc to pᵀHp (r,), from M or by HVPs."""

    def quotients(coefficients):
        if curvature is not None:
            return np.einsum("it,ts,is->i", coefficients, curvature, coefficients)
        values = []
        for row in coefficients:
            direction = combine_rows(row, gradients).astype(np.float32)
            values.append(float(rows_dot(direction[None], np.asarray(operator.matvec(jnp.asarray(direction)), np.float64))[0]))
        return np.array(values)

    return quotients


def observed_directions(gram, projections, quotients, selected, top_eigenvalue) -> dict:
    """Compute the metrics and Rayleigh quotients pᵀHp / θ_1 of the raw and centered conflict directions."""
    observed = {}
    for variant, centered in VARIANTS.items():
        coefficients = nulls.conflict_coefficients(gram, selected, _CONFLICT_DIMS.value, centered)
        orthonormal = nulls.orthonormal_coefficients(coefficients, gram)
        metrics = nulls.metrics_from_cosines(orthonormal @ projections)
        rayleigh = quotients(orthonormal)
        observed[variant] = {**metrics, "coefficients": orthonormal, "rayleigh": rayleigh,
                             "rayleigh_over_top_eigenvalue": rayleigh / top_eigenvalue}
    return observed


def _sample(draws: int, metric_of) -> dict:
    """Collect the scalar metrics of `draws` null draws, where metric_of(draw) returns a metrics dict."""
    values = [metric_of(draw) for draw in range(draws)]
    return {name: np.array([v[name] for v in values]) for name in nulls.SCALAR_METRICS}


def null_distributions(ctx, gram, projections, selected, keys, size) -> dict:
    """Sample every null. Single-direction nulls are compared on per-direction metrics only."""
    r, k, T = _CONFLICT_DIMS.value, projections.shape[1], gram.shape[0]
    span_rng = common.numpy_rng(keys["span_null"])
    tasks_rng = common.numpy_rng(keys["random_tasks_null"])
    distributions = {
        "uniform_random_frame": nulls.uniform_null(common.numpy_rng(keys["uniform_null"]), size, k, r, _UNIFORM_DRAWS.value),
        "random_frame_in_gradient_span": _sample(_NULL_DRAWS.value, lambda _: nulls.alignment_metrics(
            nulls.span_coefficients(span_rng, gram, r), gram, projections)),
        "single_task_gradient": _sample(T, lambda t: nulls.alignment_metrics(np.eye(T)[t:t + 1], gram, projections)),
    }
    random_tasks = [list(tasks_rng.choice(T, size=len(selected), replace=False)) for _ in range(_NULL_DRAWS.value)]
    for variant, centered in VARIANTS.items():
        distributions[f"random_{len(selected)}_tasks_{variant}"] = _sample(_NULL_DRAWS.value, lambda d: nulls.alignment_metrics(
            nulls.conflict_coefficients(gram, random_tasks[d], r, centered), gram, projections))
    return distributions


def grouping_test(ctx, gram, projections, names, tokens, split_weights, key) -> dict:
    """Test the MERIT-1D group-difference direction ḡ_A − ḡ_B against random balanced 2-group splits."""
    groups = [[names.index(t) for t in group["tasks"]] for group in common.branch_runs(ctx, _one_dim_model(ctx))]

    def metrics_of(partition):
        means, _ = nulls.group_mean_coefficients(partition, tokens)
        return nulls.alignment_metrics(means[:1] - means[1:], gram, projections)

    observed = metrics_of(groups)
    samples = _sample(_NULL_DRAWS.value, lambda d: metrics_of(
        split_lib.random_split(jax.random.fold_in(key, d), split_weights, 1).groups))
    return {"observed": observed, "samples": samples}


def _one_dim_model(ctx) -> str:
    splits = common.read_groups(ctx)
    one = [model for model, info in splits.items() if info["kind"] == "pca" and info["dims"] == 1]
    if not one:
        raise ValueError("split/groups.json has no 1-D MERIT split; the grouping null needs one (config.split.dims)")
    return one[0]


def summarize(observed_metrics: dict, samples: dict) -> dict:
    return {name: nulls.null_summary(observed_metrics[name], samples[name], larger_is_aligned=name != "leading_angle_deg")
            for name in nulls.SCALAR_METRICS if name in samples}


def bootstrap_directions(ctx, theta0, operator, subset, eigenvectors, selected, names, key) -> dict:
    """Bootstrap percentile CIs of the observed metrics over calibration examples (Hessian fixed)."""
    rng = common.numpy_rng(key)
    chosen = [names[t] for t in selected]
    samples = {variant: [] for variant in VARIANTS}
    for _ in tqdm(range(_BOOTSTRAP.value), desc="bootstrap", unit="resample"):
        gradients = full_gradients(ctx, theta0, chosen, _EXAMPLES.value, operator.flatten, subset=subset, resample_rng=rng,
                                   description="resampled gradients")
        gram, projections = gram_and_projections(gradients, eigenvectors)
        for variant, centered in VARIANTS.items():
            coefficients = nulls.conflict_coefficients(gram, list(range(len(chosen))), _CONFLICT_DIMS.value, centered)
            samples[variant].append(nulls.alignment_metrics(coefficients, gram, projections))
    return {variant: {name: {"ci95": np.percentile([m[name] for m in values], [2.5, 97.5]) if values else None,
                             "sd": float(np.std([m[name] for m in values], ddof=1)) if len(values) > 1 else None}
                      for name in nulls.SCALAR_METRICS}
            for variant, values in samples.items()}


def gain_test(ctx, curvature, names, tokens, split_weights, cosine, key) -> dict:
    """Compare the merge-gain quadratic form of each MERIT split with random balanced splits and K-means."""
    coordinates, _ = embedding.exact_coordinates(cosine)
    results = {}
    for model, info in common.read_groups(ctx).items():
        if info["kind"] != "pca":
            continue
        dims = info["dims"]
        groups = [[names.index(t) for t in group["tasks"]] for group in info["groups"]]
        random_gains = np.array([
            nulls.split_gain(curvature, split_lib.random_split(jax.random.fold_in(key, 100_000 * dims + d), split_weights, dims).groups, tokens)
            for d in tqdm(range(_GAIN_SPLITS.value), desc=f"random splits ({model})", leave=False)])
        labels = KMeans(n_clusters=2**dims, n_init=10, random_state=_SEED.value).fit_predict(coordinates)
        kmeans_groups = [list(np.flatnonzero(labels == c)) for c in range(2**dims)]
        observed = nulls.split_gain(curvature, groups, tokens)
        kmeans = nulls.split_gain(curvature, kmeans_groups, tokens)
        results[model] = {
            "groups": len(groups), "observed": observed, "random_gains": random_gains, "kmeans": kmeans,
            "pca_vs_random": nulls.null_summary(observed, random_gains) if random_gains.size else None,
            "kmeans_percentile": float(100 * np.mean(random_gains < kmeans)) if random_gains.size else None,
        }
    return {"definition": "Σ_k w_k (ḡ_k − ḡ_w)ᵀ H (ḡ_k − ḡ_w) with token-weighted group means (η²/2 dropped)",
            "kmeans": "exact cosine embedding QΛ^(1/2), k-means++, 10 restarts", "splits": results}


def compute(ctx) -> dict:
    keys, key_record = common.purpose_keys(_SEED.value, PURPOSES)
    inputs = common.conflict_inputs(ctx)
    names, cosine, tokens = inputs["names"], inputs["cosine"], inputs["tokens"]
    split_weights = inputs["samples"] if inputs["split_weight"] == "samples" else tokens
    selected, selection = select_tasks(cosine, inputs["scores"])
    logging.info("selected tasks: %s", [names[t] for t in selected])

    theta0 = ctx.theta0()
    if _PROBE.value == "selected":
        probe_batches = task_batches(ctx, [names[t] for t in selected], _EXAMPLES.value)
    else:
        probe_batches = task_batches(ctx, names, _MIXTURE_EXAMPLES.value)
    subset = parameter_subset(ctx)
    operator, eigenvectors, lanczos_report = run_lanczos(ctx, theta0, probe_batches, keys, subset)
    eigenvector_gram = eigenvectors @ eigenvectors.T
    top = float(lanczos_report["eigenvalues"][0])

    gradients = full_gradients(ctx, theta0, names, _EXAMPLES.value, operator.flatten, subset=subset)
    gram, projections = gram_and_projections(gradients, eigenvectors)
    stride = ctx.config.gradients.stride
    strided = strided_gram(gradients, stride)
    stride_cosine = strided / np.sqrt(np.outer(np.diag(strided), np.diag(strided)))
    curvature = curvature_matrix(operator, gradients) if _GAIN_TEST.value else None
    observed = observed_directions(gram, projections, rayleigh_quotients(operator, gradients, curvature), selected, top)
    del gradients

    distributions = null_distributions(ctx, gram, projections, selected, keys, operator.size)
    grouping = grouping_test(ctx, gram, projections, names, tokens, split_weights, keys["grouping_null"])
    comparisons = {}
    for variant in VARIANTS:
        comparisons[variant] = {
            null: summarize(observed[variant], distributions[null])
            for null in ("uniform_random_frame", "random_frame_in_gradient_span", f"random_{len(selected)}_tasks_{variant}")
        }
        # A single task gradient is one direction: compare per-direction quantities only.
        comparisons[variant]["single_task_gradient"] = {
            "mean_top1_abs_cos": nulls.null_summary(observed[variant]["mean_top1_abs_cos"],
                                                    distributions["single_task_gradient"]["mean_top1_abs_cos"]),
            "subspace_energy": nulls.null_summary(observed[variant]["subspace_energy"],
                                                  distributions["single_task_gradient"]["subspace_energy"]),
        }
    bootstrap = bootstrap_directions(ctx, theta0, operator, subset, eigenvectors, selected, names, keys["bootstrap"])
    gain = gain_test(ctx, curvature, names, tokens, split_weights, cosine, keys["gain_null"]) if _GAIN_TEST.value else None

    return {
        "settings": {"k": _K.value, "examples_per_task": _EXAMPLES.value, "conflict_dims": _CONFLICT_DIMS.value,
                     "hessian_probe": _PROBE.value, "mixture_examples_per_task": _MIXTURE_EXAMPLES.value,
                     "null_draws": _NULL_DRAWS.value, "uniform_draws": _UNIFORM_DRAWS.value,
                     "bootstrap": _BOOTSTRAP.value, "gain_test": _GAIN_TEST.value, "gain_splits": _GAIN_SPLITS.value,
                     "coordinates": "full (non-strided) flat trainable parameters, canonical leaf order",
                     "hessian_include": list(_INCLUDE.value), "lanczos_basis_on_host": _HOST_BASIS.value},
        "tasks": names,
        "selected_tasks": [names[t] for t in selected], "selection": selection,
        "hessian_probe_examples": int(sum(float(b["attention_mask"].any(axis=1).sum()) for b in probe_batches)),
        "lanczos": lanczos_report, "hvp_mode": operator.mode, "fallback_reason": operator.fallback_reason,
        "parameters": operator.size,
        "eigenvector_orthogonality_error": float(np.max(np.abs(eigenvector_gram - np.eye(len(eigenvector_gram))))),
        "stride_fidelity": {**cosine_agreement(gram, stride_cosine), "stride": stride,
                            "compared": "full vs strided cosines of the same full gradients"},
        "stored_cosine_agreement": {**cosine_agreement(gram, cosine),
                                    "note": "stored cosines use all calibration examples, these examples_per_task of them, "
                                            "so sampling noise dominates the difference"},
        "observed": observed, "comparisons": comparisons,
        "uniform_tails": {variant: nulls.uniform_tails(operator.size, _K.value, observed[variant]["max_abs_cos"],
                                                       observed[variant]["energy_per_direction"]) for variant in VARIANTS},
        "null_samples": distributions,
        "grouping": {"observed": grouping["observed"], "samples": grouping["samples"],
                     "comparison": summarize(grouping["observed"], grouping["samples"])},
        "bootstrap": bootstrap, "gain": gain,
        "task_rayleigh_over_top_eigenvalue": None if curvature is None else np.diag(curvature) / np.diag(gram) / top,
        "provenance": common.provenance(ctx, keys=key_record, checkpoints={"base": common.checkpoint_id(ctx, "base")}),
    }


def main():
    outputs = common.Outputs(_WORKDIR.value, "hessian_alignment")
    if _REPLOT.value:
        results = outputs.read_json("alignment.json")
    else:
        started = time.perf_counter()
        ctx = common.open_workdir(_WORKDIR.value)
        results = compute(ctx)
        results["wall_seconds"] = time.perf_counter() - started
        outputs.write_json("alignment.json", results)
        outputs.write_json("lanczos.json", {**results["lanczos"], "provenance": results["provenance"]})
    alignment_plots.plot_all(outputs, results)
    outputs.report()


if __name__ == "__main__":
    common.run(main)
