"""How a built-in task turns integer record indices into examples.

Each task exposes `capacity()` record indices. `record(index)` returns the template fields
(the task input) and the answer, computed from the index alone, so a task's records do not
depend on the seed. The seed only chooses which indices are drawn and which instruction
template phrases each one.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Sequence

import numpy as np

from merit_jax.data.tasks import Example, Message, stable_name_hash, task_rng

Fields = dict[str, str | int]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A templated instruction task over one record source."""

    name: str
    family: str
    source: str
    answer_format: str
    templates: tuple[str, ...]
    capacity: Callable[[], int]
    record: Callable[[int], tuple[Fields, str]]
    # When non-empty, about half of the examples start with one of these system messages.
    system_prompts: tuple[str, ...] = ()


def generate_examples(spec: TaskSpec, count: int, seed: int) -> tuple[Example, ...]:
    """Draw `count` examples of `spec` with pairwise different inputs, deterministically."""
    capacity = spec.capacity()
    if count > capacity:
        raise ValueError(
            f"built-in task {spec.name!r} has {capacity} records ({spec.source}), fewer than "
            f"examples_per_task={count}; lower examples_per_task to at most {capacity} "
            "or leave this task out of the mixture"
        )

    # Records built from a pseudo-random sub-generator can repeat an input, so draw spares.
    rng = task_rng(seed, spec.name)
    indices = rng.choice(capacity, size=min(capacity, 2 * count + 16), replace=False)

    seen = set()
    examples = []
    for index in indices:
        fields, answer = spec.record(int(index))
        key = tuple(sorted(fields.items()))
        if key in seen:
            continue
        seen.add(key)

        messages = []
        if spec.system_prompts and rng.random() < 0.5:
            system = spec.system_prompts[rng.integers(len(spec.system_prompts))]
            messages.append(Message("system", system))
        template = spec.templates[rng.integers(len(spec.templates))]
        messages.append(Message("user", template.format(**fields)))
        messages.append(Message("assistant", answer))
        examples.append(Example(spec.name, tuple(messages)))
        if len(examples) == count:
            return tuple(examples)

    raise ValueError(
        f"built-in task {spec.name!r} produced only {len(examples)} distinct inputs out of "
        f"{len(indices)} drawn records, fewer than examples_per_task={count}; lower "
        "examples_per_task or leave this task out of the mixture"
    )


def record_rng(name: str, index: int) -> np.random.Generator:
    """Return a generator that depends only on the task name and the record index."""
    return np.random.default_rng([stable_name_hash(name), index])


def mixed_radix(index: int, radices: Sequence[int]) -> list[int]:
    """Decode `index` into digits of the given radices, the last radix varying fastest."""
    digits = []
    for radix in reversed(radices):
        index, digit = divmod(index, radix)
        digits.append(digit)
    return digits[::-1]


def unrank_combination(index: int, n: int, k: int) -> tuple[int, ...]:
    """Return the `index`-th k-subset of range(n) in lexicographic order."""
    chosen = []
    start = 0
    for slot in range(k, 0, -1):
        for candidate in range(start, n):
            block = math.comb(n - candidate - 1, slot - 1)
            if index < block:
                chosen.append(candidate)
                start = candidate + 1
                break
            index -= block
    return tuple(chosen)


def log_uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """Draw an integer in [low, high) with a uniform number of digits, then uniform within."""
    digits = int(rng.integers(len(str(low)), len(str(high - 1)) + 1))
    lower = max(low, 10 ** (digits - 1)) if digits > 1 else low
    upper = min(high, 10**digits)
    return int(rng.integers(lower, upper))


def to_json(value) -> str:
    """Serialize `value` the one way every JSON answer uses: non-ASCII kept, default spacing."""
    return json.dumps(value, ensure_ascii=False)
