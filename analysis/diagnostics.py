"""Merge-readiness diagnostics: displacement from θ0 and loss under Gaussian weight perturbations.

    python -m analysis.diagnostics --workdir=DIR [--split_model=merit-2d --sigmas=0,0.003,0.01,0.03,0.05,0.1 --draws=5]

Writes DIR/figures/diagnostics/: diagnostics.json (displacements, per-layer norms, the
parallel-axis identity per merged model, the epoch series of joint vs merged with training-probe
losses), displacement.csv/png/pdf, perturbation.json and perturbation.png/pdf (Figure-4-style:
loss vs σ, ΔL vs σ, flatness AUC). Norms and noise cover the trainable parameters only.
"""

import time

import jax
import numpy as np
from absl import flags, logging
from tqdm.auto import tqdm

from analysis import common, flatness, probes
from analysis import diagnostics_plots
from merit_jax.core import tree as tree_lib
from merit_jax.pipeline.prepare import read_groups

_WORKDIR = flags.DEFINE_string("workdir", None, "Finished pipeline workdir to analyse.")
_SPLIT_MODEL = flags.DEFINE_string("split_model", None, "Merged model compared with the joint runs; default merit-2d.")
_PERTURB_MODELS = flags.DEFINE_list("perturb_models", None, "Models to perturb; default the joint runs and --split_model.")
_SIGMAS = flags.DEFINE_list("sigmas", ["0", "0.003", "0.01", "0.03", "0.05", "0.1"], "Noise scales σ (0 is always added).")
_DRAWS = flags.DEFINE_integer("draws", 5, "Noise draws per σ, shared by all models.")
_ABSOLUTE = flags.DEFINE_boolean("absolute_sigma", False, "Use absolute σ instead of σ × RMS of each tensor.")
_EXAMPLES = flags.DEFINE_integer("examples_per_task", 8, "Held-out examples per task in the perturbation probe.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples_per_task", 8, "Training examples per task in the training-loss probe.")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed of the noise draws.")
_REPLOT = flags.DEFINE_boolean("replot", False, "Redraw the figures from the JSON files without recomputing.")
flags.mark_flag_as_required("workdir")

PURPOSES = {"perturbation_noise": 1}


def _merged_models(ctx) -> list[str]:
    return [model for model in read_groups(ctx) if (ctx.workdir / "merged" / model / "params").exists()]


def _joint_runs(ctx) -> list[str]:
    return sorted(path.name for path in (ctx.workdir / "runs").glob("joint-*") if (path / "params").exists())


def displacements(ctx, theta0: dict) -> dict:
    """Compute ‖θ − θ0‖ and per-layer norms of every joint run, merge and branch, and the parallel-axis checks."""
    rows, identities = [], {}
    for name in tqdm(_joint_runs(ctx) + _merged_models(ctx), desc="displacements", unit="model"):
        delta = flatness.displacement(common.trainable_part(ctx, common.load_params(ctx, name)), theta0)
        squares = flatness.squared_norms(delta)
        rows.append({"model": name, "kind": "joint" if name.startswith("joint-") else "merged",
                     "norm": float(np.sqrt(sum(squares.values()))), "layers": flatness.by_layer(squares)})
        if name.startswith("joint-"):
            continue

        weights = common.read_json(ctx.workdir / "merged" / name / "weights.json")
        branch_deltas = []
        for run in weights["branches"]:
            branch = flatness.displacement(common.trainable_part(ctx, common.load_params(ctx, run)), theta0)
            branch_squares = flatness.squared_norms(branch)
            rows.append({"model": run, "kind": f"branch of {name}", "norm": float(np.sqrt(sum(branch_squares.values()))),
                         "layers": flatness.by_layer(branch_squares)})
            branch_deltas.append(branch)
        exact = flatness.weighted_average(branch_deltas, weights["weights"])
        identities[name] = {
            "stored_merged_checkpoint": flatness.parallel_axis(branch_deltas, weights["weights"], delta),
            "float64_weighted_sum": flatness.parallel_axis(branch_deltas, weights["weights"], exact),
            "weights": weights["weights"], "branches": weights["branches"],
        }
        del branch_deltas, exact
    return {"rows": rows, "parallel_axis": identities}


def _merged_snapshots(ctx, model: str) -> list[tuple[float, list[float], dict]]:
    """Merge the branch snapshots with the merge weights at each common snapshot index.

    Returns (mean epochs, per-branch epochs, Σ_k w_k θ_k) per index, or nothing when the branches
    kept different numbers of snapshots.
    """
    weights = common.read_json(ctx.workdir / "merged" / model / "weights.json")
    steps = [common.snapshot_steps(ctx, run) for run in weights["branches"]]
    counts = {len(s) for s in steps}
    if len(counts) != 1 or not steps[0]:
        return []
    merged = []
    for index in range(counts.pop()):
        trees = [common.load_snapshot(ctx, run, s[index]) for run, s in zip(weights["branches"], steps)]
        epochs = [s[index] / common.run_info(ctx, run)["steps_per_epoch"] for run, s in zip(weights["branches"], steps)]
        average = jax.tree.map(lambda *leaves: np.float32(sum(w * np.asarray(x, np.float64) for w, x in zip(weights["weights"], leaves))), *trees)
        merged.append((float(np.mean(epochs)), epochs, average))
    return merged


def epoch_series(ctx, split_model: str, theta0: dict, frozen: dict, probe, score) -> list[dict]:
    """Measure displacement and training-probe loss of the joint runs and the merge over epochs (Table 1 layout)."""
    points = []

    def add(series, epochs, trainable, source):
        delta = flatness.displacement(trainable, theta0)
        norm = float(np.sqrt(sum(flatness.squared_norms(delta).values())))
        losses = probes.score_probe(probe, score, tree_lib.combine(trainable, frozen))
        points.append({"series": series, "epochs": epochs, "norm": norm, "source": source,
                       "train_probe_loss": float(probes.token_weighted(losses, probe.token_counts))})

    for run in _joint_runs(ctx):
        info = common.run_info(ctx, run)
        for step in common.snapshot_steps(ctx, run):
            add(run, step / info["steps_per_epoch"], common.load_snapshot(ctx, run, step), f"snapshot {step}")
        add(run, float(run.split("-")[1].removesuffix("ep")), common.trainable_part(ctx, common.load_params(ctx, run)), "final")
    for epochs, branch_epochs, trainable in _merged_snapshots(ctx, split_model):
        add(split_model, epochs, trainable, f"Σ w_k (branch snapshots at epochs {np.round(branch_epochs, 3).tolist()})")
    add(split_model, 1.0, common.trainable_part(ctx, common.load_params(ctx, split_model)), "merged checkpoint")
    add("base", 0.0, theta0, "θ0")
    return points


def perturbation(ctx, models: list[str], sigmas: list[float], draws: int, relative: bool, key, probe, score) -> dict:
    """Score θ + σ·s_W·ξ for every model, σ and draw, with the same ξ for every model."""
    perturb = jax.jit(flatness.perturb, static_argnums=3)
    results = {}
    for model in models:
        params = common.load_params(ctx, model)
        trainable, frozen = tree_lib.partition(params, ctx.trainable)
        clean = probes.token_weighted(probes.score_probe(probe, score, params), probe.token_counts)
        losses = np.full((len(sigmas), draws), clean)
        jobs = [(i, d) for i, sigma in enumerate(sigmas) if sigma > 0 for d in range(draws)]
        for i, draw in tqdm(jobs, desc=f"perturbing {model}", unit="eval"):
            noisy = perturb(trainable, jax.random.fold_in(key, draw), np.float32(sigmas[i]), relative)
            sums = probes.score_probe(probe, score, tree_lib.combine(noisy, frozen))
            losses[i, draw] = probes.token_weighted(sums, probe.token_counts)
        delta = losses - clean
        mean_delta = delta.mean(axis=1)
        results[model] = {
            "clean_loss": float(clean), "losses": losses, "delta": delta,
            "mean_loss": losses.mean(axis=1), "mean_delta": mean_delta,
            "se_delta": delta.std(axis=1, ddof=1) / np.sqrt(draws) if draws > 1 else np.zeros(len(sigmas)),
            "auc": flatness.trapezoid_auc(sigmas, mean_delta),
            "auc_over_max_sigma": flatness.trapezoid_auc(sigmas, mean_delta) / max(sigmas),
            "checkpoint": common.checkpoint_id(ctx, model),
        }
        logging.info("%s: clean loss %.4f, flatness AUC %.4g", model, clean, results[model]["auc"])

    paired = {}
    for first in models:
        for second in models:
            if first < second:
                difference = results[first]["delta"] - results[second]["delta"]
                paired[f"{first} − {second}"] = {
                    "mean": difference.mean(axis=1),
                    "se": difference.std(axis=1, ddof=1) / np.sqrt(draws) if draws > 1 else np.zeros(len(sigmas)),
                }
    return {"models": results, "paired_delta_differences": paired}


def compute(ctx, split_model: str) -> tuple[dict, dict]:
    theta0_full = ctx.theta0()
    theta0, frozen = tree_lib.partition(theta0_full, ctx.trainable)
    train_probe = probes.build_probe(ctx, "train", _TRAIN_EXAMPLES.value)
    score = jax.jit(probes.per_example_loss(ctx.loss_fn, train_probe.per_row))

    displacement = displacements(ctx, theta0)
    displacement["epoch_series"] = epoch_series(ctx, split_model, theta0, frozen, train_probe, score)
    displacement["train_probe"] = train_probe.describe()
    displacement["split_model"] = split_model
    if not any(point["source"].startswith("snapshot") for point in displacement["epoch_series"]):
        displacement["notes"] = ["runs have no snapshots (older workdir or train.snapshots = 0): only final checkpoints"]

    sigmas = sorted({0.0, *(float(s) for s in _SIGMAS.value)})
    models = _PERTURB_MODELS.value or _joint_runs(ctx) + [split_model]
    keys, key_record = common.purpose_keys(_SEED.value, PURPOSES)
    probe = probes.build_probe(ctx, "heldout", _EXAMPLES.value)
    perturbed = perturbation(ctx, models, sigmas, _DRAWS.value, not _ABSOLUTE.value, keys["perturbation_noise"], probe, score)
    perturbed.update({
        "sigmas": sigmas, "draws": _DRAWS.value,
        "noise": "relative: ε = σ·RMS(W)·ξ per tensor" if not _ABSOLUTE.value else "absolute: ε = σ·ξ",
        "perturbed_parameters": "trainable subset", "probe": probe.describe(),
        "uncertainty": "SE over noise draws (the probe is fixed, so it holds no example-sampling noise)",
        "provenance": common.provenance(ctx, keys=key_record,
                                        checkpoints={m: common.checkpoint_id(ctx, m) for m in models}),
    })
    return displacement, perturbed


def main():
    outputs = common.Outputs(_WORKDIR.value, "diagnostics")
    if _REPLOT.value:
        displacement = outputs.read_json("diagnostics.json")
        perturbed = outputs.read_json("perturbation.json")
    else:
        started = time.perf_counter()
        ctx = common.open_workdir(_WORKDIR.value)
        split_model = _SPLIT_MODEL.value or common.default_split_model(ctx)
        displacement, perturbed = compute(ctx, split_model)
        names = [row["model"] for row in displacement["rows"]]
        displacement["provenance"] = common.provenance(ctx, checkpoints={n: common.checkpoint_id(ctx, n) for n in names})
        displacement["wall_seconds"] = perturbed["wall_seconds"] = time.perf_counter() - started
        outputs.write_json("diagnostics.json", displacement)
        outputs.write_json("perturbation.json", perturbed)
        diagnostics_plots.write_displacement_csv(outputs, displacement)
    diagnostics_plots.plot_displacement(outputs, displacement)
    diagnostics_plots.plot_perturbation(outputs, perturbed)
    outputs.report()


if __name__ == "__main__":
    common.run(main)
