"""Read a user mixture from a JSONL file with one chat example per line.

Line format: {"task": "name", "messages": [{"role": "user", "content": "..."},
{"role": "assistant", "content": "..."}], "family": "optional"}. Blank lines are skipped,
other top-level keys and message keys are ignored, and every problem is reported with the
file name and the 1-based line number.
"""

import json
import os
from collections.abc import Iterator

from merit_jax.data.tasks import ROLES, Example, Message, Task

DEFAULT_FAMILY = "user"

# 64 MiB of text is far longer than any context these models train on (Qwen2.5 models accept
# at most 128k tokens, a few hundred kilobytes). A longer line comes from a corrupt or binary
# file, and the limit stops it from being read into memory as one line.
MAX_LINE_BYTES = 64 * 1024 * 1024


class MixtureFormatError(ValueError):
    """A mixture file that cannot be read; the message names the file, the line and the fix."""


def read_jsonl_mixture(path: str | os.PathLike, *, min_examples_per_task: int) -> list[Task]:
    """Read the tasks of a JSONL mixture file, in the order of their first line.

    Raises `MixtureFormatError` on the first invalid line, on a file without examples, and
    when any task has fewer than `min_examples_per_task` examples.
    """
    if isinstance(min_examples_per_task, bool) or not isinstance(min_examples_per_task, int) or min_examples_per_task < 1:
        raise ValueError(f"min_examples_per_task must be a positive integer, got {min_examples_per_task!r}")
    if not os.path.isfile(path):
        raise MixtureFormatError(f"{path}: file not found; set config.data.jsonl_path to an existing JSONL file")

    path = os.fspath(path)
    examples: dict[str, list[Example]] = {}
    families: dict[str, tuple[str, int]] = {}
    first_lines: dict[str, int] = {}

    for line_number, record in _records(path):
        example, family = _parse_example(path, line_number, record)
        name = example.task
        examples.setdefault(name, []).append(example)
        first_lines.setdefault(name, line_number)

        # A task's family may be given on any of its lines, but two lines must not disagree.
        if family is not None:
            known = families.setdefault(name, (family, line_number))
            if known[0] != family:
                raise MixtureFormatError(
                    f"{path}:{line_number}: task {name!r} has family {family!r}, but line {known[1]} "
                    f"gave it family {known[0]!r}; use one family per task"
                )

    if not examples:
        raise MixtureFormatError(f"{path}: the file contains no examples; add one JSON object per line")

    too_small = [name for name, items in examples.items() if len(items) < min_examples_per_task]
    if too_small:
        counts = ", ".join(f"{name!r} ({len(examples[name])}, first on line {first_lines[name]})" for name in too_small)
        raise MixtureFormatError(
            f"{path}: task(s) {counts} have fewer than min_examples_per_task={min_examples_per_task} "
            "examples; add examples to them, remove them, or lower min_examples_per_task"
        )

    return [
        Task(name, families.get(name, (DEFAULT_FAMILY, 0))[0], tuple(items)) for name, items in examples.items()
    ]


def _records(path: str) -> Iterator[tuple[int, object]]:
    """Yield (line number, decoded JSON value) for every non-blank line of `path`."""
    with open(path, "rb") as handle:
        line_number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            line_number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise MixtureFormatError(
                    f"{path}:{line_number}: line is longer than {MAX_LINE_BYTES} bytes; "
                    "write one example per line and shorten or split this one"
                )

            # A byte order mark is legal at the start of a UTF-8 file but not inside JSON.
            try:
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise MixtureFormatError(
                    f"{path}:{line_number}: invalid UTF-8 at byte {error.start}; save the file as UTF-8"
                ) from None
            if not text.strip():
                continue
            try:
                yield line_number, json.loads(text)
            except json.JSONDecodeError as error:
                raise MixtureFormatError(
                    f"{path}:{line_number}: invalid JSON ({error.msg} at column {error.colno}); "
                    "write one complete JSON object per line"
                ) from None


def _parse_example(path: str, line: int, record: object) -> tuple[Example, str | None]:
    where = f"{path}:{line}"
    if not isinstance(record, dict):
        raise MixtureFormatError(
            f"{where}: expected a JSON object, got {type(record).__name__}; "
            'write {"task": ..., "messages": [...]} on each line'
        )

    task = record.get("task")
    if not isinstance(task, str) or not task.strip():
        raise MixtureFormatError(f'{where}: missing or empty "task"; give the task name as a non-empty string')

    family = record.get("family")
    if family is not None and (not isinstance(family, str) or not family.strip()):
        raise MixtureFormatError(f'{where}: "family" must be a non-empty string; fix it or leave the key out')

    messages = record.get("messages")
    if not isinstance(messages, list):
        got = "missing" if messages is None else f"a {type(messages).__name__}"
        raise MixtureFormatError(
            f'{where}: "messages" is {got}; give a list of {{"role": ..., "content": ...}} objects'
        )
    if not messages:
        raise MixtureFormatError(f'{where}: "messages" is empty; add a user message and an assistant answer')

    parsed = [_parse_message(where, position, message) for position, message in enumerate(messages)]
    _check_conversation(where, parsed)
    return Example(task, tuple(parsed)), family


def _parse_message(where: str, position: int, message: object) -> Message:
    if not isinstance(message, dict):
        raise MixtureFormatError(
            f"{where}: messages[{position}] is a {type(message).__name__}, not an object; "
            'write it as {"role": ..., "content": ...}'
        )
    role = message.get("role")
    if role not in ROLES:
        raise MixtureFormatError(f"{where}: messages[{position}] has unknown role {role!r}; use one of {', '.join(ROLES)}")
    content = message.get("content")
    if not isinstance(content, str):
        got = "missing" if content is None else f"a {type(content).__name__}"
        raise MixtureFormatError(f'{where}: messages[{position}] "content" is {got}; give the text as a string')
    return Message(role, content)


def _check_conversation(where: str, messages: list[Message]) -> None:
    last = messages[-1]
    if last.role != "assistant":
        raise MixtureFormatError(
            f"{where}: the conversation ends with a {last.role!r} message; "
            "end it with the assistant answer that the model should learn"
        )
    if not last.content.strip():
        raise MixtureFormatError(f"{where}: the final assistant answer is empty; give the expected answer text")
    if not any(message.role == "user" for message in messages[:-1]):
        raise MixtureFormatError(f"{where}: no user message before the final answer; add the user request")
    for position, message in enumerate(messages[1:], start=1):
        if message.role == "system":
            raise MixtureFormatError(
                f"{where}: messages[{position}] is a system message; put the system message first or remove it"
            )
