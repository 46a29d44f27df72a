"""Qwen2.5-VL chat format with images, and encoding of examples with images for training and generation.

Each `<image>` placeholder of a user message becomes `<|vision_start|>`, then N copies of
`<|image_pad|>`, then `<|vision_end|>`, where N = grid_t * grid_h * grid_w / merge_size^2 of
that image, as Qwen2.5-VL's processor expands them. The vision tower's outputs replace the
`<|image_pad|>` embeddings one to one.
"""

import dataclasses
import sys
from collections.abc import Iterable, Sequence

import numpy as np
from transformers import PreTrainedTokenizerFast

from merit_jax.data.tasks import IMAGE_PLACEHOLDER, Example, Message
from merit_jax.data.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, encode_example, encode_prompt, train_tokenizer
from merit_jax.data.vision.image_processing import ImageProcessingConfig, ProcessedImage

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VISION_TOKENS = (VISION_START, VISION_END, IMAGE_PAD)

# Qwen2.5-VL's chat template inserts this system turn when a conversation has none.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The ChatML template of `merit_jax.data.tokenizer` (with `{% generation %}` for the loss
# mask), preceded by Qwen2.5-VL's default system turn. Message content arrives with the
# vision tokens already in place of the placeholders.
VL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}" + CHAT_TEMPLATE
)

# The width of `pixel_values` for an example without images, which has no processed image
# to take it from.
_DEFAULT_PATCH_DIM = ImageProcessingConfig().patch_dim


class ImageTruncationError(ValueError):
    """An example whose image tokens do not fit in `max_length`; the message names the task and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedVLExample:
    """A chat-templated example with images.

    `input_ids` int32[L] and `loss_mask` bool[L] over the final answer and its `<|im_end|>`.
    `pixel_values` float32[n, patch_dim] stacks the patches of all images in order, and
    `image_grid_thw` int64[k, 3] contains each image's patch grid.
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    truncated: bool


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedVLPrompt:
    """The prompt of an example with images, ending in the generation prompt: `input_ids` int32[L]."""

    input_ids: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray


def train_vl_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a tokenizer as `train_tokenizer` does, add the vision tokens, and set `VL_CHAT_TEMPLATE`.

    The three vision tokens are special tokens with the last three ids, so `len(tokenizer)`
    is at most `vocab_size`. `<image>` placeholders are removed from the training texts
    because they never reach the model as text.
    """
    smallest = 256 + len(SPECIAL_TOKENS) + len(VISION_TOKENS)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size} is below {smallest} (256 bytes + chat and vision special tokens); raise it"
        )

    stripped = (text.replace(IMAGE_PLACEHOLDER, "") for text in texts)
    tokenizer = train_tokenizer(stripped, vocab_size=vocab_size - len(VISION_TOKENS), min_frequency=min_frequency)
    tokenizer.add_special_tokens({"extra_special_tokens": list(VISION_TOKENS)}, replace_extra_special_tokens=False)
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    return tokenizer


def encode_vl_example(
    tokenizer: PreTrainedTokenizerFast,
    example: Example,
    processed_images: Sequence[ProcessedImage],
    max_length: int,
) -> EncodedVLExample:
    """Encode `example` with its images, its loss mask over the final answer, cut to `max_length` tokens.

    The loss mask is the one `encode_example` computes for the same conversation, so it
    covers the final assistant content and its `<|im_end|>`. Image tokens never carry loss.
    An example longer than `max_length` loses its end and is flagged `truncated`, but only
    text after the last image may be cut. Otherwise `ImageTruncationError` is raised.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer of at least 2, got {max_length!r}")
    text_example = _inline_vision_tokens(example, processed_images)
    base = encode_example(tokenizer, text_example, max_length=sys.maxsize)

    input_ids, loss_mask, span_ends = _expand_image_pads(tokenizer, example, base.input_ids, base.loss_mask, processed_images)
    truncated = len(input_ids) > max_length
    if truncated and span_ends and span_ends[-1] >= max_length:
        raise ImageTruncationError(
            f"example of task {example.task!r} needs {span_ends[-1] + 1} tokens to keep its "
            f"{len(processed_images)} image(s) whole, above max_length={max_length}; raise max_length, "
            "lower ImageProcessingConfig.max_pixels so that images take fewer tokens, or drop the example"
        )

    pixel_values, image_grid_thw = _stack_images(processed_images)
    return EncodedVLExample(input_ids[:max_length], loss_mask[:max_length], pixel_values, image_grid_thw, truncated)


def encode_vl_prompt(
    tokenizer: PreTrainedTokenizerFast, example: Example, processed_images: Sequence[ProcessedImage]
) -> EncodedVLPrompt:
    """Encode every message of `example` but the final answer, with its images, plus the generation prompt."""
    text_example = _inline_vision_tokens(example, processed_images)
    prompt = encode_prompt(tokenizer, text_example)
    input_ids, _, _ = _expand_image_pads(tokenizer, example, prompt, np.zeros(len(prompt), dtype=bool), processed_images)
    pixel_values, image_grid_thw = _stack_images(processed_images)
    return EncodedVLPrompt(input_ids, pixel_values, image_grid_thw)


def _inline_vision_tokens(example: Example, processed_images: Sequence[ProcessedImage]) -> Example:
    """Return `example` as text, with one `<|vision_start|><|image_pad|><|vision_end|>` per image."""
    where = f"example of task {example.task!r}"
    if len(processed_images) != len(example.images):
        raise ValueError(
            f"{where} has {len(example.images)} image(s) but {len(processed_images)} processed image(s) "
            "were given; process every image of the example, in order (see process_example_images)"
        )

    span = VISION_START + IMAGE_PAD + VISION_END
    messages = []
    for position, message in enumerate(example.messages):
        # Literal vision tokens in the text would be indistinguishable from real image spans.
        for token in VISION_TOKENS:
            if token in message.content:
                raise ValueError(
                    f"{where}: messages[{position}] contains the special token {token} as text; "
                    f"remove it and mark images with {IMAGE_PLACEHOLDER} instead"
                )
        placeholders = message.content.count(IMAGE_PLACEHOLDER)
        if placeholders and message.role != "user":
            raise ValueError(
                f"{where}: messages[{position}] is a {message.role!r} message with {placeholders} "
                f"{IMAGE_PLACEHOLDER} placeholder(s); images may only appear in user messages, so move them there"
            )
        if placeholders and not example.images:
            raise ValueError(
                f"{where}: messages[{position}] contains {IMAGE_PLACEHOLDER} but the example has no images; "
                "attach the images or remove the placeholder"
            )
        messages.append(Message(message.role, message.content.replace(IMAGE_PLACEHOLDER, span)))
    return Example(example.task, tuple(messages))


def _vision_token_ids(tokenizer: PreTrainedTokenizerFast, where: str) -> tuple[int, int, int]:
    """Return the ids of (vision start, vision end, image pad), checking each is one special token."""
    ids = tokenizer(VISION_START + VISION_END + IMAGE_PAD, add_special_tokens=False)["input_ids"]
    known = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    if len(ids) != 3 or list(ids) != list(known):
        raise ValueError(
            f"{where}: the tokenizer does not encode {', '.join(VISION_TOKENS)} as single tokens; "
            "use train_vl_tokenizer or a Qwen2-VL / Qwen2.5-VL tokenizer"
        )
    return ids[0], ids[1], ids[2]


def _expand_image_pads(
    tokenizer: PreTrainedTokenizerFast,
    example: Example,
    input_ids: np.ndarray,
    loss_mask: np.ndarray,
    processed_images: Sequence[ProcessedImage],
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Repeat each `<|image_pad|>` to its image's token count.

    Returns the expanded ids and mask and the position of each image's `<|vision_end|>`.
    """
    if not processed_images:
        return input_ids, loss_mask, []

    where = f"example of task {example.task!r}"
    start_id, end_id, pad_id = _vision_token_ids(tokenizer, where)
    pads = np.flatnonzero(input_ids == pad_id)
    if len(pads) != len(processed_images):
        raise ValueError(
            f"{where}: the chat template rendered {len(pads)} {IMAGE_PAD} token(s) for "
            f"{len(processed_images)} image(s); the template must render user message content unchanged"
        )
    for pad in pads:
        if pad == 0 or pad + 1 == len(input_ids) or input_ids[pad - 1] != start_id or input_ids[pad + 1] != end_id:
            raise ValueError(
                f"{where}: an {IMAGE_PAD} at token {pad} is not enclosed by {VISION_START} and {VISION_END}; "
                "the chat template must render user message content unchanged"
            )
    if loss_mask[pads].any():
        raise ValueError(f"{where}: the loss mask covers image tokens; images may only appear in user messages")

    repeats = np.ones(len(input_ids), dtype=np.int64)
    for pad, image in zip(pads, processed_images):
        if image.num_tokens < 1:
            raise ValueError(f"{where}: an image with grid {image.grid_thw.tolist()} has no tokens; reprocess it")
        repeats[pad] = image.num_tokens

    # The new position of old token i is the number of tokens that precede it after expansion.
    starts = np.concatenate([[0], np.cumsum(repeats)[:-1]])
    span_ends = [int(starts[pad + 1]) for pad in pads]
    return np.repeat(input_ids, repeats).astype(np.int32), np.repeat(loss_mask, repeats), span_ends


def _stack_images(processed_images: Sequence[ProcessedImage]) -> tuple[np.ndarray, np.ndarray]:
    if not processed_images:
        # NOTE: without images the width is the default config's (1176); batching must not
        # assume it matches a model with another patch size.
        return np.zeros((0, _DEFAULT_PATCH_DIM), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)
    pixel_values = np.concatenate([image.pixel_values for image in processed_images], axis=0).astype(np.float32, copy=False)
    image_grid_thw = np.stack([np.asarray(image.grid_thw, dtype=np.int64) for image in processed_images])
    return pixel_values, image_grid_thw
