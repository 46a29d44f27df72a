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
from merit_jax.core import tree as tree_lib
from merit_jax.models import qwen2
from merit_jax.models.functional import FunctionalModule
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.plan import stable_seed
from merit_jax.pipeline.workdir import Manifest, read_json
from merit_jax.training import checkpoint as checkpoint_lib
from merit_jax.training.loss import make_causal_lm_loss


class Context:
    """Config, workdir and the lazily built objects every stage uses."""

    def __init__(self, config, workdir: str | Path):
        self.config = config
        self.workdir = Path(workdir)
        self.manifest = Manifest(self.workdir)

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
        source = self.config.data.source
        if source == "builtin":
            tasks = data_lib.builtin_mixture(
                examples_per_task=self.config.data.examples_per_task,
                seed=self.config.seed,
                task_names=tuple(self.config.data.get("builtin_tasks", ())) or None,
            )
        elif source == "jsonl":
            tasks = data_lib.read_jsonl_mixture(
                self.config.data.jsonl_path,
                min_examples_per_task=self.config.data.min_examples_per_task,
            )
        else:
            raise ConfigError(f"unknown config.data.source {source!r}; use 'builtin' or 'jsonl'")
        return sorted(tasks, key=lambda task: task.name)

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

    @functools.lru_cache(maxsize=None)
    def encoded(self, task_name: str, part: str) -> tuple:
        """Encoded examples of one task's split part ('warmup', 'train', 'heldout', 'calibration')."""
        examples = getattr(self.splits[task_name], part)
        max_length = self.config.data.max_length
        return tuple(data_lib.encode_example(self.tokenizer, example, max_length) for example in examples)

    def epoch_batches_fn(self, task_names, part: str, run_name: str, batch_size: int):
        """Return `epoch → batches` over the `part` examples of `task_names`, shuffled per run."""
        encoded = [item for name in task_names for item in self.encoded(name, part)]
        seed = stable_seed(self.config.seed, run_name)

        @functools.lru_cache(maxsize=1)
        def epoch_batches(epoch: int):
            return data_lib.make_epoch_batches(
                encoded,
                batch_size=batch_size,
                bucket_lengths=tuple(self.config.data.bucket_lengths),
                seed=seed,
                epoch=epoch,
            )

        return epoch_batches

    def eval_batches(self, task_name: str, part: str) -> list:
        return data_lib.make_eval_batches(
            self.encoded(task_name, part),
            batch_size=self.config.eval.batch_size,
            bucket_lengths=tuple(self.config.data.bucket_lengths),
        )

    # Model --------------------------------------------------------------------------------------

    @functools.cached_property
    def model_config(self) -> qwen2.Qwen2Config:
        model = self.config.model
        if model.checkpoint:
            return qwen2.Qwen2Config.from_pretrained_dir(model.checkpoint)
        fields = dict(model.scratch)
        fields["vocab_size"] = len(self.tokenizer)
        special = self.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
        fields.update(bos_token_id=special[0], eos_token_id=special[1], pad_token_id=special[0])
        return qwen2.Qwen2Config(**fields)

    def _build_model(self) -> qwen2.Qwen2ForCausalLM:
        seed = stable_seed(self.config.seed, "model-init")
        return qwen2.Qwen2ForCausalLM(self.model_config, rngs=nnx.Rngs(seed))

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

    def load_params(self, directory: Path) -> dict:
        return checkpoint_lib.load_params(directory, self.abstract_params)

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
        return make_causal_lm_loss(self.functional.apply)

    @functools.cached_property
    def jitted_loss(self):
        """`jax.jit(loss_fn)`, built once so evaluations of all models share its compilations."""
        return jax.jit(self.loss_fn)

    def theta0(self) -> dict:
        """Load θ0, the shared starting point of every run (written by the init stage)."""
        init_dir = self.workdir / "init"
        if (init_dir / "params").exists():
            return self.load_params(init_dir / "params")
        if self.config.model.checkpoint:
            model, _ = qwen2.load_hf_checkpoint(self.config.model.checkpoint)
            return FunctionalModule.from_module(model)[1]
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
