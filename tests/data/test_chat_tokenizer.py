"""Tests for the BPE tokenizer, the ChatML template, loss masks, truncation and save/load."""

import json
import os

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from merit_jax.data import (
    SPECIAL_TOKENS,
    Example,
    Message,
    encode_example,
    encode_prompt,
    load_tokenizer,
    reference_answer,
    save_tokenizer,
    supervised_token_count,
    train_tokenizer,
)

# ChatML without {% generation %} and with a default system turn, in the style of Qwen2.5.
PLAIN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _example(*pairs, task="t"):
    return Example(task, tuple(Message(role, content) for role, content in pairs))


MULTI_TURN = _example(
    ("system", "Answer briefly."),
    ("user", "Write 21 in French words."),
    ("assistant", "vingt et un"),
    ("user", "And 42 in Russian?"),
    ("assistant", "сорок два"),
)


def _masked_text(tokenizer, encoded):
    return tokenizer.decode(encoded.input_ids[encoded.loss_mask], skip_special_tokens=False)


def test_special_tokens_have_fixed_ids(chat_tokenizer):
    assert chat_tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2]
    assert chat_tokenizer.eos_token == "<|im_end|>"
    assert chat_tokenizer.pad_token == "<|endoftext|>"
    assert len(chat_tokenizer) == 1024


def test_template_renders_chatml(chat_tokenizer):
    example = _example(("user", "Hi"), ("assistant", "Hello"))
    encoded = encode_example(chat_tokenizer, example, max_length=64)
    text = chat_tokenizer.decode(encoded.input_ids, skip_special_tokens=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"


def test_mask_covers_exactly_answer_tokens(chat_tokenizer, small_mixture):
    for task in small_mixture:
        for example in task.examples:
            encoded = encode_example(chat_tokenizer, example, max_length=512)
            prompt = encode_prompt(chat_tokenizer, example)
            positions = np.flatnonzero(encoded.loss_mask)

            assert _masked_text(chat_tokenizer, encoded) == reference_answer(example) + "<|im_end|>"
            assert np.array_equal(encoded.input_ids[: len(prompt)], prompt)
            assert positions[0] == len(prompt)
            assert np.all(np.diff(positions) == 1)
            # Only the newline after <|im_end|> follows the answer.
            assert chat_tokenizer.decode(encoded.input_ids[positions[-1] + 1 :]) == "\n"


def test_mask_skips_earlier_assistant_turns(chat_tokenizer):
    encoded = encode_example(chat_tokenizer, MULTI_TURN, max_length=512)
    assert _masked_text(chat_tokenizer, encoded) == "сорок два<|im_end|>"
    assert "vingt" in chat_tokenizer.decode(encoded.input_ids)


def test_prompt_ends_with_generation_prompt(chat_tokenizer):
    prompt = encode_prompt(chat_tokenizer, MULTI_TURN)
    text = chat_tokenizer.decode(prompt, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n")
    assert text.endswith("And 42 in Russian?<|im_end|>\n<|im_start|>assistant\n")
    assert "сорок" not in text
    assert prompt.dtype == np.int32


def test_dtypes_and_supervised_count(chat_tokenizer):
    encoded = encode_example(chat_tokenizer, MULTI_TURN, max_length=512)
    answer_ids = chat_tokenizer("сорок два", add_special_tokens=False)["input_ids"]
    assert encoded.input_ids.dtype == np.int32
    assert encoded.loss_mask.dtype == np.bool_
    assert supervised_token_count(encoded) == len(answer_ids) + 1
    assert not encoded.truncated


def test_truncation_cuts_answer_end(chat_tokenizer):
    full = encode_example(chat_tokenizer, MULTI_TURN, max_length=512)
    cut_at = len(full.input_ids) - 3
    cut = encode_example(chat_tokenizer, MULTI_TURN, max_length=cut_at)
    assert cut.truncated
    assert len(cut.input_ids) == cut_at
    assert np.array_equal(cut.input_ids, full.input_ids[:cut_at])
    assert np.array_equal(cut.loss_mask, full.loss_mask[:cut_at])
    assert supervised_token_count(cut) == supervised_token_count(full) - 2


def test_exact_fit_is_not_truncated(chat_tokenizer):
    full = encode_example(chat_tokenizer, MULTI_TURN, max_length=512)
    fit = encode_example(chat_tokenizer, MULTI_TURN, max_length=len(full.input_ids))
    assert not fit.truncated
    assert np.array_equal(fit.input_ids, full.input_ids)


def test_decode_is_lossless_across_scripts(chat_tokenizer):
    text = "1\u202f234,50\xa0€ · ١٬٢٣٤ · 二〇二三年七月四日 · Ιουλίου · ४२७ · &lt;b&gt; · 🙂"
    ids = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat_tokenizer.decode(ids) == text


def test_digits_are_single_tokens(chat_tokenizer):
    ids = chat_tokenizer("year 20231231", add_special_tokens=False)["input_ids"]
    pieces = chat_tokenizer.convert_ids_to_tokens(ids)
    assert pieces[-8:] == list("20231231")


def test_vocab_size_below_bytes_raises():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(["abc"], vocab_size=100)


def test_save_then_load_gives_same_encoding(chat_tokenizer, tmp_path):
    directory = save_tokenizer(chat_tokenizer, tmp_path / "tokenizer")
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(directory))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert "{% generation %}" in config["chat_template"]

    loaded = load_tokenizer(directory)
    for example in (MULTI_TURN, _example(("user", "Σ?"), ("assistant", "ς"))):
        original = encode_example(chat_tokenizer, example, max_length=512)
        again = encode_example(loaded, example, max_length=512)
        assert np.array_equal(original.input_ids, again.input_ids)
        assert np.array_equal(original.loss_mask, again.loss_mask)
    assert loaded.eos_token == "<|im_end|>"


def test_save_replaces_existing_directory_atomically(chat_tokenizer, tmp_path):
    target = tmp_path / "tokenizer"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_tokenizer(chat_tokenizer, target)
    assert not (target / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["tokenizer"]


def test_template_without_generation_tags_uses_prompt_prefix(chat_tokenizer, tmp_path):
    directory = save_tokenizer(chat_tokenizer, tmp_path / "plain")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = PLAIN_TEMPLATE
    config_path.write_text(json.dumps(config))
    plain = load_tokenizer(directory)

    example = _example(("user", "Write 42 in French words."), ("assistant", "quarante-deux"))
    encoded = encode_example(plain, example, max_length=512)
    assert plain.decode(encoded.input_ids, skip_special_tokens=False).startswith("<|im_start|>system\nYou are helpful.")
    assert _masked_text(plain, encoded) == "quarante-deux<|im_end|>"
    assert _masked_text(plain, encode_example(plain, MULTI_TURN, max_length=512)) == "сорок два<|im_end|>"


def test_load_without_chat_template_raises(chat_tokenizer, tmp_path):
    directory = tmp_path / "bare"
    bare = PreTrainedTokenizerFast(tokenizer_object=chat_tokenizer.backend_tokenizer)
    bare.save_pretrained(directory)
    with pytest.raises(ValueError, match="has no chat template"):
        load_tokenizer(directory)
