"""Built-in image tasks over the 1,797 handwritten digits (8x8 pixels, 17 gray levels) that ship with scikit-learn.

Digits are drawn dark on white and upscaled to `image_size` pixels. At the default 56, the
image pipeline keeps that size: a 4x4 grid of patches, so 4 image tokens per image. When
held-out examples are requested, they draw from a pool of images that no training or
warm-up example of any task uses.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
from num2words import num2words
from PIL import Image
from sklearn.datasets import load_digits

from merit_jax.data.builtin.spec import to_json
from merit_jax.data.splits import split_task
from merit_jax.data.tasks import Example, Message, Task, stable_name_hash, task_rng
from merit_jax.data.vision.images import ImagePixels

Fields = dict[str, str | int]

# Random streams of one task under one seed. They differ from the streams of `split_task`,
# so that image draws do not repeat its shuffle.
_TEMPLATE_STREAM = 100
_TRAIN_IMAGE_STREAM = 101
_HELDOUT_IMAGE_STREAM = 102

_PAIR_PREFIX = "Image 1: <image>\nImage 2: <image>\n"
_TRIPLE_PREFIX = "Image 1: <image>\nImage 2: <image>\nImage 3: <image>\n"


@dataclasses.dataclass(frozen=True)
class DigitTaskSpec:
    """A templated task over `num_images` digit images.

    `answer(digits, rng)` returns the template fields beyond the images, and the answer.
    """

    name: str
    family: str
    num_images: int
    answer_format: str
    templates: tuple[str, ...]
    answer: Callable[[tuple[int, ...], np.random.Generator], tuple[Fields, str]]


def _recognition(digits, rng):
    return {}, str(digits[0])


def _sequence(digits, rng):
    return {}, "".join(str(digit) for digit in digits)


def _sum(digits, rng):
    return {}, str(digits[0] + digits[1])


def _compare(digits, rng):
    first, second = digits
    if first > second:
        return {}, "larger"
    if first < second:
        return {}, "smaller"
    return {}, "equal"


def _parity(digits, rng):
    return {}, "even" if digits[0] % 2 == 0 else "odd"


def _yes_no(digits, rng):
    # Half of the questions name the digit shown, so "yes" and "no" are equally frequent.
    if rng.random() < 0.5:
        return {"candidate": digits[0]}, "yes"
    others = [value for value in range(10) if value != digits[0]]
    return {"candidate": int(rng.choice(others))}, "no"


def _as_json(digits, rng):
    digit = digits[0]
    record = {"digit": digit, "parity": "even" if digit % 2 == 0 else "odd", "word": num2words(digit, lang="en")}
    return {}, to_json(record)


def _word_spec(lang: str, language: str, script: str) -> DigitTaskSpec:
    def answer(digits, rng):
        return {}, num2words(digits[0], lang=lang)

    return DigitTaskSpec(
        name=f"digit_word_{lang}",
        family="digit_words",
        num_images=1,
        answer_format=f"{language} number word ({script} script)",
        templates=(
            f"<image>Write the digit in this image as a {language} word.",
            f"<image>How is this handwritten digit written in {language} words?",
            f"<image>Spell out the digit shown in {language}.",
        ),
        answer=answer,
    )


TASKS: dict[str, DigitTaskSpec] = {
    spec.name: spec
    for spec in (
        DigitTaskSpec(
            name="digit_recognition",
            family="digit_recognition",
            num_images=1,
            answer_format="one digit 0-9",
            templates=(
                "<image>What digit is written in this image? Answer with the digit.",
                "<image>Which digit from 0 to 9 is this?",
                "<image>Read the handwritten digit.",
            ),
            answer=_recognition,
        ),
        DigitTaskSpec(
            name="digit_sequence",
            family="digit_recognition",
            num_images=3,
            answer_format="three digits, no separator",
            templates=(
                _TRIPLE_PREFIX + "Read the three digits in order as one string of digits.",
                _TRIPLE_PREFIX + "Write the digits of images 1, 2 and 3 one after the other.",
            ),
            answer=_sequence,
        ),
        _word_spec("en", "English", "Latin"),
        _word_spec("fr", "French", "Latin"),
        _word_spec("de", "German", "Latin"),
        _word_spec("ru", "Russian", "Cyrillic"),
        _word_spec("ar", "Arabic", "Arabic"),
        _word_spec("ja", "Japanese", "CJK"),
        DigitTaskSpec(
            name="digit_sum",
            family="digit_arithmetic",
            num_images=2,
            answer_format="integer 0-18",
            templates=(
                _PAIR_PREFIX + "What is the sum of the two digits?",
                _PAIR_PREFIX + "Add the digit in image 1 to the digit in image 2.",
            ),
            answer=_sum,
        ),
        DigitTaskSpec(
            name="digit_compare",
            family="digit_arithmetic",
            num_images=2,
            answer_format="larger / smaller / equal",
            templates=(
                _PAIR_PREFIX + "Is the first digit larger than, smaller than, or equal to the second? "
                "Answer larger, smaller or equal.",
                _PAIR_PREFIX + "Compare the digit in image 1 with the digit in image 2: larger, smaller or equal?",
            ),
            answer=_compare,
        ),
        DigitTaskSpec(
            name="digit_parity",
            family="digit_properties",
            num_images=1,
            answer_format="even / odd",
            templates=("<image>Is the digit in this image even or odd?", "<image>Even or odd: which is this digit?"),
            answer=_parity,
        ),
        DigitTaskSpec(
            name="digit_yes_no",
            family="digit_properties",
            num_images=1,
            answer_format="yes / no",
            templates=("<image>Is this the digit {candidate}? Answer yes or no.", "<image>Does this image show a {candidate}?"),
            answer=_yes_no,
        ),
        DigitTaskSpec(
            name="digit_json",
            family="digit_properties",
            num_images=1,
            answer_format='JSON object {"digit", "parity", "word"}',
            templates=(
                '<image>Describe the digit as JSON with the keys "digit", "parity" and "word".',
                '<image>Return a JSON object with the "digit" shown, its "parity" and its English "word".',
            ),
            answer=_as_json,
        ),
    )
}


def digits_mixture(
    examples_per_task: int,
    seed: int,
    *,
    task_names: Sequence[str] | None = None,
    image_size: int = 56,
    warmup_size: int = 0,
    heldout_size: int = 0,
    heldout_image_fraction: float = 0.2,
) -> list[Task]:
    """Build the digit tasks (all of `TASKS`, or `task_names` in that order).

    When `heldout_size` > 0, `split_task` with the same `seed`, `warmup_size` and
    `heldout_size` puts in held-out exactly the examples whose images come from a held-out
    pool: `heldout_image_fraction` of the images of every digit class, which no other
    example uses. Within a task and pool, images repeat only after the pool is used up.
    """
    if isinstance(examples_per_task, bool) or not isinstance(examples_per_task, int) or examples_per_task < 1:
        raise ValueError(f"examples_per_task must be a positive integer, got {examples_per_task!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 448:
        raise ValueError(f"image_size must be an integer from 8 to 448 pixels, got {image_size!r}")
    if not 0 < heldout_image_fraction < 1:
        raise ValueError(f"heldout_image_fraction must lie strictly between 0 and 1, got {heldout_image_fraction!r}")

    names = list(TASKS) if task_names is None else list(task_names)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown digit task(s) {unknown}; choose from {sorted(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"task_names lists a task more than once: {names}")

    images, labels = _digit_images(image_size)
    train_pool, heldout_pool = _image_pools(labels, seed, heldout_image_fraction if heldout_size > 0 else 0.0)

    tasks = []
    for name in names:
        spec = TASKS[name]
        heldout_positions = _heldout_positions(name, examples_per_task, seed, warmup_size, heldout_size)
        train_stream = _image_stream(train_pool, task_rng(seed, name, _TRAIN_IMAGE_STREAM))
        heldout_stream = _image_stream(heldout_pool, task_rng(seed, name, _HELDOUT_IMAGE_STREAM))
        rng = task_rng(seed, name, _TEMPLATE_STREAM)

        examples = []
        for position in range(examples_per_task):
            stream = heldout_stream if position in heldout_positions else train_stream
            indices = [next(stream) for _ in range(spec.num_images)]
            digits = tuple(int(labels[index]) for index in indices)
            fields, answer = spec.answer(digits, rng)
            template = spec.templates[rng.integers(len(spec.templates))]
            messages = (Message("user", template.format(**fields)), Message("assistant", answer))
            examples.append(Example(name, messages, tuple(images[index] for index in indices)))
        tasks.append(Task(name, spec.family, tuple(examples)))
    return tasks


def describe_digit_tasks() -> str:
    """Return a Markdown table of every digit task: name, family, images per example, answer format."""
    lines = ["| task | family | images | answer format |", "|---|---|---|---|"]
    for spec in TASKS.values():
        lines.append(f"| {spec.name} | {spec.family} | {spec.num_images} | {spec.answer_format} |")
    return "\n".join(lines)


@functools.lru_cache(maxsize=4)
def _digit_images(image_size: int) -> tuple[tuple[ImagePixels, ...], np.ndarray]:
    """Return every digit as an RGB `ImagePixels` of `image_size` squared pixels, and its label."""
    digits = load_digits()

    # Values 0..16 measure ink. Inverting them gives dark strokes on white, like a scan.
    gray = (255 - np.round(digits.images * (255 / 16))).astype(np.uint8)
    images = []
    for index, pixels in enumerate(gray):
        upscaled = Image.fromarray(pixels).resize((image_size, image_size), resample=Image.Resampling.BICUBIC)
        images.append(ImagePixels(np.asarray(upscaled.convert("RGB")), origin=f"sklearn digits[{index}]"))
    return tuple(images), digits.target.astype(np.int64)


def _image_pools(labels: np.ndarray, seed: int, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into (train pool, held-out pool), the same fraction from every class."""
    rng = np.random.default_rng([int(seed), stable_name_hash("digits_image_pools")])
    train, heldout = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        cut = int(round(heldout_fraction * len(members)))
        heldout.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


def _heldout_positions(name: str, count: int, seed: int, warmup_size: int, heldout_size: int) -> set[int]:
    """Return the example positions that `split_task` will put in held-out.

    `split_task` shuffles by the seed, the task name and the number of examples only, so a
    task of stand-in examples of the same size splits the same way.
    """
    if heldout_size == 0:
        return set()
    stand_ins = tuple(Example(name, (Message("user", str(i)), Message("assistant", str(i)))) for i in range(count))
    split = split_task(Task(name, "stand-in", stand_ins), seed=seed, warmup_size=warmup_size, heldout_size=heldout_size)
    return {int(example.messages[0].content) for example in split.heldout}


def _image_stream(pool: np.ndarray, rng: np.random.Generator):
    """Yield image indices from `pool` forever, one fresh permutation per pass."""
    if len(pool) == 0:
        return
    while True:
        yield from (int(index) for index in rng.permutation(pool))
