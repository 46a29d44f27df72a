"""Plain-SGD learning-rate sweep of Joint (1 ep), Joint (2 ep) and MERIT-1D/2D/3D from θ0.

    python -m analysis.lr_sweep --workdir=DIR [--etas=0.03,0.1,0.3,1 --seeds=1 --train_examples_per_task=8]

Every run starts from θ0 with SGD (no momentum, no weight decay), a linear warm-up over 3% of its
steps and then a constant learning rate η. MERIT runs use the workdir's own split groups and merge
the branches with their token budgets. Runs live in DIR/figures/lr_sweep/runs/<settings hash>/ and
finished ones are reused. Writes lr_sweep.csv (method, η, seed, per-family and average scores,
loss, diverged), lr_sweep.json (sensitivity, stable ranges, merge-gain slopes) and lr_sweep.png/pdf.
"""

import collections
import json
import math
import time

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from analysis import common, lr_sweep_plots, sweep_eval
from analysis import sweep_metrics as metrics
from merit_jax.core import merge as merge_lib
from merit_jax.core import tree as tree_lib
from merit_jax.pipeline.context import supervised_tokens
from merit_jax.pipeline.prepare import read_groups, task_table
from merit_jax.pipeline.workdir import config_hash, write_json_atomic
from merit_jax.training.trainer import Trainer

_WORKDIR = flags.DEFINE_string("workdir", None, "Finished pipeline workdir to analyse.")
_ETAS = flags.DEFINE_list("etas", ["0.03", "0.1", "0.3", "1"], "SGD learning rates η.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Data-order seeds per (method, η).")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples_per_task", 8, "Training examples per task (a subsample, for budget).")
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples_per_task", 4, "Held-out examples per task for the loss.")
_EXACT_MATCH_EXAMPLES = flags.DEFINE_integer("exact_match_examples_per_task", 2,
                                             "Held-out examples per task decoded for exact match (0: skip, the slow part).")
_CLIP = flags.DEFINE_float("clip_norm", 0.0, "Global gradient-norm clipping (0: none, as plain SGD).")
_WARMUP = flags.DEFINE_float("warmup_fraction", 0.03, "Linear warm-up fraction of each run's steps.")
_SCORE_TOLERANCE = flags.DEFINE_float("score_tolerance", 1.0, "Stable range: exact match within this many points of the best.")
_LOSS_TOLERANCE = flags.DEFINE_float("loss_tolerance", 0.01, "Stable range: loss within this many nats of the best.")
_REPLOT = flags.DEFINE_boolean("replot", False, "Redraw the figure from lr_sweep.json without recomputing.")
flags.mark_flag_as_required("workdir")


def sgd_config(ctx) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(ctx.config.train.to_dict())
    config.optimizer = "sgd"
    config.decay = "constant"
    config.warmup_fraction = _WARMUP.value
    # NOTE: make_optimizer builds an empty optax.chain for SGD without clipping, which optax
    # rejects, so "no clipping" is an infinite clipping norm (clip_by_global_norm never scales).
    config.clip_norm = _CLIP.value if _CLIP.value > 0 else math.inf
    config.weight_decay = 0.0
    config.snapshots = 0
    # Sweep runs are short, so a killed sweep restarts the unfinished run instead of resuming it.
    config.checkpoint_every = 10**9
    return config


def plan_methods(ctx) -> dict:
    """Map each method to its runs (run name, tasks, epochs); MERIT methods list their branches."""
    splits = read_groups(ctx)
    methods = {"joint-1ep": [("joint-1ep", tuple(ctx.task_names), 1)], "joint-2ep": [("joint-2ep", tuple(ctx.task_names), 2)]}
    for dims in ctx.config.split.dims:
        model = f"merit-{dims}d"
        methods[model] = [(f"{model}-b{group['label']}", tuple(group["tasks"]), 1) for group in splits[model]["groups"]]
    return methods


def settings_hash(ctx, config) -> str:
    stages = ctx.manifest.stages()
    return config_hash("lr-sweep", config.to_dict(), _TRAIN_EXAMPLES.value,
                       stages.get("init", {}).get("config_hash"), stages.get("split", {}).get("config_hash"))


def train_method(ctx, trainer, config, runs_dir, method_runs, encoded, seed) -> list[dict]:
    """Train (or load) every run of one method at one (η, seed) and return the final parameters."""
    finals = []
    for name, tasks, epochs in method_runs:
        data = [item for task in tasks for item in encoded[task]]
        # The trainer reads learning rate and schedule from `config` at run time. Its compiled
        # step takes η as an argument, so one Trainer serves every η without recompiling.
        trainer.config = config
        result = trainer.run(run_dir=runs_dir / name, params=ctx.theta0(),
                             epoch_batches=sweep_eval.epoch_batches_fn(ctx, data, name, config, seed),
                             num_epochs=epochs)
        finals.append({"run": name, "params": result.params, "tokens": sum(supervised_tokens(encoded[t]) for t in tasks),
                       "steps": result.total_steps})
    return finals


def evaluate_method(ctx, scorer, method, finals, theta0_trainable, cache_path) -> dict:
    """Score the method's model (the merge for MERIT), caching the scores next to its runs."""
    if cache_path.exists():
        return json.loads(cache_path.read_text())
    if len(finals) == 1:
        params, extra = finals[0]["params"], {}
    else:
        weights = merge_lib.merge_weights([f["tokens"] for f in finals])
        params = merge_lib.weighted_average([f["params"] for f in finals], weights)
        branch_losses = [scorer.pooled_loss(f["params"]) for f in finals]
        merged_loss = scorer.pooled_loss(params)
        extra = {"merge_weights": weights, "branch_pooled_losses": branch_losses,
                 "merge_gain": float(np.dot(weights, branch_losses) - merged_loss)}
    delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                         common.trainable_part(ctx, params), theta0_trainable)
    norm = float(np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree.leaves(delta))))
    result = {**scorer(params), **extra, "displacement_norm": norm, "steps": [f["steps"] for f in finals]}
    write_json_atomic(cache_path, common.jsonable(result))
    return result


def compute(ctx, outputs) -> dict:
    config = sgd_config(ctx)
    runs_root = outputs.path("runs") / settings_hash(ctx, config)
    etas = sorted(float(eta) for eta in _ETAS.value)
    encoded = {name: list(ctx.encoded(name, "train")[: _TRAIN_EXAMPLES.value]) for name in ctx.task_names}
    methods = plan_methods(ctx)
    trainer = Trainer(loss_fn=ctx.loss_fn, trainable=ctx.trainable, train_config=config)
    scorer = sweep_eval.Scorer(ctx, _EVAL_EXAMPLES.value, _EXACT_MATCH_EXAMPLES.value)
    theta0 = ctx.theta0()
    theta0_trainable = common.trainable_part(ctx, theta0)
    base = scorer(theta0)

    # Scores are cached per evaluation setting, so other probe sizes never reuse stale scores.
    evaluation = config_hash("scores", _EVAL_EXAMPLES.value, _EXACT_MATCH_EXAMPLES.value)
    rows = []
    for eta in etas:
        eta_config = ml_collections.ConfigDict(config.to_dict())
        eta_config.learning_rate = eta
        for seed in range(_SEEDS.value):
            runs_dir = runs_root / f"eta_{eta:g}" / f"seed_{seed}"
            for method, method_runs in methods.items():
                logging.info("η = %g, seed %d: %s", eta, seed, method)
                finals = train_method(ctx, trainer, eta_config, runs_dir, method_runs, encoded, seed)
                scores = evaluate_method(ctx, scorer, method, finals, theta0_trainable, runs_dir / f"scores_{method}_{evaluation}.json")
                scores["diverged"] = metrics.diverged(scores["average_loss"], base["average_loss"])
                rows.append({"method": method, "eta": eta, "seed": seed, **scores})
                del finals

    families = {name: info.get("family") or "unlabelled" for name, info in task_table(ctx).items()}
    return {
        "etas": etas, "seeds": _SEEDS.value, "methods": list(methods), "base": base, "rows": rows,
        "families": families, "analysis": analyse(rows, base, list(methods), etas),
        "settings": {"optimizer": "sgd (no momentum, no weight decay)", "schedule": f"linear warm-up over {_WARMUP.value:.0%} of the steps, then constant η",
                     "clip_norm": _CLIP.value, "batch_size": config.batch_size, "train_examples_per_task": _TRAIN_EXAMPLES.value,
                     "eval_examples_per_task": _EVAL_EXAMPLES.value, "exact_match": _EXACT_MATCH_EXAMPLES.value > 0,
                     "exact_match_examples_per_task": _EXACT_MATCH_EXAMPLES.value,
                     "divergence": f"non-finite loss or average loss > {metrics.DIVERGENCE_FACTOR} × θ0's",
                     "runs_dir": str(runs_root), "merge_weights": "token budgets of each branch's subsampled training examples"},
        "provenance": common.provenance(ctx, checkpoints={"base": common.checkpoint_id(ctx, "base")}),
    }


def _by_method_eta(rows, key, skip_diverged: bool = False):
    table = collections.defaultdict(list)
    for row in rows:
        value = None if skip_diverged and row["diverged"] else row.get(key)
        table[(row["method"], row["eta"])].append(np.nan if value is None else value)
    return table


def analyse(rows, base, methods, etas) -> dict:
    """Summarize each method: mean scores over seeds, sensitivity, stable ranges, paired differences, gain slope."""
    losses = _by_method_eta(rows, "average_loss")
    scores = _by_method_eta(rows, "average_exact_match")
    gains = _by_method_eta(rows, "merge_gain", skip_diverged=True)
    result = {}
    for method in methods:
        loss = np.array([np.nanmean(losses[(method, eta)]) for eta in etas])
        entry = {
            "average_loss": loss,
            "loss_sensitivity": metrics.loss_sensitivity(loss, base["average_loss"]),
            "loss_stable_etas": metrics.stable_etas(etas, loss, _LOSS_TOLERANCE.value, higher_is_better=False),
            "loss_vs_joint_1ep": [metrics.paired_difference(losses[(method, eta)], losses[("joint-1ep", eta)]) for eta in etas],
        }
        if "average_exact_match" in base:
            score = np.array([np.nanmean(scores[(method, eta)]) for eta in etas])
            entry.update(average_exact_match=score,
                         score_sensitivity=metrics.score_sensitivity(score, base["average_exact_match"]),
                         score_stable_etas=metrics.stable_etas(etas, score, _SCORE_TOLERANCE.value, higher_is_better=True),
                         score_vs_joint_1ep=[metrics.paired_difference(scores[(method, eta)], scores[("joint-1ep", eta)]) for eta in etas])
        if method.startswith("merit-"):
            gain = np.array([np.nanmean(gains[(method, eta)]) for eta in etas])
            entry.update(merge_gain=gain, merge_gain_slope=metrics.log_log_slope(etas, gain))
        result[method] = entry
    return result


def write_csv(outputs, results: dict) -> None:
    families = sorted(set(results["families"].values()))
    header = ["method", "eta", "seed"] + [f"exact_match {f}" for f in families] + [f"loss {f}" for f in families] + \
             ["average_exact_match", "average_loss", "pooled_loss", "merge_gain", "displacement_norm", "diverged"]
    rows = []
    for row in results["rows"]:
        by_family = collections.defaultdict(list)
        for task, loss in row["task_loss"].items():
            by_family[results["families"][task]].append((loss, (row.get("task_exact_match") or {}).get(task)))
        em = [np.mean([e for _, e in by_family[f] if e is not None]) if results["settings"]["exact_match"] else "" for f in families]
        loss = [np.mean([l for l, _ in by_family[f]]) for f in families]
        rows.append([row["method"], row["eta"], row["seed"], *em, *loss, row.get("average_exact_match", ""), row["average_loss"],
                     row["pooled_loss"], row.get("merge_gain", ""), row["displacement_norm"], row["diverged"]])
    outputs.write_csv("lr_sweep.csv", header, rows)


def main():
    outputs = common.Outputs(_WORKDIR.value, "lr_sweep")
    if _REPLOT.value:
        results = outputs.read_json("lr_sweep.json")
    else:
        started = time.perf_counter()
        ctx = common.open_workdir(_WORKDIR.value)
        results = compute(ctx, outputs)
        results["wall_seconds"] = time.perf_counter() - started
        outputs.write_json("lr_sweep.json", results)
        write_csv(outputs, results)
    lr_sweep_plots.plot(outputs, results)
    outputs.report()


if __name__ == "__main__":
    common.run(main)
