"""Evaluation stage: every model on every task's held-out examples, then the results table.

Each model's scores are written to `eval/models/<model>.json` as soon as they are complete, so a
killed evaluation resumes with the next model. `results.json` and `results.md` are written when
all models are done.
"""

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from merit_jax import data as data_lib
from merit_jax.evaluation import metrics as metrics_lib
from merit_jax.evaluation.tables import render_markdown
from merit_jax.pipeline import plan
from merit_jax.pipeline.context import Context
from merit_jax.pipeline.prepare import task_table
from merit_jax.pipeline.workdir import read_json, write_json_atomic, write_text_atomic


def model_params_dir(ctx: Context, model: str):
    """Directory of the final parameters of a results-table model."""
    if model == "base":
        return ctx.workdir / "init" / "params"
    if model.startswith("joint-"):
        return ctx.workdir / "runs" / model / "params"
    return ctx.workdir / "merged" / model / "params"


def _load_model_params(ctx: Context, model: str):
    if model == "base":
        return ctx.theta0()
    return ctx.load_params(model_params_dir(ctx, model))


def _max_new_tokens(ctx: Context, references: list[str]) -> int:
    """Smallest configured generation length that fits the longest reference plus its end token."""
    longest = max(len(ctx.tokenizer(reference, add_special_tokens=False)["input_ids"]) for reference in references)
    for length in ctx.config.eval.max_new_tokens_buckets:
        if length >= longest + 2:
            return int(length)
    return int(longest + 2)


def evaluate_task(ctx: Context, params, task_name: str, loss_fn) -> dict:
    """Held-out loss and exact-match accuracy of one model on one task."""
    loss = metrics_lib.heldout_loss(loss_fn, params, ctx.eval_batches(task_name, "heldout"))

    examples = ctx.splits[task_name].heldout
    references = [data_lib.reference_answer(example) for example in examples]
    answers = ctx.family.generate_answers(
        ctx.functional,
        params,
        examples,
        max_new_tokens=_max_new_tokens(ctx, references),
        stop_ids=ctx.stop_token_ids,
        pad_id=ctx.pad_token_id,
    )
    match = metrics_lib.exact_match(answers, references)
    return {
        "loss": loss.loss,
        "loss_sum": loss.loss_sum,
        "token_count": loss.token_count,
        "exact_match": match.accuracy,
        "correct": match.correct,
        "total": match.total,
        "samples": [
            {"reference": reference, "prediction": answer}
            for reference, answer in zip(references[:3], answers[:3])
        ],
    }


def evaluate_model(ctx: Context, model: str, model_hash: str) -> dict:
    """Evaluate one model on all tasks, reusing a finished result computed with the same hash."""
    path = ctx.workdir / "eval" / "models" / f"{model}.json"
    if path.exists():
        stored = read_json(path)
        if stored.get("model_hash") == model_hash:
            return stored["tasks"]

    params = _load_model_params(ctx, model)
    scores = {}
    for task_name in tqdm(ctx.task_names, desc=f"evaluating {model}", unit="task"):
        scores[task_name] = evaluate_task(ctx, params, task_name, ctx.jitted_loss)
    write_json_atomic(path, {"model": model, "model_hash": model_hash, "tasks": scores})
    mean_accuracy = np.mean([score["exact_match"] for score in scores.values()])
    logging.info("evaluated %s: mean exact match %.4f", model, mean_accuracy)
    return scores


def run_evaluate(ctx: Context, model_hashes: dict[str, str], description: str = "") -> dict:
    """Evaluate every model of the results table and write results.json and results.md."""
    models = plan.evaluated_models(ctx.config)
    results = {model: evaluate_model(ctx, model, model_hashes[model]) for model in models}
    tasks = {name: {"family": info["family"]} for name, info in task_table(ctx).items()}
    report = {
        "title": ctx.config.get("name", "MERIT"),
        "description": description,
        "models": models,
        "display_names": {model: plan.display_name(model) for model in models},
        "tasks": tasks,
        "results": results,
    }
    write_json_atomic(ctx.workdir / "eval" / "results.json", report)
    write_text_atomic(ctx.workdir / "eval" / "results.md", render_markdown(report))
    return {"models": models}
