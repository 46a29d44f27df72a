"""Tasks and mixtures, the JSONL mixture format, splits, tokenizer and chat template, and batching."""

from merit_jax.data.batching import (
    bucket_length,
    make_epoch_batches,
    make_eval_batches,
    make_prompt_batches,
    power_of_two_buckets,
)
from merit_jax.data.builtin import TASKS as BUILTIN_TASKS
from merit_jax.data.builtin import builtin_mixture, describe_tasks
from merit_jax.data.jsonl import MixtureFormatError, read_jsonl_mixture
from merit_jax.data.splits import TaskSplit, split_mixture, split_task
from merit_jax.data.tasks import ROLES, Example, Message, Task, stable_name_hash, task_rng
from merit_jax.data.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    EncodedExample,
    encode_example,
    encode_prompt,
    example_texts,
    load_tokenizer,
    reference_answer,
    save_tokenizer,
    supervised_token_count,
    train_tokenizer,
)

__all__ = [
    "BUILTIN_TASKS",
    "CHAT_TEMPLATE",
    "ROLES",
    "SPECIAL_TOKENS",
    "EncodedExample",
    "Example",
    "Message",
    "MixtureFormatError",
    "Task",
    "TaskSplit",
    "bucket_length",
    "builtin_mixture",
    "describe_tasks",
    "encode_example",
    "encode_prompt",
    "example_texts",
    "load_tokenizer",
    "make_epoch_batches",
    "make_eval_batches",
    "make_prompt_batches",
    "power_of_two_buckets",
    "read_jsonl_mixture",
    "reference_answer",
    "save_tokenizer",
    "split_mixture",
    "split_task",
    "stable_name_hash",
    "supervised_token_count",
    "task_rng",
    "train_tokenizer",
]
