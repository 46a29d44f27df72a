"""Tests for the Qwen2.5-VL chat format with images: token ids, layout, image-pad expansion, loss mask, truncation."""

import numpy as np
import pytest

from merit_jax.data import Example, Message, encode_example, load_tokenizer, save_tokenizer
from merit_jax.data.vision import (
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    VISION_TOKENS,
    VL_CHAT_TEMPLATE,
    ImagePixels,
    ImageTruncationError,
    encode_vl_example,
    encode_vl_prompt,
    process_example_images,
    process_image,
    train_vl_tokenizer,
)

# Ids in Qwen2.5-VL's vocabulary (and Qwen2-VL's and Qwen3's).
QWEN_IDS = {"<|im_start|>": 151644, "<|im_end|>": 151645, VISION_START: 151652, VISION_END: 151653, IMAGE_PAD: 151655}

# A square digit-sized image (4 tokens) and a 84x56 one (6 tokens).
SQUARE = ImagePixels(np.full((56, 56, 3), 200, np.uint8))
WIDE = ImagePixels(np.tile(np.arange(84, dtype=np.uint8)[None, :, None], (56, 1, 3)))

ONE_IMAGE = Example(
    "digits", (Message("user", "<image>What digit is this?"), Message("assistant", "Seven.")), (SQUARE,)
)
TWO_IMAGES = Example(
    "compare",
    (
        Message("system", "Answer in one word."),
        Message("user", "Image 1: <image>\nImage 2: <image>\nAre they the same?"),
        Message("assistant", "No"),
        Message("user", "Which one is wider?"),
        Message("assistant", "Second"),
    ),
    (SQUARE, WIDE),
)


def _span_lengths(input_ids, pad_id):
    """Lengths of the runs of `pad_id` in `input_ids`, in order."""
    lengths, run = [], 0
    for token in input_ids:
        if token == pad_id:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_qwen_special_token_ids(qwen_tokenizer):
    assert qwen_tokenizer.convert_tokens_to_ids(list(QWEN_IDS)) == list(QWEN_IDS.values())


def test_prompt_renders_qwen25vl_layout(qwen_tokenizer):
    images = process_example_images(ONE_IMAGE)
    prompt = encode_vl_prompt(qwen_tokenizer, ONE_IMAGE, images)
    text = qwen_tokenizer.decode(prompt.input_ids, skip_special_tokens=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>"
        "What digit is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.input_ids.dtype == np.int32
    assert prompt.image_grid_thw.tolist() == [[1, 4, 4]]


def test_ids_equal_tokenizing_expanded_text(qwen_tokenizer):
    # The Qwen2.5-VL processor expands <|image_pad|> in the text before tokenizing it.
    images = process_example_images(TWO_IMAGES)
    encoded = encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=512)
    expanded = (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n"
        f"Image 1: {VISION_START}{IMAGE_PAD * 4}{VISION_END}\nImage 2: {VISION_START}{IMAGE_PAD * 6}{VISION_END}\n"
        "Are they the same?<|im_end|>\n<|im_start|>assistant\nNo<|im_end|>\n"
        "<|im_start|>user\nWhich one is wider?<|im_end|>\n<|im_start|>assistant\nSecond<|im_end|>\n"
    )
    expected = qwen_tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids.tolist() == expected


def test_image_pads_match_grids(qwen_tokenizer):
    images = process_example_images(TWO_IMAGES)
    encoded = encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=512)
    assert [image.num_tokens for image in images] == [4, 6]
    assert _span_lengths(encoded.input_ids, QWEN_IDS[IMAGE_PAD]) == [4, 6]
    assert encoded.image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 6]]
    assert encoded.pixel_values.shape == (16 + 24, 1176)
    assert encoded.pixel_values.dtype == np.float32
    assert np.array_equal(encoded.pixel_values[:16], images[0].pixel_values)
    assert np.array_equal(encoded.pixel_values[16:], images[1].pixel_values)


def test_mask_covers_final_answer_only(qwen_tokenizer):
    images = process_example_images(TWO_IMAGES)
    encoded = encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=512)
    masked = qwen_tokenizer.decode(encoded.input_ids[encoded.loss_mask], skip_special_tokens=False)
    positions = np.flatnonzero(encoded.loss_mask)
    assert masked == "Second<|im_end|>"
    assert np.all(np.diff(positions) == 1)
    assert not encoded.loss_mask[encoded.input_ids == QWEN_IDS[IMAGE_PAD]].any()
    assert encoded.loss_mask.dtype == np.bool_


def test_mask_same_without_generation_tags(qwen_tokenizer):
    # Real Qwen2.5-VL templates have no {% generation %}; the prompt-prefix rule must agree.
    plain = qwen_tokenizer.__class__.from_pretrained(qwen_tokenizer.name_or_path, local_files_only=True)
    plain.chat_template = VL_CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    images = process_example_images(TWO_IMAGES)
    tagged = encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=512)
    untagged = encode_vl_example(plain, TWO_IMAGES, images, max_length=512)
    assert np.array_equal(tagged.input_ids, untagged.input_ids)
    assert np.array_equal(tagged.loss_mask, untagged.loss_mask)


def test_prompt_is_prefix_of_example(qwen_tokenizer):
    images = process_example_images(TWO_IMAGES)
    encoded = encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=512)
    prompt = encode_vl_prompt(qwen_tokenizer, TWO_IMAGES, images)
    assert np.array_equal(encoded.input_ids[: len(prompt.input_ids)], prompt.input_ids)
    assert np.flatnonzero(encoded.loss_mask)[0] == len(prompt.input_ids)


def test_truncation_cuts_answer_only(qwen_tokenizer):
    images = process_example_images(ONE_IMAGE)
    full = encode_vl_example(qwen_tokenizer, ONE_IMAGE, images, max_length=512)
    cut = encode_vl_example(qwen_tokenizer, ONE_IMAGE, images, max_length=len(full.input_ids) - 2)
    assert cut.truncated
    assert not full.truncated
    assert np.array_equal(cut.input_ids, full.input_ids[: len(full.input_ids) - 2])
    assert np.array_equal(cut.pixel_values, full.pixel_values)


def test_truncation_inside_image_raises(qwen_tokenizer):
    images = process_example_images(TWO_IMAGES)
    full = encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=512)
    last_end = int(np.flatnonzero(full.input_ids == QWEN_IDS[VISION_END])[-1])

    # Room for everything up to the last <|vision_end|> is enough.
    fits = encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=last_end + 1)
    assert fits.truncated
    assert fits.input_ids[-1] == QWEN_IDS[VISION_END]

    with pytest.raises(ImageTruncationError, match=rf"task 'compare' needs {last_end + 1} tokens .* max_length={last_end}"):
        encode_vl_example(qwen_tokenizer, TWO_IMAGES, images, max_length=last_end)


def test_text_only_example_has_no_pixels(qwen_tokenizer):
    example = Example("text", (Message("user", "Hi"), Message("assistant", "Hello")))
    encoded = encode_vl_example(qwen_tokenizer, example, (), max_length=64)
    assert encoded.pixel_values.shape == (0, 1176)
    assert encoded.image_grid_thw.shape == (0, 3)
    assert QWEN_IDS[IMAGE_PAD] not in encoded.input_ids


def test_processed_count_must_match_images(qwen_tokenizer):
    with pytest.raises(ValueError, match=r"has 2 image\(s\) but 1 processed image\(s\)"):
        encode_vl_example(qwen_tokenizer, TWO_IMAGES, (process_image(SQUARE),), max_length=512)


def test_placeholder_outside_user_message_raises(qwen_tokenizer):
    example = Example("t", (Message("user", "Look."), Message("assistant", "<image>")), (SQUARE,))
    with pytest.raises(ValueError, match=r"messages\[1\] is a 'assistant' message with 1 <image>"):
        encode_vl_example(qwen_tokenizer, example, process_example_images(example), max_length=64)


def test_literal_vision_token_in_text_raises(qwen_tokenizer):
    example = Example("t", (Message("user", "<image> and <|image_pad|>"), Message("assistant", "x")), (SQUARE,))
    with pytest.raises(ValueError, match=r"contains the special token <\|image_pad\|> as text"):
        encode_vl_example(qwen_tokenizer, example, process_example_images(example), max_length=64)


def test_text_tokenizer_without_vision_tokens_raises(chat_tokenizer):
    with pytest.raises(ValueError, match="does not encode .* as single tokens; use train_vl_tokenizer"):
        encode_vl_example(chat_tokenizer, ONE_IMAGE, process_example_images(ONE_IMAGE), max_length=64)


def test_local_tokenizer_has_vision_tokens(vl_tokenizer):
    ids = vl_tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    size = len(vl_tokenizer)
    assert ids == [size - 3, size - 2, size - 1]
    assert size <= 768
    assert vl_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert vl_tokenizer.eos_token == "<|im_end|>"
    # The placeholder is not in the training texts, so no merge spells it.
    assert "<image>" not in vl_tokenizer.get_vocab()


def test_local_tokenizer_encodes_digit_tasks(vl_tokenizer, digit_tasks):
    pad_id = vl_tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    cache = {}
    for task in digit_tasks:
        example = task.examples[0]
        images = process_example_images(example, cache=cache)
        encoded = encode_vl_example(vl_tokenizer, example, images, max_length=256)
        masked = vl_tokenizer.decode(encoded.input_ids[encoded.loss_mask], skip_special_tokens=False)
        assert masked == example.messages[-1].content + "<|im_end|>", task.name
        assert _span_lengths(encoded.input_ids, pad_id) == [4] * len(example.images), task.name
        rendered = vl_tokenizer.decode(encoded.input_ids, skip_special_tokens=False)
        assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"), task.name


def test_local_tokenizer_survives_save_and_load(vl_tokenizer, tmp_path):
    loaded = load_tokenizer(save_tokenizer(vl_tokenizer, tmp_path / "tokenizer"))
    assert loaded.convert_tokens_to_ids(list(VISION_TOKENS)) == vl_tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    images = process_example_images(TWO_IMAGES)
    original = encode_vl_example(vl_tokenizer, TWO_IMAGES, images, max_length=512)
    again = encode_vl_example(loaded, TWO_IMAGES, images, max_length=512)
    assert np.array_equal(original.input_ids, again.input_ids)
    assert np.array_equal(original.loss_mask, again.loss_mask)


def test_text_path_sees_one_token_per_image(vl_tokenizer):
    # The text encoder renders the placeholder as plain text; only the VL encoder expands it.
    text = encode_example(vl_tokenizer, ONE_IMAGE, max_length=512)
    assert vl_tokenizer.convert_tokens_to_ids(IMAGE_PAD) not in text.input_ids


def test_vocab_size_too_small_raises():
    with pytest.raises(ValueError, match="vocab_size=260 is below 262"):
        train_vl_tokenizer(["abc"], vocab_size=260)
