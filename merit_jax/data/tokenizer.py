"""Byte-level BPE tokenizer with the ChatML chat template, and encoding of examples for training.

The template renders each turn as `<|im_start|>{role}\\n{content}<|im_end|>\\n`, as Qwen2 chat
models do, and wraps assistant content plus its `<|im_end|>` in `{% generation %}`, so that
`apply_chat_template(..., return_assistant_tokens_mask=True)` returns the loss mask.
"""

import dataclasses
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from merit_jax.data.tasks import Example

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2's pre-tokenizer split: every digit is its own piece, so numbers are read digit by
# digit, and newlines never merge with the text that follows them.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedExample:
    """A chat-templated example: `input_ids` int32[L], `loss_mask` bool[L] over the final answer."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    truncated: bool


def example_texts(examples: Iterable[Example]) -> Iterator[str]:
    """Yield one training text per message (role, newline, content) for `train_tokenizer`."""
    for example in examples:
        for message in example.messages:
            yield f"{message.role}\n{message.content}"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and return it with the ChatML template set.

    The special tokens get ids 0, 1, 2 in the order of `SPECIAL_TOKENS`. As in Qwen2 instruct
    models, `<|im_end|>` is the end-of-sequence token and `<|endoftext|>` the padding token.
    """
    smallest = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(f"vocab_size={vocab_size} is below {smallest} (256 bytes + special tokens); raise it")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` (chat template inside) to `directory`.

    The files are written to a temporary sibling directory that is then renamed, so readers
    never see a partial tokenizer. An existing `directory` is replaced.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        # save_jinja_files=False keeps the template inside tokenizer_config.json, where older
        # transformers releases look for it.
        tokenizer.save_pretrained(staging, save_jinja_files=False)
        if directory.exists():
            # NOTE: between these two renames `directory` is briefly absent.
            retired = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
            os.rename(directory, retired)
            os.rename(staging, directory)
            shutil.rmtree(retired)
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer, ours or any local Hugging Face tokenizer directory with a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(directory), local_files_only=True, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise ValueError(
            f"tokenizer in {directory} has no chat template; add a 'chat_template' to its "
            "tokenizer_config.json or a chat_template.jinja file"
        )
    return tokenizer


def reference_answer(example: Example) -> str:
    """Return the text of the final assistant answer, the target of exact-match evaluation."""
    return example.messages[-1].content


def encode_prompt(tokenizer: PreTrainedTokenizerFast, example: Example) -> np.ndarray:
    """Encode every message but the final answer, plus the generation prompt: int32[L]."""
    encoded = tokenizer.apply_chat_template(
        _as_dicts(example.messages[:-1]), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return np.asarray(encoded["input_ids"], dtype=np.int32)


def encode_example(tokenizer: PreTrainedTokenizerFast, example: Example, max_length: int) -> EncodedExample:
    """Encode `example` with its loss mask over the final answer, cut to `max_length` tokens.

    The mask covers the final assistant content and the end-of-turn token that closes it
    (`<|im_end|>` for ChatML). Earlier assistant turns are context and carry no loss. An
    example longer than `max_length` loses its end, which is the end of the answer, and is
    flagged `truncated`.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")

    if _GENERATION_TAG.search(_default_template(tokenizer)):
        encoded = tokenizer.apply_chat_template(
            _as_dicts(example.messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        input_ids = np.asarray(encoded["input_ids"], dtype=np.int32)
        loss_mask = _last_run(np.asarray(encoded["assistant_masks"], dtype=bool))
    else:
        input_ids, loss_mask = _mask_after_prompt(tokenizer, example)

    if not loss_mask.any():
        raise ValueError(
            f"example of task {example.task!r} has no answer tokens after chat templating; "
            "check that the chat template renders the final assistant message"
        )
    if loss_mask[0]:
        raise ValueError(
            f"example of task {example.task!r} starts with an answer token, which no position "
            "can predict; the chat template must render a prompt before the answer"
        )

    truncated = len(input_ids) > max_length
    return EncodedExample(input_ids[:max_length], loss_mask[:max_length], truncated)


def supervised_token_count(encoded: EncodedExample) -> int:
    """Return the number of loss-bearing tokens of `encoded` (its share of the token budget n_t)."""
    return int(encoded.loss_mask.sum())


def _default_template(tokenizer) -> str:
    # Some tokenizers store several named templates; apply_chat_template then uses "default".
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return template or ""


def _as_dicts(messages) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]


def _last_run(mask: np.ndarray) -> np.ndarray:
    """Keep only the last contiguous run of True in `mask` (the final assistant turn)."""
    result = np.zeros_like(mask)
    positions = np.flatnonzero(mask)
    if positions.size == 0:
        return result
    end = positions[-1] + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    result[start:end] = True
    return result


def _mask_after_prompt(tokenizer: PreTrainedTokenizerFast, example: Example) -> tuple[np.ndarray, np.ndarray]:
    """Mask for templates without `{% generation %}`: the tokens after the prompt.

    Trailing tokens that decode to whitespace only (the newline after the end-of-turn token)
    stay unmasked.
    """
    prompt = encode_prompt(tokenizer, example)
    encoded = tokenizer.apply_chat_template(_as_dicts(example.messages), tokenize=True, return_dict=True)
    input_ids = np.asarray(encoded["input_ids"], dtype=np.int32)
    if len(input_ids) <= len(prompt) or not np.array_equal(input_ids[: len(prompt)], prompt):
        raise ValueError(
            f"example of task {example.task!r}: the chat template does not render the prompt as a "
            "prefix of the full conversation, so the answer tokens cannot be located; add "
            "{% generation %} ... {% endgeneration %} around assistant content in the template"
        )

    end = len(input_ids)
    while end > len(prompt) and not tokenizer.decode(input_ids[end - 1 : end]).strip():
        end -= 1
    loss_mask = np.zeros(len(input_ids), dtype=bool)
    loss_mask[len(prompt) : end] = True
    return input_ids, loss_mask
