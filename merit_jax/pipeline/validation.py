"""Checks of a config against the mixture, run before any stage so bad settings leave no trace."""

import jax

from merit_jax.pipeline.errors import ConfigError

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
    job = config.get("job")
    if job is not None and job.stage not in ("all", "prepare", "train", "merge"):
        raise ConfigError(f"config.job.stage = {job.stage!r} is invalid; use 'all', 'prepare', 'train' or 'merge'")
    if job is not None and str(job.branch).isdigit():
        # Every split has exactly 2^r groups, so the branch count is known before any stage runs.
        count = sum(2**dims for dims in list(config.split.dims) + list(config.baselines.random_dims))
        if int(job.branch) >= count:
            raise ConfigError(f"branch={job.branch} is out of range: there are {count} branch runs (0 to {count - 1})")
    mesh = config.get("mesh")
    if mesh is not None and (mesh.parallel_branches < 1 or mesh.model < 1 or mesh.data == 0 or mesh.data < -1):
        raise ConfigError(
            f"config.mesh (data={mesh.data}, model={mesh.model}, parallel_branches={mesh.parallel_branches}) "
            "is invalid; data is -1 or a device count, model and parallel_branches are >= 1"
        )
    if mesh is not None:
        devices = jax.device_count()
        used = (mesh.data if mesh.data > 0 else 1) * mesh.model * mesh.parallel_branches
        if used > devices or devices % (mesh.model * mesh.parallel_branches):
            raise ConfigError(
                f"config.mesh (data={mesh.data}, model={mesh.model}, parallel_branches="
                f"{mesh.parallel_branches}) does not fit the {devices} available devices"
            )
    if not config.split.dims:
        raise ConfigError("config.split.dims is empty; give at least one MERIT dimension, e.g. (1, 2, 3)")
    for epochs in config.baselines.joint_epochs:
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"config.baselines.joint_epochs contains {epochs!r}; use whole epochs >= 1")
