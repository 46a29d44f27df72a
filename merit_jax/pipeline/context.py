"""Shared, lazily built state of one pipeline invocation: tasks, tokenizer, model and loss.

Stages read what they need from a `Context`. Each object is built on first use and cached, so a
rerun that skips most stages does no needless work and all stages share one compiled loss.
"""

import functools
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from merit_jax import data as data_lib
from merit_jax.core import sharding as sharding_lib
from merit_jax.core import tree as tree_lib
from merit_jax.data import vision as vision_data
from merit_jax.models.functional import FunctionalModule
from merit_jax.pipeline.defaults import default_config
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.families import make_family
from merit_jax.pipeline.plan import stable_seed
from merit_jax.pipeline.workdir import Manifest, read_json
from merit_jax.training import checkpoint as checkpoint_lib


class Context:
    """Config, workdir and the lazily built objects every stage uses."""

    def __init__(self, config, workdir: str | Path):
        self.config = config
        self.workdir = Path(workdir)
        self.manifest = Manifest(self.workdir)
        self._placements: dict = {}

    @classmethod
    def from_workdir(cls, workdir: str | Path) -> "Context":
        """Open an existing workdir with the config recorded in its `config.json` (for analyses)."""
        config_path = Path(workdir) / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path} not found; run the pipeline on {workdir} first")
        config = ml_collections.ConfigDict(read_json(config_path))
        return cls(config, workdir)

    # Data ---------------------------------------------------------------------------------------

    @functools.cached_property
    def tasks(self) -> list:
        """The mixture's tasks, sorted by name (the dataset order of every matrix and file)."""
        tasks = sorted(_read_tasks(self.config), key=lambda task: task.name)
        return _select_tasks(tasks, self.config.data)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @functools.cached_property
    def splits(self) -> dict:
        """Task name → `TaskSplit` (warmup, train, heldout, calibration ⊂ train)."""
        data = self.config.data
        splits = {}
        for task in self.tasks:
            try:
                splits[task.name] = data_lib.split_task(
                    task,
                    seed=self.config.seed,
                    warmup_size=data.warmup_size,
                    heldout_size=data.heldout_size,
                    calibration_size=data.calibration_size,
                )
            except ValueError as error:
                raise ConfigError(f"{error} (config.data.warmup_size and config.data.heldout_size)") from error
        return splits

    @property
    def tokenizer_dir(self) -> Path:
        return self.workdir / "data" / "tokenizer"

    @functools.cached_property
    def tokenizer(self):
        return data_lib.load_tokenizer(self.tokenizer_dir)

    def use_tokenizer(self, tokenizer) -> None:
        """Use `tokenizer` before it is saved (the data stage saves it once every example encodes)."""
        self.__dict__["tokenizer"] = tokenizer

    @functools.lru_cache(maxsize=None)
    def encoded(self, task_name: str, part: str) -> tuple:
        """Encoded examples of one task's split part ('warmup', 'train', 'heldout', 'calibration')."""
        examples = getattr(self.splits[task_name], part)
        max_length = self.config.data.max_length
        return tuple(self.family.encode(example, max_length) for example in examples)

    def epoch_batches_fn(self, task_names, part: str, run_name: str, train_config):
        """Return `epoch → batches` over the `part` examples of `task_names`, shuffled per run."""
        encoded = [item for name in task_names for item in self.encoded(name, part)]
        seed = stable_seed(self.config.seed, run_name)

        @functools.lru_cache(maxsize=1)
        def epoch_batches(epoch: int):
            return self.family.epoch_batches(
                encoded,
                batch_size=train_config.batch_size,
                seed=seed,
                epoch=epoch,
                micro_batches=train_config.micro_batches,
            )

        return epoch_batches

    def eval_batches(self, task_name: str, part: str) -> list:
        return self.family.eval_batches(self.encoded(task_name, part), batch_size=self.config.eval.batch_size)

    # Model --------------------------------------------------------------------------------------

    @functools.cached_property
    def family(self):
        """The model family (text or vision-language) that encodes, batches and runs the model."""
        return make_family(self)

    @functools.cached_property
    def model_config(self):
        return self.family.model_config()

    def _build_model(self):
        seed = stable_seed(self.config.seed, "model-init")
        return self.family.build_model(self.model_config, nnx.Rngs(seed))

    @functools.cached_property
    def _abstract(self) -> tuple[FunctionalModule, dict]:
        # Shapes only: a 3B model is never initialized just to learn its structure.
        return FunctionalModule.from_module(nnx.eval_shape(self._build_model))

    @property
    def functional(self) -> FunctionalModule:
        return self._abstract[0]

    @property
    def abstract_params(self) -> dict:
        """The parameter tree with `jax.ShapeDtypeStruct` leaves (the restore target)."""
        return self._abstract[1]

    def random_init_params(self) -> dict:
        """Freshly initialized parameters (seeded from the config seed)."""
        return FunctionalModule.from_module(self._build_model())[1]

    def load_params(self, directory: Path, placement: "sharding_lib.Placement | None" = None) -> dict:
        """Restore parameters from an orbax checkpoint, onto `placement` (default: the run mesh)."""
        placement = placement or self.placement()
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            self.abstract_params,
            placement.params,
        )
        return checkpoint_lib.load_params(directory, target)

    def placement(self, devices: tuple | None = None) -> sharding_lib.Placement:
        """Mesh, parameter shardings and batch specs for `devices` (default: all devices).

        With `config.mesh.data` > 0, the mesh takes the first data × model of the devices.
        """
        devices = tuple(jax.devices() if devices is None else devices)
        if devices not in self._placements:
            # Workdirs written before meshes were configurable record no mesh section.
            mesh_config = self.config.get("mesh") or default_config().mesh
            if mesh_config.data > 0:
                devices = devices[: mesh_config.data * mesh_config.model]
            mesh = sharding_lib.make_mesh(mesh_config.data, mesh_config.model, devices)
            rules = tuple(mesh_config.rules)
            specs = sharding_lib.partition_specs(self.abstract_params, mesh, rules)
            sharding_lib.log_placement(self.abstract_params, specs, mesh)
            shardings = sharding_lib.named_shardings(specs, mesh)
            self._placements[devices] = sharding_lib.Placement(mesh, shardings, self.family.batch_specs)
        return self._placements[devices]

    @functools.cached_property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Token ids that end a generated answer: the tokenizer's and the model config's eos."""
        ids = {self.tokenizer.eos_token_id}
        configured = self.model_config.eos_token_id
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        ids.discard(None)
        if not ids:
            raise ValueError("neither the tokenizer nor the model config defines an eos token id")
        return tuple(sorted(int(token) for token in ids))

    @property
    def pad_token_id(self) -> int:
        """Id written after the end of a generated answer and in padded prompt slots."""
        if self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        return self.stop_token_ids[0]

    @functools.cached_property
    def trainable(self) -> tree_lib.PathFilter:
        return tree_lib.path_filter(
            tuple(self.config.trainable.include), tuple(self.config.trainable.exclude)
        )

    @functools.cached_property
    def loss_fn(self):
        """`loss_fn(params, batch) -> (loss_sum, token_count)` of this model on its batches."""
        return self.family.loss_fn(self.functional)

    @functools.cached_property
    def jitted_loss(self):
        """`jax.jit(loss_fn)`, built once so evaluations of all models share its compilations."""
        return jax.jit(self.loss_fn)

    def theta0(self, placement: sharding_lib.Placement | None = None) -> dict:
        """Load θ0, the shared starting point of every run, onto `placement` (default: all devices)."""
        placement = placement or self.placement()
        init_dir = self.workdir / "init"
        if (init_dir / "params").exists():
            return self.load_params(init_dir / "params", placement)
        if self.config.model.checkpoint:
            params = self.family.load_hf_params(self.config.model.checkpoint)
            return sharding_lib.place(params, placement.params)
        raise FileNotFoundError(f"θ0 not found in {init_dir}; run the init stage first")

    def log_sizes(self) -> None:
        params = self.abstract_params
        trainable, _ = tree_lib.partition(params, self.trainable)
        logging.info(
            "model: %d parameters, %d trainable", tree_lib.tree_size(params), tree_lib.tree_size(trainable)
        )


def supervised_tokens(encoded_examples) -> int:
    """Total supervised (loss-bearing) tokens of encoded examples: the token budget n_t."""
    return int(sum(np.sum(item.loss_mask) for item in encoded_examples))


def _read_tasks(config) -> list:
    """Build or read the mixture named by `config.data.source`."""
    data = config.data
    source = data.source
    # With a task subset, small tasks are dropped by the selection instead of failing the read.
    min_examples = 1 if data.get("num_tasks", 0) else data.min_examples_per_task
    if source == "builtin":
        return data_lib.builtin_mixture(
            examples_per_task=data.examples_per_task,
            seed=config.seed,
            task_names=tuple(data.get("builtin_tasks", ())) or None,
        )
    if source == "jsonl":
        return data_lib.read_jsonl_mixture(data.jsonl_path, min_examples_per_task=min_examples)
    if source == "digits":
        # The same seed and split sizes as `split_task`, so held-out examples get unseen images.
        return vision_data.digits_mixture(
            data.examples_per_task,
            config.seed,
            task_names=tuple(data.get("builtin_tasks", ())) or None,
            image_size=data.images.image_size,
            warmup_size=data.warmup_size,
            heldout_size=data.heldout_size,
        )
    if source == "vision_flan":
        return vision_data.read_vision_flan(
            data.annotation_path, image_root=data.image_root, min_examples_per_task=min_examples
        )
    if source == "llava":
        return [
            vision_data.read_llava_conversations(
                path, image_root=data.image_root, task_name=Path(path).stem, min_examples=min_examples
            )
            for path in data.annotation_paths
        ]
    raise ConfigError(
        f"config.data.source = {source!r} is invalid; use 'builtin', 'jsonl', 'digits', 'vision_flan' or 'llava'"
    )


def _select_tasks(tasks: list, data) -> list:
    """Keep `data.num_tasks` tasks drawn with `data.task_seed` from those with enough examples."""
    count = data.get("num_tasks", 0)
    if not count or data.source in ("builtin", "digits"):
        return tasks
    eligible = [task for task in tasks if len(task.examples) >= data.min_examples_per_task]
    if count > len(eligible):
        raise ConfigError(
            f"config.data.num_tasks={count} but only {len(eligible)} tasks have at least "
            f"{data.min_examples_per_task} examples; lower num_tasks or min_examples_per_task"
        )
    chosen = np.random.default_rng(data.task_seed).choice(len(eligible), size=count, replace=False)
    return [eligible[index] for index in sorted(chosen)]
