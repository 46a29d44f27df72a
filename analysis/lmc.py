"""Linear mode connectivity of a MERIT model's branches and its merge, plus the simplex check.

    python -m analysis.lmc --workdir=DIR [--split_model=merit-2d --num_alphas=21 --refine_steps=4]

Every path θ_α = (1 − α)θ_a + αθ_b (all branch pairs and branch → merged) is scored on one fixed
probe of held-out examples with α a traced argument of one jitted loss. The script writes
DIR/figures/lmc/lmc.json (per path: α, L, chord, B_lin, B_mid, dip, argmax, argmin, bootstrap SE
and CI, zero flag) and lmc_summary.csv (the layout of MERIT's Table 5, Choi and Kim 2026). It also
writes lmc_curves.png/pdf and simplex.json (L(θ̄_w) against Σ_k w_k L(θ_k), and the same
comparison at random Dirichlet weights).
"""

import dataclasses
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from analysis import common, lmc_plots, probes
from merit_jax.core import lmc as lmc_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Finished pipeline workdir to analyse.")
_SPLIT_MODEL = flags.DEFINE_string("split_model", None, "MERIT model whose branches to connect; default merit-2d.")
_NUM_ALPHAS = flags.DEFINE_integer("num_alphas", 21, "Evenly spaced α values on [0, 1], both endpoints included.")
_REFINE_STEPS = flags.DEFINE_integer("refine_steps", 4, "Golden-section evaluations near the argmax of L − chord.")
_EXAMPLES = flags.DEFINE_integer("examples_per_task", 4, "Held-out examples per task in the probe (stratified).")
_PROBE_PART = flags.DEFINE_enum("probe_part", "heldout", ["heldout", "train"], "Split part the probe is drawn from.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the probe examples.")
_ZERO_TOL = flags.DEFINE_float("zero_tolerance", 0.005, "Absolute tolerance (nats per token) of the zero-barrier rule.")
_DIRICHLET = flags.DEFINE_integer("dirichlet", 64, "Random Dirichlet(1, …, 1) weightings in the simplex check.")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed of the bootstrap and the Dirichlet draws.")
_REPLOT = flags.DEFINE_boolean("replot", False, "Redraw the figures from lmc.json without recomputing.")
flags.mark_flag_as_required("workdir")

PURPOSES = {"bootstrap": 1, "dirichlet": 2}
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def _path_curve(score, probe, params_a, params_b, num_alphas: int, refine_steps: int, label: str) -> dict:
    """Score the α grid, then refine by golden-section search near the argmax of L − chord.

    Returns α (A,), per-example loss sums (A, N) and which points came from the refinement.
    """
    alphas = list(np.linspace(0.0, 1.0, num_alphas))
    sums = [probes.score_probe(probe, score, params_a, params_b, np.float32(a)) for a in tqdm(alphas, desc=label, leave=False)]
    losses = [probes.token_weighted(s, probe.token_counts) for s in sums]

    def excess(alpha, loss):
        return loss - ((1.0 - alpha) * losses[0] + alpha * losses[-1])

    def evaluate(alpha):
        sums.append(probes.score_probe(probe, score, params_a, params_b, np.float32(alpha)))
        alphas.append(alpha)
        losses.append(probes.token_weighted(sums[-1], probe.token_counts))
        return excess(alpha, losses[-1])

    if refine_steps > 0 and num_alphas > 2:
        grid_excess = [excess(a, l) for a, l in zip(alphas[1:-1], losses[1:-1])]
        best = 1 + int(np.argmax(grid_excess))
        low, high = alphas[best - 1], alphas[best + 1]
        inner_low, inner_high = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
        value_low, value_high = evaluate(inner_low), evaluate(inner_high)
        for _ in range(refine_steps - 2):
            if value_low > value_high:
                high, inner_high, value_high = inner_high, inner_low, value_low
                inner_low = high - GOLDEN * (high - low)
                value_low = evaluate(inner_low)
            else:
                low, inner_low, value_low = inner_low, inner_high, value_high
                inner_high = low + GOLDEN * (high - low)
                value_high = evaluate(inner_high)

    order = np.argsort(alphas, kind="stable")
    return {"alphas": np.asarray(alphas)[order], "loss_sums": np.stack(sums)[order],
            "refined": np.arange(len(alphas))[order] >= num_alphas}


def summarize_path(curve: dict, probe, tolerance: float, bootstrap: int, seed: int) -> dict:
    alphas, sums = curve["alphas"], curve["loss_sums"]
    losses = probes.token_weighted(sums, probe.token_counts)
    summary = lmc_lib.summarize_curve(alphas, losses)
    boot = lmc_lib.bootstrap_barrier(alphas, sums, probe.token_counts, num_resamples=bootstrap, seed=seed)
    return {
        "alphas": alphas, "losses": losses, "chord": lmc_lib.chord(alphas, losses), "refined": curve["refined"],
        **dataclasses.asdict(summary),
        "barrier_se": boot.standard_error, "barrier_ci95": [boot.ci_low, boot.ci_high],
        "bootstrap_seed": seed, "zero_tolerance": tolerance,
        "zero_barrier": lmc_lib.is_zero_barrier(summary.linear_barrier, boot.standard_error, tolerance),
    }


def simplex_check(ctx, probe, names: list[str], weights: np.ndarray, endpoint_sums: np.ndarray, draws: int, rng) -> dict:
    """Compare L(Σ c_k θ_k) with Σ c_k L(θ_k) at the merge weights and at Dirichlet(1, …, 1) draws."""
    stacked = jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(x, jnp.float32) for x in leaves]),
                           *[common.load_params(ctx, name) for name in names])
    per_example = probes.per_example_loss(ctx.loss_fn, probe.per_row)
    score = jax.jit(lambda trees, c, batch: per_example(jax.tree.map(lambda x: jnp.tensordot(c, x, axes=1), trees), batch))
    endpoint_losses = probes.token_weighted(endpoint_sums, probe.token_counts)

    def compare(c):
        merged = probes.token_weighted(probes.score_probe(probe, score, stacked, np.float32(c)), probe.token_counts)
        average = float(np.dot(c, endpoint_losses))
        return {"weights": c, "merged_loss": float(merged), "weighted_endpoint_loss": average, "gain": average - float(merged)}

    at_merge = compare(np.asarray(weights, dtype=np.float64))
    samples = [compare(c) for c in tqdm(rng.dirichlet(np.ones(len(names)), size=draws), desc="simplex", leave=False)]
    gains = np.array([s["gain"] for s in samples])
    return {
        "branches": names, "endpoint_losses": endpoint_losses, "merge_weights": weights,
        "at_merge_weights": at_merge, "dirichlet": samples, "dirichlet_concentration": 1.0,
        "fraction_positive_gain": float(np.mean(gains > 0)) if gains.size else None,
        "mean_gain": float(gains.mean()) if gains.size else None,
        "gain_definition": "Σ_k c_k L(θ_k) − L(Σ_k c_k θ_k); positive means the combination beats its endpoints' average",
    }


def compute(ctx, split_model: str) -> dict:
    keys, key_record = common.purpose_keys(_SEED.value, PURPOSES)
    probe = probes.build_probe(ctx, _PROBE_PART.value, _EXAMPLES.value)
    weights = common.read_json(common.require_file(ctx.workdir / "merged" / split_model / "weights.json",
                                                   f"merge:{split_model}", ctx.workdir))
    branches = list(weights["branches"])
    models = branches + [split_model]
    params = {name: common.load_params(ctx, name) for name in tqdm(models, desc="loading", leave=False)}

    # Endpoint losses computed without interpolation, to check the α = 0 and α = 1 ends of every curve.
    plain = jax.jit(probes.per_example_loss(ctx.loss_fn, probe.per_row))
    endpoint_sums = {name: probes.score_probe(probe, plain, params[name]) for name in models}
    per_example = probes.per_example_loss(ctx.loss_fn, probe.per_row)
    score = jax.jit(lambda a, b, alpha, batch: per_example(lmc_lib.interpolate(a, b, alpha), batch))

    pairs = list(itertools.combinations(branches, 2)) + [(branch, split_model) for branch in branches]
    paths = []
    for index, (first, second) in enumerate(tqdm(pairs, desc="paths", unit="path")):
        curve = _path_curve(score, probe, params[first], params[second], _NUM_ALPHAS.value, _REFINE_STEPS.value,
                            f"{first} → {second}")
        seed = int(np.asarray(jax.random.key_data(jax.random.fold_in(keys["bootstrap"], index)))[-1])
        path = summarize_path(curve, probe, _ZERO_TOL.value, _BOOTSTRAP.value, seed)
        path.update(a=first, b=second, kind="branch pair" if second != split_model else "branch → merged",
                    endpoint_check=_endpoint_check(curve, endpoint_sums[first], endpoint_sums[second], probe))
        paths.append(path)
        logging.info("%s → %s: B_lin %.4g ± %.2g, dip %.4g", first, second, path["linear_barrier"], path["barrier_se"], path["dip"])

    branch_sums = np.stack([endpoint_sums[name] for name in branches])
    simplex = simplex_check(ctx, probe, branches, np.asarray(weights["weights"]), branch_sums, _DIRICHLET.value,
                            common.numpy_rng(keys["dirichlet"]))
    simplex["stored_merged_loss"] = float(probes.token_weighted(endpoint_sums[split_model], probe.token_counts))
    checkpoints = {name: common.checkpoint_id(ctx, name) for name in models}
    return {
        "split_model": split_model, "branches": branches, "merge_weights": weights["weights"],
        "probe": probe.describe(), "paths": paths, "simplex": simplex,
        "settings": {"num_alphas": _NUM_ALPHAS.value, "refine_steps": _REFINE_STEPS.value, "bootstrap": _BOOTSTRAP.value,
                     "bootstrap_resampling": "examples drawn with replacement, the same draw at every α",
                     "zero_rule": "B_lin ≤ max(zero_tolerance, 2·SE)", "zero_tolerance": _ZERO_TOL.value,
                     "loss": "token-weighted cross-entropy, nats per supervised token"},
        "provenance": common.provenance(ctx, checkpoints=checkpoints, keys=key_record),
    }


def _endpoint_check(curve: dict, sums_a: np.ndarray, sums_b: np.ndarray, probe) -> dict:
    """Compare the curve's ends with the endpoint losses scored without interpolation.

    Both differences should be float32 round-off.
    """
    losses = probes.token_weighted(curve["loss_sums"], probe.token_counts)
    separate = [probes.token_weighted(sums_a, probe.token_counts), probes.token_weighted(sums_b, probe.token_counts)]
    return {"separate_losses": separate, "curve_endpoints": [losses[0], losses[-1]],
            "max_abs_difference": float(max(abs(losses[0] - separate[0]), abs(losses[-1] - separate[1])))}


def write_summary_csv(outputs, results: dict) -> None:
    header = ["path", "L(α=0)", "min_α L", "argmin α", "L(α=1)", "barrier B_lin", "barrier SE", "CI low", "CI high",
              "zero", "B_mid", "dip", "dip α", "argmax α"]
    rows = [[f"{p['a']} → {p['b']}", p["loss_a"], p["min_loss"], p["argmin_alpha"], p["loss_b"], p["linear_barrier"],
             p["barrier_se"], *p["barrier_ci95"], p["zero_barrier"], p["midpoint_barrier"], p["dip"], p["dip_alpha"],
             p["argmax_alpha"]] for p in results["paths"]]
    outputs.write_csv("lmc_summary.csv", header, rows)


def main():
    if _NUM_ALPHAS.value < 3:
        raise app.UsageError("--num_alphas must be at least 3")
    outputs = common.Outputs(_WORKDIR.value, "lmc")
    if _REPLOT.value:
        results = outputs.read_json("lmc.json")
        results["simplex"] = outputs.read_json("simplex.json")
    else:
        started = time.perf_counter()
        ctx = common.open_workdir(_WORKDIR.value)
        results = compute(ctx, _SPLIT_MODEL.value or common.default_split_model(ctx))
        results["wall_seconds"] = time.perf_counter() - started
        outputs.write_json("lmc.json", {key: value for key, value in results.items() if key != "simplex"})
        outputs.write_json("simplex.json", {**results["simplex"], "provenance": results["provenance"]})
        write_summary_csv(outputs, results)
    lmc_plots.plot_curves(outputs, results)
    outputs.report()


if __name__ == "__main__":
    common.run(main)
