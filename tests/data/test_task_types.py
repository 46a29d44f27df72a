"""Tests for the conversation types and the per-task seeding rule."""

import pytest

from merit_jax.data import Example, Message, Task, stable_name_hash, task_rng


def test_message_rejects_unknown_role():
    with pytest.raises(ValueError, match="invalid message role 'bot'"):
        Message("bot", "hi")


def test_example_must_end_with_assistant():
    with pytest.raises(ValueError, match="ends with a 'user' message"):
        Example("t", (Message("user", "q"),))


def test_example_needs_messages():
    with pytest.raises(ValueError, match="no messages"):
        Example("t", ())


def test_task_rejects_foreign_examples():
    example = Example("other", (Message("user", "q"), Message("assistant", "a")))
    with pytest.raises(ValueError, match="labelled 'other'"):
        Task("t", "family", (example,))


def test_types_are_frozen_and_comparable():
    first = Example("t", (Message("user", "q"), Message("assistant", "a")))
    second = Example("t", (Message("user", "q"), Message("assistant", "a")))
    assert first == second
    assert hash(first) == hash(second)
    with pytest.raises(AttributeError):
        first.task = "u"


def test_stable_name_hash_is_fixed():
    # The value is part of the data contract: changing it changes every split and mixture.
    assert stable_name_hash("number_words_fr") == 0x74F3457D34F6B52E
    assert stable_name_hash("a") != stable_name_hash("b")
    assert 0 <= stable_name_hash("a") < 2**64


def test_task_rng_streams_differ():
    assert task_rng(0, "t", 0).integers(1 << 30) != task_rng(0, "t", 1).integers(1 << 30)
    assert task_rng(0, "t").integers(1 << 30) == task_rng(0, "t").integers(1 << 30)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_task_rng_rejects_invalid_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        task_rng(seed, "t")
