"""Tests for the LLaVA and Vision-FLAN readers: fixtures in the real formats, and one broken variant per error."""

import json
import os
import shutil

import pytest

from merit_jax.data import MixtureFormatError
from merit_jax.data.vision import ImageFile, load_image, read_llava_conversations, read_vision_flan

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LLAVA = os.path.join(FIXTURES, "llava_conversations.json")
FLAN_JSON = os.path.join(FIXTURES, "vision_flan_annotation.json")
FLAN_JSONL = os.path.join(FIXTURES, "vision_flan_annotation.jsonl")
LLAVA_ROOT = os.path.join(FIXTURES, "images")
FLAN_ROOT = os.path.join(FIXTURES, "images_191task_1k")


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write(tmp_path, records, name="broken.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def test_llava_fixture_loads():
    task = read_llava_conversations(LLAVA, image_root=LLAVA_ROOT, task_name="llava_mix")
    assert task.name == "llava_mix"
    assert task.family == "llava"
    assert len(task.examples) == 4

    first, multi_turn, text_only, two_images = task.examples
    assert [message.role for message in first.messages] == ["user", "assistant"]
    assert first.messages[0].content == "<image>\nWhat color is the square?"
    assert first.images == (ImageFile(os.path.join(LLAVA_ROOT, "coco", "red_square.png")),)
    assert multi_turn.messages[-1].content == "Blue."
    assert text_only.images == ()
    assert [message.role for message in two_images.messages] == ["system", "user", "assistant"]
    assert [os.path.basename(image.path) for image in two_images.images] == ["green_triangle.png", "stripes.png"]


def test_llava_images_decode():
    task = read_llava_conversations(LLAVA, image_root=LLAVA_ROOT, task_name="llava_mix")
    for example in task.examples:
        for image in example.images:
            assert load_image(image).ndim == 3


def test_llava_origin_names_file_line_and_id():
    task = read_llava_conversations(LLAVA, image_root=LLAVA_ROOT, task_name="llava_mix")
    origin = task.examples[1].images[0].origin
    line = open(LLAVA, encoding="utf-8").read().splitlines().index(" {") + 1
    assert origin.startswith(f"{LLAVA}:")
    assert "(record 1) id '000000002'" in origin
    # The second record starts on the line after the first record's closing brace.
    assert int(origin.split(":")[1].split(" ")[0]) > line


def test_llava_split_turns_gives_one_example_per_answer():
    task = read_llava_conversations(LLAVA, image_root=LLAVA_ROOT, task_name="llava_mix", split_turns=True)
    assert len(task.examples) == 5
    early, late = task.examples[1], task.examples[2]
    assert early.messages[-1].content == "An oval."
    assert late.messages[-1].content == "Blue."
    assert early.images == late.images


def test_vision_flan_json_and_jsonl_agree():
    from_json = read_vision_flan(FLAN_JSON, image_root=FLAN_ROOT)
    from_jsonl = read_vision_flan(FLAN_JSONL, image_root=FLAN_ROOT)
    assert [task.name for task in from_json] == [
        "VQA-E+image_question_answer",
        "VQA_counting",
        "coco+image_classification_vehicle",
    ]
    assert [task.family for task in from_json] == ["VQA-E", "vision_flan", "coco"]
    assert [len(task.examples) for task in from_json] == [2, 1, 1]
    assert [task.examples for task in from_json] == [task.examples for task in from_jsonl]
    assert read_vision_flan(FLAN_JSON, image_root=FLAN_ROOT, family="flan")[0].family == "flan"


def test_vision_flan_minimum_per_task():
    with pytest.raises(MixtureFormatError, match=r"'VQA_counting' \(1, first at .*record 1.*min_examples_per_task=2"):
        read_vision_flan(FLAN_JSON, image_root=FLAN_ROOT, min_examples_per_task=2)


def test_reading_writes_nothing(tmp_path):
    copy = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, copy)
    before = {path: os.stat(os.path.join(root, path)).st_mtime_ns for root, _, files in os.walk(copy) for path in files}
    read_llava_conversations(copy / "llava_conversations.json", image_root=copy / "images", task_name="t")
    read_vision_flan(copy / "vision_flan_annotation.json", image_root=copy / "images_191task_1k")
    after = {path: os.stat(os.path.join(root, path)).st_mtime_ns for root, _, files in os.walk(copy) for path in files}
    assert before == after
    assert sorted(os.listdir(tmp_path)) == ["fixtures"]


def _drop(record, key):
    record.pop(key)


def _set(key, value):
    def change(record):
        record[key] = value

    return change


def _set_turn(index, key, value):
    def change(record):
        record["conversations"][index][key] = value

    return change


# (mutation of the first LLaVA record, the error it must raise)
LLAVA_BREAKS = {
    "missing conversations": (lambda r: _drop(r, "conversations"), r'"conversations" is missing'),
    "conversations not a list": (_set("conversations", "hi"), r'"conversations" is a str'),
    "empty conversations": (_set("conversations", []), r'"conversations" is empty'),
    "unknown role": (_set_turn(0, "from", "bot"), r"conversations\[0\] has unknown \"from\" 'bot'"),
    "value not a string": (_set_turn(1, "value", 7), r'conversations\[1\] "value" is a int'),
    "missing value": (lambda r: r["conversations"][1].pop("value"), r'conversations\[1\] "value" is missing'),
    "ends with human": (lambda r: r["conversations"].reverse(), r'the conversation ends with a "human" turn'),
    "empty answer": (_set_turn(1, "value", "  "), r'the final "gpt" answer is empty'),
    "no placeholder": (_set_turn(0, "value", "What color?"), r"1 image\(s\) but 0 <image> placeholder"),
    "two placeholders": (_set_turn(0, "value", "<image><image>?"), r"1 image\(s\) but 2 <image> placeholder"),
    "placeholder in answer": (_set_turn(1, "value", "<image>"), r"conversations\[1\] \('gpt'\) contains <image>"),
    "missing image file": (_set("image", "coco/absent.png"), r"image file .*absent.png not found"),
    "path outside root": (_set("image", "../images/coco/red_square.png"), r'"image" path .* points outside image_root'),
    "absolute path": (_set("image", "/etc/hostname"), r'"image" path .* points outside image_root'),
    "image not a string": (_set("image", 5), r'"image" must be a non-empty path string'),
    "late system turn": (
        lambda r: r["conversations"].insert(1, {"from": "system", "value": "x"}),
        r"conversations\[1\] is a system turn",
    ),
}


@pytest.mark.parametrize("case", list(LLAVA_BREAKS))
def test_llava_broken_record_raises(tmp_path, case):
    mutate, message = LLAVA_BREAKS[case]
    records = _load(LLAVA)
    mutate(records[0])
    path = _write(tmp_path, records)
    # With indent=1 the first record's "{" is on line 2.
    with pytest.raises(MixtureFormatError, match=rf"^{path}:2 \(record 0\) id '000000001': {message}"):
        read_llava_conversations(path, image_root=LLAVA_ROOT, task_name="t")


FLAN_BREAKS = {
    "missing task_name": (lambda r: _drop(r, "task_name"), r'missing or empty "task_name"'),
    "empty task_name": (_set("task_name", ""), r'missing or empty "task_name"'),
    "missing image": (lambda r: _drop(r, "image"), r'missing "image"'),
    "missing image file": (_set("image", "VQA_counting/none.png"), r"none.png not found"),
    "unknown role": (_set_turn(1, "from", "assistant"), r"unknown \"from\" 'assistant'"),
}


@pytest.mark.parametrize("case", list(FLAN_BREAKS))
@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_vision_flan_broken_record_raises(tmp_path, case, layout):
    mutate, message = FLAN_BREAKS[case]
    records = _load(FLAN_JSON)
    mutate(records[1])
    if layout == "json":
        path = _write(tmp_path, records)
        location = r":\d+ \(record 1\)"
    else:
        path = tmp_path / "broken.jsonl"
        path.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
        location = ":2"
    with pytest.raises(MixtureFormatError, match=rf"^{path}{location}.*{message}"):
        read_vision_flan(path, image_root=FLAN_ROOT)


def test_invalid_json_names_line(tmp_path):
    text = open(FLAN_JSON, encoding="utf-8").read()
    cut = text.index('"VQA_counting_1"')
    path = tmp_path / "cut.json"
    path.write_text(text[:cut] + "oops" + text[cut:], encoding="utf-8")
    line = text[:cut].count("\n") + 1
    with pytest.raises(MixtureFormatError, match=rf"^{path}:{line}: invalid JSON in record 1"):
        read_vision_flan(path, image_root=FLAN_ROOT)


def test_invalid_jsonl_line_names_line(tmp_path):
    lines = open(FLAN_JSONL, encoding="utf-8").read().splitlines()
    lines[2] = lines[2][:-5]
    path = tmp_path / "cut.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(MixtureFormatError, match=rf"^{path}:3: invalid JSON"):
        read_vision_flan(path, image_root=FLAN_ROOT)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file is empty"),
        ('"records"', r"expected '\[' \(a JSON list of records\)"),
        ("[1]", "expected a JSON object, got int"),
        ('[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]} {}]', r"expected ',' or '\]' after record 0"),
        ("[] []", r"unexpected text after the closing '\]'"),
    ],
)
def test_malformed_files_raise(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MixtureFormatError, match=message):
        read_llava_conversations(path, image_root=LLAVA_ROOT, task_name="t")


def test_empty_list_has_too_few_examples(tmp_path):
    path = _write(tmp_path, [])
    with pytest.raises(MixtureFormatError, match=r"0 example\(s\), fewer than min_examples=1"):
        read_llava_conversations(path, image_root=LLAVA_ROOT, task_name="t")


def test_missing_paths_raise(tmp_path):
    with pytest.raises(MixtureFormatError, match="annotation file not found"):
        read_vision_flan(tmp_path / "none.json", image_root=FLAN_ROOT)
    with pytest.raises(MixtureFormatError, match="is not a directory"):
        read_vision_flan(FLAN_JSON, image_root=tmp_path / "none")
