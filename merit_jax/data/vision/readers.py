"""Read LLaVA conversation files and Vision-FLAN annotations into `Task`s with image references.

A file is a JSON list of records or JSONL with one record per line. A record looks like
{"id": "...", "image": "dir/file.jpg", "conversations": [{"from": "human", "value":
"<image>\\nWhat is shown?"}, {"from": "gpt", "value": "A cat."}]}, and Vision-FLAN records
also carry "task_name". Image paths are relative to `image_root`. Reading checks that each
image file exists, but it neither decodes images nor writes anything.
"""

import json
import os
import re
from collections.abc import Iterator

from merit_jax.data.jsonl import MixtureFormatError
from merit_jax.data.tasks import IMAGE_PLACEHOLDER, Example, Message, Task
from merit_jax.data.vision.images import ImageFile

# LLaVA's speaker names and the chat roles they map to.
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}

VISION_FLAN_FAMILY = "vision_flan"

_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


def read_llava_conversations(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike,
    task_name: str,
    family: str = "llava",
    min_examples: int = 1,
    split_turns: bool = False,
) -> Task:
    """Read a LLaVA conversation file as one task named `task_name`.

    Records without "image" are text-only conversations. "image" may also be a list of
    paths for records with several images. Each record gives one example whose loss is on
    its final answer. With `split_turns`, each answer of a multi-turn record gives its own
    example, with the earlier turns as context.
    """
    if not isinstance(task_name, str) or not task_name.strip():
        raise ValueError(f"task_name must be a non-empty string, got {task_name!r}")
    path, root = _check_paths(path, image_root)
    _check_min_examples(min_examples)

    examples = []
    for where, record in _records(path):
        examples.extend(_parse_record(where, record, root, task_name, image_required=False, split_turns=split_turns))

    if len(examples) < min_examples:
        raise MixtureFormatError(
            f"{path}: {len(examples)} example(s), fewer than min_examples={min_examples}; "
            "add records or lower min_examples"
        )
    return Task(task_name, family, tuple(examples))


def read_vision_flan(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike,
    min_examples_per_task: int = 1,
    family: str | None = None,
) -> list[Task]:
    """Read Vision-FLAN annotations into one task per "task_name", in the order of first appearance.

    Every record needs "task_name", "image" and "conversations". The family of a task is
    `family` when given. Otherwise it is the source dataset, which Vision-FLAN writes before
    the "+" of a task name ("GTSRB+image_classification" has family "GTSRB"), or
    "vision_flan" for names without "+".
    """
    path, root = _check_paths(path, image_root)
    _check_min_examples(min_examples_per_task)

    examples: dict[str, list[Example]] = {}
    first_seen: dict[str, str] = {}
    for where, record in _records(path):
        _require_object(where, record)
        task_name = record.get("task_name")
        if not isinstance(task_name, str) or not task_name.strip():
            raise MixtureFormatError(
                f'{where}: missing or empty "task_name"; give each Vision-FLAN record its task name as a string'
            )
        parsed = _parse_record(where, record, root, task_name, image_required=True, split_turns=False)
        examples.setdefault(task_name, []).extend(parsed)
        first_seen.setdefault(task_name, where)

    if not examples:
        raise MixtureFormatError(f"{path}: the file contains no records; add Vision-FLAN records")
    too_small = [name for name, items in examples.items() if len(items) < min_examples_per_task]
    if too_small:
        listed = ", ".join(f"{name!r} ({len(examples[name])}, first at {first_seen[name]})" for name in too_small)
        raise MixtureFormatError(
            f"{path}: task(s) {listed} have fewer than min_examples_per_task={min_examples_per_task} "
            "examples; add records, remove the tasks, or lower min_examples_per_task"
        )

    tasks = []
    for name, items in examples.items():
        if family is not None:
            task_family = family
        elif "+" in name:
            task_family = name.split("+", 1)[0]
        else:
            task_family = VISION_FLAN_FAMILY
        tasks.append(Task(name, task_family, tuple(items)))
    return tasks


def _check_paths(path, image_root) -> tuple[str, str]:
    path = os.fspath(path)
    root = os.fspath(image_root)
    if not os.path.isfile(path):
        raise MixtureFormatError(f"{path}: annotation file not found; check the path")
    if not os.path.isdir(root):
        raise MixtureFormatError(f"image_root {root} is not a directory; give the folder that image paths are relative to")
    return path, root


def _check_min_examples(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"the minimum number of examples must be a positive integer, got {value!r}")


def _records(path: str) -> Iterator[tuple[str, object]]:
    """Yield (location for messages, decoded record) for a JSON list or a JSONL file."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise MixtureFormatError(f"{path}:{line}: invalid UTF-8 at byte {error.start}; save the file as UTF-8") from None

    start = _JSON_WHITESPACE.match(text).end()
    if start == len(text):
        raise MixtureFormatError(f"{path}: the file is empty; write a JSON list of records or one record per line")
    if text[start] == "[":
        yield from _json_list_records(path, text, start)
    elif text[start] == "{":
        yield from _jsonl_records(path, text)
    else:
        line = text.count("\n", 0, start) + 1
        raise MixtureFormatError(
            f"{path}:{line}: expected '[' (a JSON list of records) or '{{' (one JSON record per line), "
            f"got {text[start]!r}; fix the file format"
        )


def _json_list_records(path: str, text: str, start: int) -> Iterator[tuple[str, object]]:
    """Decode the elements of a JSON list one at a time, so that each error can name its line."""
    decoder = json.JSONDecoder()
    position = _JSON_WHITESPACE.match(text, start + 1).end()

    # Lines are counted incrementally: recounting from the start of a 100 MB file for every
    # record would be quadratic.
    line, counted_to = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        return line

    index = 0
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            try:
                record, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                raise MixtureFormatError(
                    f"{path}:{error.lineno}: invalid JSON in record {index} ({error.msg} at column {error.colno}); "
                    "fix the record"
                ) from None
            yield f"{path}:{line_at(position)} (record {index})", record
            index += 1

            position = _JSON_WHITESPACE.match(text, end).end()
            if text.startswith(",", position):
                position = _JSON_WHITESPACE.match(text, position + 1).end()
            elif text.startswith("]", position):
                position += 1
                break
            else:
                raise MixtureFormatError(
                    f"{path}:{line_at(position)}: expected ',' or ']' after record {index - 1}; fix the JSON list"
                )

    rest = _JSON_WHITESPACE.match(text, position).end()
    if rest != len(text):
        raise MixtureFormatError(f"{path}:{line_at(rest)}: unexpected text after the closing ']'; remove it")


def _jsonl_records(path: str, text: str) -> Iterator[tuple[str, object]]:
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{line_number}", json.loads(line)
        except json.JSONDecodeError as error:
            raise MixtureFormatError(
                f"{path}:{line_number}: invalid JSON ({error.msg} at column {error.colno}); "
                "write one complete JSON record per line, or the whole file as one JSON list"
            ) from None


def _parse_record(
    where: str, record: object, root: str, task_name: str, *, image_required: bool, split_turns: bool
) -> list[Example]:
    _require_object(where, record)
    if "id" in record:
        where = f"{where} id {record['id']!r}"

    images = _parse_images(where, record.get("image"), root, image_required)
    messages = _parse_conversations(where, record.get("conversations"))

    placeholders = sum(message.content.count(IMAGE_PLACEHOLDER) for message in messages)
    if placeholders != len(images):
        raise MixtureFormatError(
            f"{where}: {len(images)} image(s) but {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the "
            f"conversation; put exactly one {IMAGE_PLACEHOLDER} in a human turn for each image"
        )

    if not split_turns:
        return [Example(task_name, tuple(messages), tuple(images))]

    # One example per answer: the conversation up to that answer, with the images placed in it.
    examples = []
    used = 0
    for end, message in enumerate(messages):
        used += message.content.count(IMAGE_PLACEHOLDER)
        if message.role != "assistant" or not any(earlier.role == "user" for earlier in messages[:end]):
            continue
        if not message.content.strip():
            raise MixtureFormatError(
                f"{where}: conversations[{end}] is an empty \"gpt\" answer, which split_turns would train on; "
                "give the answer text or read without split_turns"
            )
        examples.append(Example(task_name, tuple(messages[: end + 1]), tuple(images[:used])))
    return examples


def _require_object(where: str, record: object) -> None:
    if not isinstance(record, dict):
        raise MixtureFormatError(
            f'{where}: expected a JSON object, got {type(record).__name__}; write {{"image": ..., "conversations": [...]}}'
        )


def _parse_images(where: str, value: object, root: str, required: bool) -> list[ImageFile]:
    if value is None:
        if required:
            raise MixtureFormatError(f'{where}: missing "image"; give the image path relative to image_root')
        return []
    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(item, str) and item.strip() for item in paths):
        raise MixtureFormatError(
            f'{where}: "image" must be a non-empty path string or a list of them, got {value!r}; fix the field'
        )

    images = []
    for relative in paths:
        normalized = os.path.normpath(relative)
        if os.path.isabs(relative) or normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
            raise MixtureFormatError(
                f'{where}: "image" path {relative!r} points outside image_root; give it relative to image_root'
            )
        full = os.path.join(root, normalized)
        if not os.path.isfile(full):
            raise MixtureFormatError(
                f"{where}: image file {full} not found; check image_root and the record's \"image\" path"
            )
        images.append(ImageFile(full, origin=where))
    return images


def _parse_conversations(where: str, conversations: object) -> list[Message]:
    if not isinstance(conversations, list) or not conversations:
        if conversations is None:
            got = "missing"
        elif isinstance(conversations, list):
            got = "empty"
        else:
            got = f"a {type(conversations).__name__}"
        raise MixtureFormatError(
            f'{where}: "conversations" is {got}; give a list of {{"from": "human" or "gpt", "value": ...}} turns'
        )

    messages = []
    for position, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise MixtureFormatError(
                f'{where}: conversations[{position}] is a {type(turn).__name__}, not an object; write {{"from": ..., "value": ...}}'
            )
        speaker = turn.get("from")
        if speaker not in LLAVA_ROLES:
            raise MixtureFormatError(
                f'{where}: conversations[{position}] has unknown "from" {speaker!r}; use one of {", ".join(LLAVA_ROLES)}'
            )
        value = turn.get("value")
        if not isinstance(value, str):
            got = "missing" if value is None else f"a {type(value).__name__}"
            raise MixtureFormatError(f'{where}: conversations[{position}] "value" is {got}; give the text as a string')
        role = LLAVA_ROLES[speaker]
        if role == "system" and position > 0:
            raise MixtureFormatError(
                f"{where}: conversations[{position}] is a system turn; put the system turn first or remove it"
            )
        if role != "user" and IMAGE_PLACEHOLDER in value:
            raise MixtureFormatError(
                f"{where}: conversations[{position}] ({speaker!r}) contains {IMAGE_PLACEHOLDER}; "
                "images may only appear in human turns, so move the placeholder there"
            )
        messages.append(Message(role, value))

    if messages[-1].role != "assistant":
        raise MixtureFormatError(
            f'{where}: the conversation ends with a "{conversations[-1]["from"]}" turn; end it with the "gpt" answer'
        )
    if not messages[-1].content.strip():
        raise MixtureFormatError(f"{where}: the final \"gpt\" answer is empty; give the expected answer text")
    if not any(message.role == "user" for message in messages[:-1]):
        raise MixtureFormatError(f'{where}: no "human" turn before the final answer; add the request')
    return messages
