"""Model families: what differs between a text model (Qwen2) and a vision-language model (Qwen2.5-VL).

A family builds the model config, the model and its Hugging Face import, encodes examples,
batches them to fixed shapes, defines the loss on its batches and generates answers. Every
stage of the pipeline goes through these methods, so the stages themselves are family-agnostic.
"""

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from merit_jax import data as data_lib
from merit_jax.data import vision as vision_data
from merit_jax.evaluation import metrics as metrics_lib
from merit_jax.models import qwen2, qwen2_5_vl
from merit_jax.models.functional import FunctionalModule
from merit_jax.pipeline.errors import ConfigError
from merit_jax.training.loss import token_cross_entropy


class TextFamily:
    """Qwen2 / Qwen2.5 causal decoders on text-only mixtures."""

    name = "qwen2"

    def __init__(self, ctx):
        # The context owns the tokenizer and the model config, which exist only after the data stage.
        self._ctx = ctx
        self.config = ctx.config

    @property
    def tokenizer(self):
        return self._ctx.tokenizer

    def _overrides(self) -> dict:
        return {"dtype": self.config.model.get("dtype", "float32"), "remat": self.config.model.get("remat", False)}

    def model_config(self):
        model = self.config.model
        if model.checkpoint:
            return qwen2.Qwen2Config.from_pretrained_dir(model.checkpoint, **self._overrides())
        fields = dict(model.scratch, **self._overrides())
        fields["vocab_size"] = len(self.tokenizer)
        special = self.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
        fields.update(bos_token_id=special[0], eos_token_id=special[1], pad_token_id=special[0])
        return qwen2.Qwen2Config(**fields)

    def build_model(self, model_config, rngs):
        return qwen2.Qwen2ForCausalLM(model_config, rngs=rngs)

    def load_hf_params(self, directory) -> dict:
        model, _ = qwen2.load_hf_checkpoint(directory)
        return FunctionalModule.from_module(model)[1]

    def train_tokenizer(self, examples, vocab_size: int):
        return data_lib.train_tokenizer(data_lib.example_texts(examples), vocab_size=vocab_size)

    def encode(self, example, max_length: int):
        return data_lib.encode_example(self.tokenizer, example, max_length)

    stacked_batches = False  # micro-batches are cut from each batch by the train step

    def epoch_batches(
        self, encoded, *, batch_size: int, seed: int, epoch: int, micro_batches: int = 1
    ) -> Sequence[dict]:
        buckets = tuple(self.config.data.bucket_lengths)
        return data_lib.make_epoch_batches(encoded, batch_size=batch_size, bucket_lengths=buckets, seed=seed, epoch=epoch)

    def eval_batches(self, encoded, *, batch_size: int) -> Sequence[dict]:
        buckets = tuple(self.config.data.bucket_lengths)
        return data_lib.make_eval_batches(encoded, batch_size=batch_size, bucket_lengths=buckets)

    def loss_fn(self, functional: FunctionalModule) -> Callable:
        def loss_fn(params, batch):
            logits = functional.apply(params, batch["input_ids"], attention_mask=batch["attention_mask"])
            return _masked_loss(logits, batch)

        return loss_fn

    def batch_specs(self, batch: dict) -> dict:
        """PartitionSpecs of a batch: every array (B, ...) split on its batch axis over `data`."""
        return jax.tree.map(lambda x: PartitionSpec("data", *([None] * (x.ndim - 1))), batch)

    def generate_answers(self, functional, params, examples, *, max_new_tokens, stop_ids, pad_id) -> list[str]:
        prompts = [data_lib.encode_prompt(self.tokenizer, example) for example in examples]
        batches = data_lib.make_prompt_batches(
            prompts,
            batch_size=self.config.eval.batch_size,
            bucket_lengths=tuple(self.config.data.bucket_lengths),
            pad_id=pad_id,
        )

        def generate(params, ids, mask, max_new_tokens):
            return qwen2.greedy_generate(
                functional, params, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id
            )

        return metrics_lib.generate_answers(generate, params, batches, self._decode, len(prompts), max_new_tokens)

    def _decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


class VisionLanguageFamily(TextFamily):
    """Qwen2.5-VL on mixtures whose examples carry images (built-in digits, LLaVA, Vision-FLAN)."""

    name = "qwen2_5_vl"

    def __init__(self, ctx):
        super().__init__(ctx)
        self._images: dict = {}  # processed images, shared by the examples that use them

    @functools.cached_property
    def image_config(self) -> vision_data.ImageProcessingConfig:
        images = self.config.data.images
        fields = dict(min_pixels=images.min_pixels, max_pixels=images.max_pixels)
        return vision_data.ImageProcessingConfig(**fields)

    def model_config(self):
        model = self.config.model
        if model.checkpoint:
            return qwen2_5_vl.Qwen2_5_VLConfig.from_pretrained_dir(model.checkpoint, **self._overrides())
        if model.get("published", ""):
            return qwen2_5_vl.published_config(model.published, **self._overrides())
        tokenizer = self.tokenizer
        ids = tokenizer.convert_tokens_to_ids(
            ["<|endoftext|>", "<|im_end|>", vision_data.IMAGE_PAD, vision_data.VISION_START, vision_data.VISION_END]
        )
        vision = qwen2_5_vl.VisionConfig(out_hidden_size=model.scratch.hidden_size, **dict(model.vision))
        return qwen2_5_vl.Qwen2_5_VLConfig(
            **dict(model.scratch),
            **self._overrides(),
            vocab_size=len(tokenizer),
            bos_token_id=ids[0],
            eos_token_id=ids[1],
            pad_token_id=ids[0],
            image_token_id=ids[2],
            # The built-in mixtures have no videos; an id outside the vocabulary never matches.
            video_token_id=len(tokenizer),
            vision_start_token_id=ids[3],
            vision_end_token_id=ids[4],
            vision_config=vision,
        )

    def build_model(self, model_config, rngs):
        return qwen2_5_vl.Qwen2_5_VLForConditionalGeneration(model_config, rngs=rngs)

    def load_hf_params(self, directory) -> dict:
        model, _ = qwen2_5_vl.load_hf_checkpoint(directory)
        return FunctionalModule.from_module(model)[1]

    def train_tokenizer(self, examples, vocab_size: int):
        return vision_data.train_vl_tokenizer(data_lib.example_texts(examples), vocab_size=vocab_size)

    def _processed_images(self, example):
        return vision_data.process_example_images(example, self.image_config, cache=self._images)

    def encode(self, example, max_length: int):
        return vision_data.encode_vl_example(self.tokenizer, example, self._processed_images(example), max_length)

    stacked_batches = True

    def epoch_batches(
        self, encoded, *, batch_size: int, seed: int, epoch: int, micro_batches: int = 1
    ) -> Sequence[dict]:
        """Shuffled training batches of `micro_batches` stacked micro-batches of batch_size / micro_batches rows.

        Image patches of all rows share one array per micro-batch, so micro-batches are built
        separately and stacked on a leading axis instead of being cut from one batch.
        """
        if batch_size % micro_batches:
            raise ConfigError(f"train.batch_size={batch_size} is not divisible by train.micro_batches={micro_batches}")
        rows_per_micro_batch = batch_size // micro_batches
        rng = np.random.default_rng([seed, epoch])
        micro_plan = self._plan_batches(encoded, rng.permutation(len(encoded)), rows_per_micro_batch)

        by_length: dict[int, list[list[int]]] = {}
        for length, rows in micro_plan:
            by_length.setdefault(length, []).append(rows)
        plan = []
        for length, groups in sorted(by_length.items()):
            for start in range(0, len(groups), micro_batches):
                chunk = groups[start : start + micro_batches]
                chunk += [[] for _ in range(micro_batches - len(chunk))]  # all-padding micro-batches
                plan.append((length, chunk))
        plan = [plan[index] for index in rng.permutation(len(plan))]
        return _LazyBatches(plan, functools.partial(self._collate_stacked, encoded, rows_per_micro_batch))

    def eval_batches(self, encoded, *, batch_size: int) -> Sequence[dict]:
        plan = self._plan_batches(encoded, np.arange(len(encoded)), batch_size)
        return _LazyBatches(plan, functools.partial(self._collate, encoded, batch_size))

    def _plan_batches(self, encoded, order, batch_size: int) -> list[tuple[int, list[int]]]:
        """Group example indices into (bucket length, rows) batches within the patch budget."""
        buckets = tuple(self.config.data.bucket_lengths)
        max_patches = self.config.data.images.max_patches
        open_batches: dict[int, tuple[list[int], int]] = {}
        plan = []
        for index in order:
            item = encoded[index]
            length = data_lib.bucket_length(len(item.input_ids), buckets)
            patches = len(item.pixel_values)
            if patches > max_patches:
                raise ConfigError(
                    f"an example has {patches} image patches, more than config.data.images.max_patches="
                    f"{max_patches}; raise it or lower config.data.images.max_pixels"
                )
            rows, used = open_batches.get(length, ([], 0))
            if len(rows) == batch_size or used + patches > max_patches:
                plan.append((length, rows))
                rows, used = [], 0
            open_batches[length] = (rows + [int(index)], used + patches)
        plan += [(length, rows) for length, (rows, _) in sorted(open_batches.items()) if rows]
        return plan

    def _collate_stacked(self, encoded, batch_size: int, entry) -> dict:
        length, chunks = entry
        micro = [self._collate(encoded, batch_size, (length, rows)) for rows in chunks]
        return jax.tree.map(lambda *arrays: np.stack(arrays), *micro)

    def _collate(self, encoded, batch_size: int, entry) -> dict:
        length, rows = entry
        examples = [
            {
                "input_ids": encoded[row].input_ids,
                "loss_mask": encoded[row].loss_mask,
                "pixel_values": encoded[row].pixel_values,
                "image_grid_thw": encoded[row].image_grid_thw,
            }
            for row in rows
        ]
        return qwen2_5_vl.collate_vl_batch(
            examples,
            batch_size=batch_size,
            seq_len=length,
            max_patches=self.config.data.images.max_patches,
            config=self._ctx.model_config,
            pad_id=0,
        )

    def loss_fn(self, functional: FunctionalModule) -> Callable:
        def loss_fn(params, batch):
            logits = functional.apply(
                params,
                batch["input_ids"],
                batch["attention_mask"],
                batch["positions"],
                batch["pixel_values"],
                batch["vision"],
            )
            return _masked_loss(logits, batch)

        return loss_fn

    def batch_specs(self, batch: dict) -> dict:
        """PartitionSpecs of a (possibly stacked) batch: token arrays split by row, images replicated.

        The patches of all rows share one array, so they cannot be split by row; every device
        runs the vision tower on all of them (it is small next to the language model).
        """
        lead = (None,) * (batch["input_ids"].ndim - 2)  # the micro-batch axis of stacked batches
        specs = {}
        for key, array in batch.items():
            if key in ("input_ids", "targets", "loss_mask", "attention_mask"):
                specs[key] = PartitionSpec(*lead, "data", None)
            elif key == "positions":
                specs[key] = PartitionSpec(*lead, None, "data", None)
            else:
                specs[key] = jax.tree.map(lambda _: PartitionSpec(), array)
        return specs

    def generate_answers(self, functional, params, examples, *, max_new_tokens, stop_ids, pad_id) -> list[str]:
        prompts = [vision_data.encode_vl_prompt(self.tokenizer, example, self._processed_images(example)) for example in examples]
        answers = []
        batch_size = self.config.eval.batch_size
        for start in range(0, len(prompts), batch_size):
            batch = qwen2_5_vl.collate_vl_prompts(
                prompts[start : start + batch_size],
                batch_size=batch_size,
                bucket_lengths=tuple(self.config.data.bucket_lengths),
                max_patches=self.config.data.images.max_patches,
                config=self._ctx.model_config,
                pad_id=pad_id,
            )
            tokens = qwen2_5_vl.greedy_generate(
                functional,
                params,
                batch["input_ids"],
                batch["attention_mask"],
                batch["positions"],
                batch["pixel_values"],
                batch["vision"],
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_ids,
                pad_token_id=pad_id,
            )
            rows = len(prompts[start : start + batch_size])
            answers += [self._decode(row) for row in np.asarray(tokens)[:rows]]
        return answers


class _LazyBatches(Sequence):
    """Batches built on access from a plan, so an epoch of image batches never sits in memory."""

    def __init__(self, plan: list, build: Callable):
        self._plan = plan
        self._build = build

    def __len__(self) -> int:
        return len(self._plan)

    def __getitem__(self, index: int) -> dict:
        return self._build(self._plan[index])


def _masked_loss(logits, batch):
    mask = batch["loss_mask"].astype(jnp.float32)
    token_loss = token_cross_entropy(logits, batch["targets"])
    return jnp.sum(token_loss * mask), jnp.sum(mask)


FAMILIES = {family.name: family for family in (TextFamily, VisionLanguageFamily)}


def make_family(ctx):
    """Return the family named by `ctx.config.model.family` ('qwen2' or 'qwen2_5_vl')."""
    name = ctx.config.model.get("family", "qwen2")
    if name not in FAMILIES:
        raise ConfigError(f"config.model.family = {name!r} is invalid; use one of {sorted(FAMILIES)}")
    return FAMILIES[name](ctx)
