"""Tests for reading user mixtures from JSONL: valid files and every reported error."""

import json
import os

import pytest

from merit_jax.data import Example, Message, MixtureFormatError, jsonl, read_jsonl_mixture


def _line(task="greet", user="Say hi.", answer="hi", **extra):
    record = {"task": task, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    record.update(extra)
    return json.dumps(record, ensure_ascii=False)


def _write(tmp_path, lines, name="mix.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _messages(*pairs):
    return json.dumps({"task": "t", "messages": [{"role": role, "content": content} for role, content in pairs]})


def test_reads_tasks_in_first_line_order(tmp_path):
    lines = [_line("b", "1", "one"), "", _line("a", "2", "two", family="math"), "   ", _line("b", "3", "three")]
    tasks = read_jsonl_mixture(_write(tmp_path, lines), min_examples_per_task=1)
    assert [task.name for task in tasks] == ["b", "a"]
    assert [len(task.examples) for task in tasks] == [2, 1]
    assert tasks[0].family == "user"
    assert tasks[1].family == "math"
    assert tasks[0].examples[1] == Example("b", (Message("user", "3"), Message("assistant", "three")))


def test_keeps_system_and_multi_turn_messages(tmp_path):
    line = json.dumps({
        "task": "chat",
        "id": 17,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "name": "bot"},
            {"role": "user", "content": "Λέξη;"},
            {"role": "assistant", "content": "Ναι"},
        ],
    }, ensure_ascii=False)
    task = read_jsonl_mixture(_write(tmp_path, [line]), min_examples_per_task=1)[0]
    assert [message.role for message in task.examples[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert task.examples[0].messages[-1].content == "Ναι"


def test_family_on_any_line_applies_to_task(tmp_path):
    lines = [_line("t", "1", "a"), _line("t", "2", "b", family="f")]
    assert read_jsonl_mixture(_write(tmp_path, lines), min_examples_per_task=1)[0].family == "f"


def test_reading_writes_nothing(tmp_path):
    path = _write(tmp_path, [_line()])
    before = {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(tmp_path)}
    read_jsonl_mixture(path, min_examples_per_task=1)
    after = {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(tmp_path)}
    assert before == after


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _line().encode() + b"\r\n")
    assert len(read_jsonl_mixture(path, min_examples_per_task=1)[0].examples) == 1


# (case, lines, line number of the error, phrase the message must contain)
ERROR_CASES = [
    ("invalid_json", [_line(), '{"task": "greet", "messages": ['], 2, "invalid JSON"),
    ("not_an_object", ["[1, 2]"], 1, "expected a JSON object"),
    ("missing_task", [json.dumps({"messages": []})], 1, '"task"'),
    ("empty_task", [_line(task="  ")], 1, '"task"'),
    ("task_not_string", [_line(task=3)], 1, '"task"'),
    ("missing_messages", [_line(), json.dumps({"task": "greet"})], 2, '"messages" is missing'),
    ("messages_not_list", [json.dumps({"task": "t", "messages": "hi"})], 1, '"messages" is a str'),
    ("messages_empty", [json.dumps({"task": "t", "messages": []})], 1, '"messages" is empty'),
    ("message_not_object", [json.dumps({"task": "t", "messages": ["hi"]})], 1, "messages[0] is a str"),
    ("unknown_role", [_messages(("user", "q"), ("bot", "a"))], 1, "unknown role 'bot'"),
    ("missing_role", [json.dumps({"task": "t", "messages": [{"content": "q"}]})], 1, "unknown role None"),
    ("content_not_string", [json.dumps({"task": "t", "messages": [{"role": "user", "content": 5}]})], 1, "a int"),
    ("content_missing", [json.dumps({"task": "t", "messages": [{"role": "user"}]})], 1, "is missing"),
    ("ends_with_user", [_line(), _messages(("user", "q"), ("assistant", "a"), ("user", "more?"))], 2, "ends with a 'user'"),
    ("empty_answer", [_line(answer=" \n")], 1, "final assistant answer is empty"),
    ("no_user_message", [_messages(("system", "s"), ("assistant", "a"))], 1, "no user message"),
    ("late_system_message", [_messages(("user", "q"), ("system", "s"), ("assistant", "a"))], 1, "system message"),
    ("family_not_string", [_line(family=7)], 1, '"family"'),
    ("family_conflict", [_line(family="x"), _line(family="y")], 2, "line 1 gave it family 'x'"),
]


@pytest.mark.parametrize("case, lines, line_number, phrase", ERROR_CASES, ids=[case[0] for case in ERROR_CASES])
def test_error_names_file_and_line(tmp_path, case, lines, line_number, phrase):
    path = _write(tmp_path, lines, name=f"{case}.jsonl")
    with pytest.raises(MixtureFormatError) as raised:
        read_jsonl_mixture(path, min_examples_per_task=1)
    message = str(raised.value)
    assert f"{path}:{line_number}:" in message
    assert phrase in message
    assert "\n" not in message


def test_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        read_jsonl_mixture(_write(tmp_path, ["nope"]), min_examples_per_task=1)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(_line().encode() + b"\n" + _line(user="caf\xe9").encode("utf-8").replace(b"\xc3\xa9", b"\xe9") + b"\n")
    with pytest.raises(MixtureFormatError, match=f"{path}:2: invalid UTF-8"):
        read_jsonl_mixture(path, min_examples_per_task=1)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(MixtureFormatError, match=f"{path}: file not found"):
        read_jsonl_mixture(path, min_examples_per_task=1)


def test_overlong_line_names_line(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 200)
    path = _write(tmp_path, [_line(), _line(answer="x" * 300), _line()])
    with pytest.raises(MixtureFormatError, match=f"{path}:2: line is longer than 200 bytes"):
        read_jsonl_mixture(path, min_examples_per_task=1)


def test_line_at_limit_is_read(tmp_path, monkeypatch):
    line = _line(answer="y" * 150)
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", len(line) + 1)
    path = _write(tmp_path, [line, line])
    tasks = read_jsonl_mixture(path, min_examples_per_task=1)
    assert len(tasks[0].examples) == 2


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["zero_bytes", "blank_lines"])
def test_empty_file_raises(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(MixtureFormatError, match=f"{path}: the file contains no examples"):
        read_jsonl_mixture(path, min_examples_per_task=1)


def test_small_task_names_count_minimum_and_option(tmp_path):
    lines = [_line("big", str(i), "x") for i in range(3)] + ["", _line("tiny", "q", "a")]
    path = _write(tmp_path, lines)
    with pytest.raises(MixtureFormatError) as raised:
        read_jsonl_mixture(path, min_examples_per_task=3)
    message = str(raised.value)
    assert str(path) in message
    assert "'tiny' (1, first on line 5)" in message
    assert "min_examples_per_task=3" in message
    assert "'big'" not in message


def test_minimum_reached_exactly_is_accepted(tmp_path):
    lines = [_line("t", str(i), "x") for i in range(3)]
    assert len(read_jsonl_mixture(_write(tmp_path, lines), min_examples_per_task=3)[0].examples) == 3


def test_invalid_minimum_raises(tmp_path):
    with pytest.raises(ValueError, match="min_examples_per_task"):
        read_jsonl_mixture(_write(tmp_path, [_line()]), min_examples_per_task=0)
