"""Stages before training: data and tokenizer, θ0, dataset gradients, conflicts (PCA) and split.

Each function is one stage: it reads the outputs of earlier stages from the workdir and writes
its own under a temporary name that is renamed into place when complete.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from absl import logging
from tqdm.auto import tqdm

from merit_jax import data as data_lib
from merit_jax.core import conflicts as conflicts_lib
from merit_jax.core import gradients as gradients_lib
from merit_jax.core import split as split_lib
from merit_jax.core.merge import merge_weights
from merit_jax.pipeline import distributed, plan
from merit_jax.pipeline.context import Context, supervised_tokens
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.workdir import atomic_directory, read_json, write_json_atomic
from merit_jax.training.trainer import Trainer


def run_data(ctx: Context) -> dict:
    """Train the tokenizer (unless the model brings one) and record every task's split sizes.

    Every example, images included, is encoded before anything is written, so invalid input
    stops the stage with nothing saved.
    """
    save_tokenizer = not ctx.tokenizer_dir.exists()
    if save_tokenizer:
        if ctx.config.model.checkpoint:
            tokenizer = data_lib.load_tokenizer(ctx.config.model.checkpoint)
        else:
            # Only warm-up and training examples: held-out answers stay unseen, even by the tokenizer.
            examples = [
                example
                for task_split in ctx.splits.values()
                for example in task_split.warmup + task_split.train
            ]
            tokenizer = ctx.family.train_tokenizer(examples, ctx.config.tokenizer.vocab_size)
        ctx.use_tokenizer(tokenizer)

    tasks = {}
    for task in tqdm(ctx.tasks, desc="encoding tasks", unit="task"):
        task_split = ctx.splits[task.name]
        encoded = {part: ctx.encoded(task.name, part) for part in ("warmup", "train", "heldout")}
        tasks[task.name] = {
            "family": task.family,
            "samples": {part: len(getattr(task_split, part)) for part in ("warmup", "train", "heldout", "calibration")},
            "tokens": supervised_tokens(encoded["train"]),
            "truncated": int(sum(item.truncated for items in encoded.values() for item in items)),
        }

    if save_tokenizer:
        data_lib.save_tokenizer(ctx.tokenizer, ctx.tokenizer_dir)
    write_json_atomic(ctx.workdir / "data" / "tasks.json", {"tasks": tasks, "vocab_size": len(ctx.tokenizer)})
    total = sum(info["samples"]["train"] for info in tasks.values())
    logging.info("data: %d tasks, %d training examples, vocabulary %d", len(tasks), total, len(ctx.tokenizer))
    return {"num_tasks": len(tasks), "train_examples": total}


def task_table(ctx: Context) -> dict:
    """Read the per-task record of the data stage (family, sample counts, token budget)."""
    return read_json(ctx.workdir / "data" / "tasks.json")["tasks"]


def run_init(ctx: Context) -> dict:
    """Prepare θ0: a joint warm-up on examples kept apart from the mixture, or the user's model."""
    init_dir = ctx.workdir / "init"
    if ctx.config.init.mode == "checkpoint":
        if not ctx.config.model.checkpoint:
            raise ConfigError("config.init.mode is 'checkpoint' but config.model.checkpoint is empty")
        write_json_atomic(init_dir / "source.json", {"hf_checkpoint": ctx.config.model.checkpoint})
        return {"source": ctx.config.model.checkpoint}
    if ctx.config.init.mode != "warmup":
        raise ConfigError(f"unknown config.init.mode {ctx.config.init.mode!r}; use 'warmup' or 'checkpoint'")

    ctx.log_sizes()
    # The warm-up trains every parameter: θ0 must be a working model, whatever the later subset.
    trainer = Trainer(
        loss_fn=ctx.loss_fn,
        trainable=lambda path: True,
        train_config=ctx.config.init.train,
        stacked_batches=ctx.family.stacked_batches,
        placement=ctx.placement(),
    )
    result = trainer.run(
        run_dir=init_dir,
        params=ctx.random_init_params() if not ctx.config.model.checkpoint else ctx.theta0(),
        epoch_batches=ctx.epoch_batches_fn(ctx.task_names, "warmup", "init", ctx.config.init.train),
        num_epochs=ctx.config.init.epochs,
    )
    return {"steps": result.total_steps}


def _gradient_store(ctx: Context) -> gradients_lib.GradientStore:
    """This host's gradient store: the whole strided vectors, or with several hosts its own entries."""
    directory = ctx.workdir / "gradients"
    if jax.process_count() > 1:
        directory = directory / f"process_{jax.process_index()}"
    return gradients_lib.GradientStore(directory, stride=ctx.config.gradients.stride)


def _missing_on_any_host(store: gradients_lib.GradientStore, names: list[str]) -> list[str]:
    missing = np.array([name in set(store.missing(names)) for name in names])
    if jax.process_count() > 1:
        missing = np.asarray(multihost_utils.process_allgather(missing)).any(axis=0)
    return [name for name, absent in zip(names, missing) if absent]


def run_gradients(ctx: Context) -> dict:
    """Estimate one strided mean gradient per task on its calibration examples at θ0.

    With several hosts, each writes the strided entries its devices hold (and their positions),
    so no host ever gathers a whole gradient.
    """
    stride = ctx.config.gradients.stride
    store = _gradient_store(ctx)
    missing = _missing_on_any_host(store, ctx.task_names)
    if len(missing) < len(ctx.task_names):
        logging.info("gradients: %d of %d tasks already stored", len(ctx.task_names) - len(missing), len(ctx.task_names))
    if not missing:
        return {"num_tasks": len(ctx.task_names), "length": store.length}

    theta0 = ctx.theta0()
    placement = ctx.placement()
    for name in tqdm(missing, desc="dataset gradients", unit="task"):
        batches = (placement.place_batch(batch) for batch in ctx.eval_batches(name, "calibration"))
        mean = gradients_lib.dataset_mean_gradient(ctx.loss_fn, theta0, batches, trainable=ctx.trainable, description=name)
        if jax.process_count() > 1:
            positions, vector = gradients_lib.owned_stride_entries(mean.gradient, stride)
            np.save(store.directory / "positions.npy", positions)
        else:
            vector = gradients_lib.stride_subsample(mean.gradient, stride)
        stats = dict(loss_sum=mean.loss_sum, token_count=mean.token_count, num_samples=len(ctx.splits[name].calibration))
        store.write(name, vector, **stats)
    return {"num_tasks": len(ctx.task_names), "length": store.length}


def run_conflicts(ctx: Context) -> dict:
    """Build the Gram and cosine matrices blockwise and their PCA embedding.

    With several hosts, each sums the products of its own gradient entries and the T × T
    partial Gram matrices are added up across hosts.
    """
    store = _gradient_store(ctx)
    names = ctx.task_names
    gram = conflicts_lib.gram_blockwise([store.path(name) for name in names], block_size=ctx.config.gradients.block_size)
    if jax.process_count() > 1:
        gram = np.asarray(multihost_utils.process_allgather(gram)).sum(axis=0)
    cosine = conflicts_lib.cosine_from_gram(gram, names=names)
    dims = max(ctx.config.split.dims)
    pca = conflicts_lib.pca_embedding(cosine, dims, mode=ctx.config.conflicts.pca_mode)

    if distributed.is_primary():
        with atomic_directory(ctx.workdir / "conflicts") as directory:
            np.save(directory / "gram.npy", gram)
            np.save(directory / "cosine.npy", cosine)
            write_json_atomic(
                directory / "pca.json",
                {
                    "tasks": names,
                    "mode": pca.mode,
                    "scores": np.asarray(pca.scores).tolist(),
                    "explained_variance_ratio": np.asarray(pca.explained_variance_ratio).tolist(),
                },
            )
    ratio = np.asarray(pca.explained_variance_ratio)[:dims]
    logging.info("conflicts: mean off-diagonal cosine %.4f, explained variance %s",
                 (cosine.sum() - len(names)) / (len(names) ** 2 - len(names)), np.round(ratio, 4))
    return {"explained_variance_ratio": ratio.tolist()}


def run_split(ctx: Context) -> dict:
    """Split the tasks into groups for every MERIT dimension and for the random baselines."""
    pca = read_json(ctx.workdir / "conflicts" / "pca.json")
    if pca["tasks"] != ctx.task_names:
        raise ConfigError(
            f"{ctx.workdir / 'conflicts' / 'pca.json'} lists other tasks than the current mixture; "
            "use a new --workdir for a different mixture"
        )
    tasks = task_table(ctx)
    names = ctx.task_names
    samples = np.array([tasks[name]["samples"]["train"] for name in names], dtype=np.float64)
    tokens = np.array([tasks[name]["tokens"] for name in names], dtype=np.float64)
    weight_kind = ctx.config.split.weight
    if weight_kind not in ("samples", "tokens"):
        raise ConfigError(f"unknown config.split.weight {weight_kind!r}; use 'samples' or 'tokens'")
    weights = samples if weight_kind == "samples" else tokens
    scores = np.asarray(pca["scores"], dtype=np.float64)

    splits = {}
    for model, kind, dims in plan.split_models(ctx.config):
        if kind == "pca":
            split = split_lib.weighted_median_split(scores[:, :dims], weights)
        else:
            key = jax.random.key(plan.stable_seed(ctx.config.seed, model))
            split = split_lib.random_split(key, weights, dims)
        splits[model] = _describe_split(split, names, samples, tokens, kind, dims, ctx.config.merge.weights)

    write_json_atomic(ctx.workdir / "split" / "groups.json", {"split_weight": weight_kind, "splits": splits})
    return {"models": sorted(splits)}


def _describe_split(split, names, samples, tokens, kind, dims, merge_mode) -> dict:
    budgets = np.array([tokens[group].sum() for group in split.groups])
    weights = merge_weights(budgets, mode=merge_mode)
    groups = [
        {
            "label": label,
            "tasks": [names[index] for index in group],
            "samples": int(samples[group].sum()),
            "tokens": int(tokens[group].sum()),
            "merge_weight": float(weight),
        }
        for label, group, weight in zip(split.labels, split.groups, weights)
    ]
    return {"kind": kind, "dims": dims, "groups": groups}


def read_groups(ctx: Context) -> dict:
    return read_json(ctx.workdir / "split" / "groups.json")["splits"]
