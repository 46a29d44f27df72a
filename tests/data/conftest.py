"""Shared fixtures for the data tests: a small built-in mixture and a tokenizer trained on it."""

import pytest

from merit_jax.data import builtin_mixture, example_texts, train_tokenizer


@pytest.fixture(scope="session")
def small_mixture():
    return builtin_mixture(examples_per_task=12, seed=0)


@pytest.fixture(scope="session")
def chat_tokenizer(small_mixture):
    examples = [example for task in small_mixture for example in task.examples]
    return train_tokenizer(example_texts(examples), vocab_size=1024)
