"""Runs the pipeline's stages in order, skipping those the manifest records as done.

Stage hashes chain: each stage's hash covers the config sections it reads and the hashes of
the stages it depends on, so changing a setting invalidates exactly the stages downstream of it.
"""

import time
from pathlib import Path

from absl import logging

from merit_jax.pipeline import evaluate, plan, prepare, train_merge
from merit_jax.pipeline.context import Context
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.workdir import canonical_json, config_hash, read_json, write_json_atomic


_CHOICES = {
    ("data", "source"): ("builtin", "jsonl", "digits", "vision_flan", "llava"),
    ("model", "family"): ("qwen2", "qwen2_5_vl"),
    ("init", "mode"): ("warmup", "checkpoint"),
    ("conflicts", "pca_mode"): ("rows_colcentered", "gram_eig", "double_centered"),
    ("split", "weight"): ("samples", "tokens"),
    ("merge", "weights"): ("tokens", "uniform"),
    ("train", "optimizer"): ("adamw", "sgd"),
}


def validate_config(config, num_tasks: int) -> None:
    """Reject invalid settings before any stage runs, naming the option and the valid values."""
    for (section, field), choices in _CHOICES.items():
        value = config[section].get(field, choices[0])
        if value not in choices:
            raise ConfigError(f"config.{section}.{field} = {value!r} is invalid; use one of {choices}")
    for name, train in (("train", config.train), ("init.train", config.init.train)):
        if train.micro_batches < 1 or train.batch_size % train.micro_batches:
            raise ConfigError(
                f"config.{name}.batch_size={train.batch_size} must be a multiple of "
                f"config.{name}.micro_batches={train.micro_batches}"
            )
    if config.init.mode == "checkpoint" and not config.model.checkpoint:
        raise ConfigError("config.init.mode is 'checkpoint' but config.model.checkpoint is empty")

    dims = list(config.split.dims) + list(config.baselines.random_dims)
    for r in dims:
        if not isinstance(r, int) or r < 1 or 2**r > num_tasks:
            raise ConfigError(
                f"split dimension r = {r!r} needs 2^r <= {num_tasks} tasks; change config.split.dims "
                "or config.baselines.random_dims"
            )
    if not config.split.dims:
        raise ConfigError("config.split.dims is empty; give at least one MERIT dimension, e.g. (1, 2, 3)")
    for epochs in config.baselines.joint_epochs:
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"config.baselines.joint_epochs contains {epochs!r}; use whole epochs >= 1")


def _section(config, name: str):
    return config[name].to_dict()


def _run_stage(ctx: Context, name: str, stage_hash: str, inputs: list[str], function) -> None:
    if ctx.manifest.is_done(name, stage_hash):
        logging.info("stage %s: done already, skipped", name)
        return
    logging.info("stage %s: starting", name)
    started = time.perf_counter()
    ctx.manifest.start(name, stage_hash, inputs)
    info = function() or {}
    ctx.manifest.finish(name, [], **info)
    logging.info("stage %s: finished in %.1f s", name, time.perf_counter() - started)


def _record_config(ctx: Context) -> None:
    """Write config.json on the first run; a later run with other settings is logged, not written over."""
    path = ctx.workdir / "config.json"
    resolved = ctx.config.to_dict()
    if not path.exists():
        write_json_atomic(path, resolved)
    elif canonical_json(read_json(path)) != canonical_json(resolved):
        logging.warning("config differs from %s; stage hashes decide what is reused", path)


def run_pipeline(config, workdir: str | Path) -> Context:
    """Run every stage: data, init, gradients, conflicts, split, training runs, merges, evaluation."""
    ctx = Context(config, workdir)
    # Read and validate the mixture before anything is written, so bad input leaves no trace.
    logging.info("mixture: %d tasks, %d split", len(ctx.tasks), len(ctx.splits))
    validate_config(config, len(ctx.tasks))
    _record_config(ctx)
    hashes = {}

    hashes["data"] = config_hash("data", config.seed, _section(config, "data"), _section(config, "tokenizer"), config.model.checkpoint)
    _run_stage(ctx, "data", hashes["data"], [], lambda: prepare.run_data(ctx))

    hashes["init"] = config_hash("init", hashes["data"], _section(config, "model"), _section(config, "init"))
    _run_stage(ctx, "init", hashes["init"], ["data"], lambda: prepare.run_init(ctx))

    hashes["gradients"] = config_hash("gradients", hashes["init"], config.gradients.stride, _section(config, "trainable"))
    _run_stage(ctx, "gradients", hashes["gradients"], ["init"], lambda: prepare.run_gradients(ctx))

    hashes["conflicts"] = config_hash("conflicts", hashes["gradients"], _section(config, "conflicts"), max(config.split.dims))
    _run_stage(ctx, "conflicts", hashes["conflicts"], ["gradients"], lambda: prepare.run_conflicts(ctx))

    hashes["split"] = config_hash("split", hashes["conflicts"], _section(config, "split"), _section(config, "baselines"), _section(config, "merge"))
    _run_stage(ctx, "split", hashes["split"], ["conflicts"], lambda: prepare.run_split(ctx))

    groups = prepare.read_groups(ctx)
    train_hash = config_hash("train", hashes["init"], _section(config, "train"), _section(config, "trainable"))
    for run in plan.training_runs(config, ctx.task_names, groups):
        stage = f"train:{run.name}"
        hashes[stage] = config_hash(train_hash, run.name, run.tasks, run.num_epochs)
        _run_stage(ctx, stage, hashes[stage], ["init"], lambda run=run: train_merge.run_training(ctx, run))

    model_hashes = {"base": hashes["init"]}
    for epochs in config.baselines.joint_epochs:
        model_hashes[plan.joint_model(epochs)] = hashes[f"train:{plan.joint_model(epochs)}"]
    for model, _, _ in plan.split_models(config):
        model_groups = groups[model]["groups"]
        branch_stages = [f"train:{model}-b{group['label']}" for group in model_groups]
        stage = f"merge:{model}"
        hashes[stage] = config_hash("merge", [hashes[name] for name in branch_stages], _section(config, "merge"))
        model_hashes[model] = hashes[stage]
        _run_stage(ctx, stage, hashes[stage], branch_stages, lambda model=model, model_groups=model_groups: train_merge.run_merge(ctx, model, model_groups))

    hashes["evaluate"] = config_hash("evaluate", model_hashes, _section(config, "eval"))
    _run_stage(ctx, "evaluate", hashes["evaluate"], sorted(model_hashes), lambda: evaluate.run_evaluate(ctx, model_hashes))
    logging.info("results: %s", ctx.workdir / "eval" / "results.md")
    return ctx
