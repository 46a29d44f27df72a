"""Conversation types shared by every data source, and the seeding rule for per-task randomness.

A `Task` is one dataset D_t of the mixture. Its examples are chat conversations whose last
message is the assistant answer, the only part that carries loss.
"""

import dataclasses
import hashlib

import numpy as np

ROLES = ("system", "user", "assistant")

# Marks where an image of `Example.images` sits in a message, in the order of the images.
IMAGE_PLACEHOLDER = "<image>"


@dataclasses.dataclass(frozen=True)
class Message:
    """One chat turn: `role` is one of `ROLES`."""

    role: str
    content: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"invalid message role {self.role!r}; expected one of {ROLES}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be str, got {type(self.content).__name__}")


@dataclasses.dataclass(frozen=True)
class Example:
    """A conversation of task `task` whose last message is the assistant answer.

    `images` are hashable image references (see `merit_jax.data.vision`), one for each
    `IMAGE_PLACEHOLDER` in the messages, in order. Text-only examples have none.
    """

    task: str
    messages: tuple[Message, ...]
    images: tuple = ()

    def __post_init__(self):
        if not self.messages:
            raise ValueError(f"example of task {self.task!r} has no messages")
        if self.messages[-1].role != "assistant":
            raise ValueError(
                f"example of task {self.task!r} ends with a {self.messages[-1].role!r} message; "
                "the last message must be the assistant answer"
            )
        if not isinstance(self.images, tuple):
            raise TypeError(f"example of task {self.task!r}: images must be a tuple, got {type(self.images).__name__}")

        # Text-only examples may contain the placeholder as plain text, so only count it when
        # images are attached.
        if self.images:
            placeholders = sum(message.content.count(IMAGE_PLACEHOLDER) for message in self.messages)
            if placeholders != len(self.images):
                raise ValueError(
                    f"example of task {self.task!r} has {len(self.images)} image(s) but {placeholders} "
                    f"{IMAGE_PLACEHOLDER} placeholder(s) in its messages; put exactly one placeholder "
                    "where each image belongs"
                )


@dataclasses.dataclass(frozen=True)
class Task:
    """A named dataset of the mixture; `family` groups related tasks in result tables."""

    name: str
    family: str
    examples: tuple[Example, ...]

    def __post_init__(self):
        if not self.name:
            raise ValueError("task name must be a non-empty string")
        foreign = [example.task for example in self.examples if example.task != self.name]
        if foreign:
            raise ValueError(
                f"task {self.name!r} contains examples labelled {foreign[0]!r}; "
                "every example must carry the name of its task"
            )


def stable_name_hash(name: str) -> int:
    """Hash `name` to a 64-bit integer that is the same in every process and on every machine.

    Python's `hash()` is salted per process, so it must never seed anything.
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def task_rng(seed: int, name: str, stream: int = 0) -> np.random.Generator:
    """Return the generator for random choice number `stream` of task `name` under `seed`."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), stable_name_hash(name), int(stream)])
