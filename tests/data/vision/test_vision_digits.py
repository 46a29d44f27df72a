"""Tests for the built-in handwritten-digit mixture: tasks, answers, determinism and image-disjoint held-out sets."""

import collections
import json
import re

import numpy as np
import pytest
from num2words import num2words
from PIL import Image
from sklearn.datasets import load_digits

from merit_jax.data import split_mixture
from merit_jax.data.vision import DIGIT_TASKS, IMAGE_PLACEHOLDER, describe_digit_tasks, digits_mixture, process_image

SPLIT = {"warmup_size": 6, "heldout_size": 10}


@pytest.fixture(scope="module")
def labels():
    return load_digits().target


@pytest.fixture(scope="module")
def mixture():
    return digits_mixture(60, seed=3, **SPLIT)


def _index(image):
    """The scikit-learn index of a digit image, read from its origin "sklearn digits[i]"."""
    return int(re.fullmatch(r"sklearn digits\[(\d+)\]", image.origin).group(1))


def _digits(example, labels):
    return [int(labels[_index(image)]) for image in example.images]


def test_mixture_has_enough_tasks_and_families(mixture):
    names = [task.name for task in mixture]
    assert len(names) >= 8
    assert len(set(names)) == len(names)
    assert len({task.family for task in mixture}) >= 4
    assert all(len(task.examples) == 60 for task in mixture)


def test_placeholders_match_images(mixture):
    for task in mixture:
        for example in task.examples:
            assert len(example.images) == DIGIT_TASKS[task.name].num_images
            assert example.messages[0].content.count(IMAGE_PLACEHOLDER) == len(example.images)


def test_images_are_upscaled_digits(mixture):
    data = load_digits()
    example = mixture[0].examples[0]
    image = example.images[0]
    assert image.pixels.shape == (56, 56, 3)

    # Rebuild the image from the 8x8 source: ink becomes dark, then bicubic upscaling.
    gray = (255 - np.round(data.images[_index(image)] * (255 / 16))).astype(np.uint8)
    expected = np.asarray(Image.fromarray(gray).resize((56, 56), Image.Resampling.BICUBIC).convert("RGB"))
    assert np.array_equal(image.pixels, expected)


def test_images_take_four_tokens(mixture):
    processed = process_image(mixture[0].examples[0].images[0])
    assert processed.grid_thw.tolist() == [1, 4, 4]
    assert processed.num_tokens == 4


def test_answers_are_correct(mixture, labels):
    for task in mixture:
        for example in task.examples:
            digits = _digits(example, labels)
            prompt, answer = example.messages[0].content, example.messages[-1].content
            if task.name == "digit_recognition":
                assert answer == str(digits[0])
            elif task.name == "digit_sequence":
                assert answer == "".join(map(str, digits))
            elif task.name == "digit_sum":
                assert answer == str(sum(digits))
            elif task.name == "digit_compare":
                if digits[0] > digits[1]:
                    assert answer == "larger"
                elif digits[0] < digits[1]:
                    assert answer == "smaller"
                else:
                    assert answer == "equal"
            elif task.name == "digit_parity":
                assert answer == ("even" if digits[0] % 2 == 0 else "odd")
            elif task.name == "digit_yes_no":
                candidate = int(re.search(r"\d", prompt).group())
                assert answer == ("yes" if candidate == digits[0] else "no")
            elif task.name == "digit_json":
                assert json.loads(answer) == {
                    "digit": digits[0],
                    "parity": "even" if digits[0] % 2 == 0 else "odd",
                    "word": num2words(digits[0], lang="en"),
                }
            else:
                lang = task.name.rsplit("_", 1)[1]
                assert answer == num2words(digits[0], lang=lang), task.name


def test_answers_are_balanced(mixture):
    by_name = {task.name: task for task in mixture}
    yes_no = collections.Counter(example.messages[-1].content for example in by_name["digit_yes_no"].examples)
    assert 15 <= yes_no["yes"] <= 45
    recognized = {example.messages[-1].content for example in by_name["digit_recognition"].examples}
    assert len(recognized) >= 8


def test_same_seed_same_mixture_other_seed_differs(mixture):
    again = digits_mixture(60, seed=3, **SPLIT)
    other = digits_mixture(60, seed=4, **SPLIT)
    assert [task.examples for task in again] == [task.examples for task in mixture]
    assert [task.examples for task in other] != [task.examples for task in mixture]


def test_heldout_images_unseen_in_training(mixture):
    splits = split_mixture(mixture, seed=3, calibration_size=8, **SPLIT)
    seen = {image for split in splits.values() for example in split.train + split.warmup for image in example.images}
    heldout = {image for split in splits.values() for example in split.heldout for image in example.images}
    assert all(len(split.heldout) == 10 for split in splits.values())
    assert heldout
    assert not heldout & seen


def test_heldout_overlaps_without_image_pools():
    # Negative control: built without the split sizes, held-out examples reuse training images.
    tasks = digits_mixture(60, seed=3)
    splits = split_mixture(tasks, seed=3, calibration_size=8, **SPLIT)
    seen = {image for split in splits.values() for example in split.train + split.warmup for image in example.images}
    heldout = {image for split in splits.values() for example in split.heldout for image in example.images}
    assert heldout & seen


def test_images_do_not_repeat_within_task(mixture):
    for task in mixture:
        indices = [_index(image) for example in task.examples for image in example.images]
        assert len(indices) == len(set(indices)), task.name


def test_task_subset_and_errors():
    subset = digits_mixture(5, seed=0, task_names=["digit_sum", "digit_parity"])
    assert [task.name for task in subset] == ["digit_sum", "digit_parity"]
    with pytest.raises(ValueError, match="unknown digit task"):
        digits_mixture(5, seed=0, task_names=["digit_mod"])
    with pytest.raises(ValueError, match="more than once"):
        digits_mixture(5, seed=0, task_names=["digit_sum", "digit_sum"])
    with pytest.raises(ValueError, match="examples_per_task must be a positive integer"):
        digits_mixture(0, seed=0)
    with pytest.raises(ValueError, match="image_size must be an integer from 8 to 448"):
        digits_mixture(5, seed=0, image_size=4)
    with pytest.raises(ValueError, match="leave no training examples"):
        digits_mixture(10, seed=0, warmup_size=5, heldout_size=5)


def test_other_image_size():
    (task,) = digits_mixture(3, seed=0, task_names=["digit_recognition"], image_size=28)
    assert task.examples[0].images[0].pixels.shape == (28, 28, 3)


def test_describe_lists_every_task():
    table = describe_digit_tasks()
    for name in DIGIT_TASKS:
        assert f"| {name} |" in table
