"""Runs the pipeline's stages in order, skipping those the manifest records as done.

Stage hashes chain: each stage's hash covers the config sections it reads and the hashes of
the stages it depends on, so changing a setting invalidates exactly the stages downstream of it.
Each stage runs under an exclusive lock file, so jobs started together on one workdir (one per
branch, say) wait for the shared stages instead of running them twice.
"""

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import time
from pathlib import Path
from typing import Callable

import jax
from absl import logging

from merit_jax.pipeline import distributed, evaluate, plan, prepare, train_merge
from merit_jax.pipeline.context import Context
from merit_jax.pipeline.jobs import job_command, select_branch
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.validation import validate_config
from merit_jax.pipeline.workdir import canonical_json, config_hash, read_json, write_json_atomic

# Config sections that only set how or where to run; they never enter stage hashes.
PLACEMENT_SECTIONS = ("mesh", "distributed", "job")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    hash: str
    inputs: tuple[str, ...]
    run: Callable[[], dict | None]


def _section(config, name: str):
    return config[name].to_dict()


@contextlib.contextmanager
def _stage_lock(ctx: Context, name: str):
    """Hold `WORKDIR/.locks/<stage>` exclusively; another process holding it makes this one wait."""
    lock_dir = ctx.workdir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / name.replace(":", "_")).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("stage %s: another process is running it; waiting", name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_stage(ctx: Context, stage: Stage) -> None:
    """Run `stage` unless the manifest records it as done with the same hash."""
    with _stage_lock(ctx, stage.name) if distributed.is_primary() else contextlib.nullcontext():
        if distributed.agree(ctx.manifest.is_done(stage.name, stage.hash)):
            logging.info("stage %s: done already, skipped", stage.name)
            return
        logging.info("stage %s: starting", stage.name)
        started = time.perf_counter()
        if distributed.is_primary():
            ctx.manifest.start(stage.name, stage.hash, list(stage.inputs))
        info = stage.run() or {}
        distributed.barrier(f"stage {stage.name}")
        if distributed.is_primary():
            ctx.manifest.finish(stage.name, [], **info)
        logging.info("stage %s: finished in %.1f s", stage.name, time.perf_counter() - started)


def _record_config(ctx: Context) -> None:
    """Write config.json on the first run; a later run with other settings is logged, not written over."""
    path = ctx.workdir / "config.json"
    resolved = ctx.config.to_dict()
    if not distributed.is_primary():
        return
    if not path.exists():
        write_json_atomic(path, resolved)
        return
    recorded = read_json(path)
    differs = [
        key for key in resolved if key not in PLACEMENT_SECTIONS and canonical_json(recorded.get(key)) != canonical_json(resolved[key])
    ]
    if differs:
        logging.warning("config sections %s differ from %s; stage hashes decide what is reused", differs, path)


def prepare_stages(ctx: Context) -> tuple[list[Stage], dict[str, str]]:
    """Build the stages before training (data to split), in order, and their hashes."""
    config = ctx.config
    hashes = {}
    hashes["data"] = config_hash("data", config.seed, _section(config, "data"), _section(config, "tokenizer"), config.model.checkpoint)
    hashes["init"] = config_hash("init", hashes["data"], _section(config, "model"), _section(config, "init"))
    hashes["gradients"] = config_hash("gradients", hashes["init"], config.gradients.stride, _section(config, "trainable"))
    hashes["conflicts"] = config_hash("conflicts", hashes["gradients"], _section(config, "conflicts"), max(config.split.dims))
    hashes["split"] = config_hash("split", hashes["conflicts"], _section(config, "split"), _section(config, "baselines"), _section(config, "merge"))
    functions = {
        "data": prepare.run_data,
        "init": prepare.run_init,
        "gradients": prepare.run_gradients,
        "conflicts": prepare.run_conflicts,
        "split": prepare.run_split,
    }
    inputs = {"data": (), "init": ("data",), "gradients": ("init",), "conflicts": ("gradients",), "split": ("conflicts",)}
    stages = [Stage(name, hashes[name], inputs[name], lambda function=function: function(ctx)) for name, function in functions.items()]
    return stages, hashes


def training_stages(ctx: Context, hashes: dict[str, str], groups: dict) -> list[tuple[plan.RunSpec, Stage]]:
    """Build one stage per training run: joint baselines, then every branch of every split."""
    config = ctx.config
    train_hash = config_hash("train", hashes["init"], _section(config, "train"), _section(config, "trainable"))
    stages = []
    for run in plan.training_runs(config, ctx.task_names, groups):
        stage_hash = config_hash(train_hash, run.name, run.tasks, run.num_epochs)
        stages.append((run, Stage(f"train:{run.name}", stage_hash, ("init",), lambda run=run: train_merge.run_training(ctx, run))))
    return stages


def _train_concurrently(ctx: Context, stages: list[tuple[plan.RunSpec, Stage]]) -> None:
    """Train branch runs `config.mesh.parallel_branches` at a time, each on its own group of devices."""
    count = ctx.config.mesh.parallel_branches
    devices = jax.local_devices()
    if count < 1 or len(devices) % count:
        raise ConfigError(f"config.mesh.parallel_branches={count} must divide the {len(devices)} local devices")
    size = len(devices) // count
    groups = [tuple(devices[index * size : (index + 1) * size]) for index in range(count)]
    pending = list(stages)

    def worker(group):
        placement = ctx.placement(group)
        while pending:
            try:
                run, stage = pending.pop(0)
            except IndexError:
                return
            run_stage(ctx, dataclasses.replace(stage, run=lambda run=run: train_merge.run_training(ctx, run, placement)))

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        for future in [pool.submit(worker, group) for group in groups]:
            future.result()


def _wait_for_branches(ctx: Context, stages: dict[str, Stage], names: list[str], argv: list[str]) -> None:
    """Raise, naming each missing branch and its command, unless they finish within the wait."""
    deadline = time.monotonic() + ctx.config.job.wait_for_branches
    while True:
        missing = [name for name in names if not ctx.manifest.is_done(name, stages[name].hash)]
        if not missing:
            return
        if time.monotonic() >= deadline:
            break
        logging.info("waiting for %d branch runs: %s", len(missing), ", ".join(missing))
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
    runs = [name.removeprefix("train:") for name in missing]
    commands = "; ".join(job_command(argv, f"branch={run}") for run in runs)
    raise ConfigError(f"cannot merge: branch runs {', '.join(runs)} are not finished; train them with: {commands}")


def run_pipeline(config, workdir: str | Path, argv: list[str] | None = None) -> Context:
    """Run the stages this job asks for (`config.job`): by default all of them, in order.

    `argv` is the command line that started this run; it only serves to print the commands of
    other jobs in messages.
    """
    argv = argv or ["merit_jax.main", "--config=CONFIG", f"--workdir={workdir}"]
    distributed.initialize(config)
    ctx = Context(config, workdir)
    # Read and validate the mixture before anything is written, so bad input leaves no trace.
    logging.info("mixture: %d tasks, %d split", len(ctx.tasks), len(ctx.splits))
    validate_config(config, len(ctx.tasks))
    _record_config(ctx)

    stages, hashes = prepare_stages(ctx)
    for stage in stages:
        run_stage(ctx, stage)
    job = config.job
    if job.stage == "prepare":
        return ctx

    groups = prepare.read_groups(ctx)
    training = training_stages(ctx, hashes, groups)
    if job.branch:
        run = select_branch([run for run, _ in training], job.branch)
        run_stage(ctx, dict((stage.name, stage) for _, stage in training)[f"train:{run.name}"])
        return ctx
    if job.stage in ("all", "train"):
        joint = [(run, stage) for run, stage in training if run.model == run.name]
        branches = [(run, stage) for run, stage in training if run.model != run.name]
        for _, stage in joint:
            run_stage(ctx, stage)
        if config.mesh.parallel_branches > 1:
            _train_concurrently(ctx, branches)
        else:
            for _, stage in branches:
                run_stage(ctx, stage)
    if job.stage == "train":
        return ctx

    by_name = {stage.name: stage for _, stage in training}
    model_hashes = {"base": hashes["init"]}
    for epochs in config.baselines.joint_epochs:
        name = f"train:{plan.joint_model(epochs)}"
        _wait_for_branches(ctx, by_name, [name], argv)
        model_hashes[plan.joint_model(epochs)] = by_name[name].hash
    for model, _, _ in plan.split_models(config):
        model_groups = groups[model]["groups"]
        branch_stages = [f"train:{model}-b{group['label']}" for group in model_groups]
        _wait_for_branches(ctx, by_name, branch_stages, argv)
        merge_hash = config_hash("merge", [by_name[name].hash for name in branch_stages], _section(config, "merge"))
        model_hashes[model] = merge_hash
        merge = lambda model=model, model_groups=model_groups: train_merge.run_merge(ctx, model, model_groups)
        run_stage(ctx, Stage(f"merge:{model}", merge_hash, tuple(branch_stages), merge))

    evaluate_hash = config_hash("evaluate", model_hashes, _section(config, "eval"))
    run_stage(ctx, Stage("evaluate", evaluate_hash, tuple(sorted(model_hashes)), lambda: evaluate.run_evaluate(ctx, model_hashes)))
    logging.info("results: %s", ctx.workdir / "eval" / "results.md")
    return ctx
