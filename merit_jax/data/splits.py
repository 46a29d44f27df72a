"""Per-task splits into warmup, train, held-out and calibration examples.

Warmup examples prepare the starting checkpoint and never enter the MERIT mixture; held-out
examples are only evaluated. The calibration set, on which the per-task gradient g_t is
estimated, is a subset of train: min(calibration_size, len(train)) examples drawn uniformly
without replacement, which stay in the training data.
"""

import dataclasses
from collections.abc import Sequence

from merit_jax.data.tasks import Example, Task, task_rng

# Independent random streams of one task under one seed.
_SHUFFLE_STREAM = 0
_CALIBRATION_STREAM = 1


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """The examples of one task, by use; `calibration` is a subset of `train`."""

    warmup: tuple[Example, ...]
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    calibration: tuple[Example, ...]


def split_task(
    task: Task, *, seed: int, warmup_size: int, heldout_size: int, calibration_size: int = 200
) -> TaskSplit:
    """Shuffle `task` with a generator seeded by `seed` and its name, then cut it into a `TaskSplit`.

    After the shuffle, the first `warmup_size` examples are warmup, the next `heldout_size`
    are held out, and the rest are train.
    """
    for option, value, minimum in (
        ("warmup_size", warmup_size, 0),
        ("heldout_size", heldout_size, 0),
        ("calibration_size", calibration_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{option} must be an integer >= {minimum}, got {value!r}")

    count = len(task.examples)
    if count - warmup_size - heldout_size < 1:
        raise ValueError(
            f"task {task.name!r} has {count} examples, so warmup_size={warmup_size} and "
            f"heldout_size={heldout_size} leave no training examples; lower them or give the task "
            f"more than {warmup_size + heldout_size} examples"
        )

    order = task_rng(seed, task.name, _SHUFFLE_STREAM).permutation(count)
    shuffled = [task.examples[i] for i in order]
    warmup = tuple(shuffled[:warmup_size])
    heldout = tuple(shuffled[warmup_size : warmup_size + heldout_size])
    train = tuple(shuffled[warmup_size + heldout_size :])

    picks = task_rng(seed, task.name, _CALIBRATION_STREAM).permutation(len(train))[:calibration_size]
    calibration = tuple(train[i] for i in picks)
    return TaskSplit(warmup=warmup, train=train, heldout=heldout, calibration=calibration)


def split_mixture(
    tasks: Sequence[Task], *, seed: int, warmup_size: int, heldout_size: int, calibration_size: int = 200
) -> dict[str, TaskSplit]:
    """Apply `split_task` to every task; returns the splits keyed by task name, in input order."""
    splits = {}
    for task in tasks:
        if task.name in splits:
            raise ValueError(f"the mixture contains task {task.name!r} twice; task names must be unique")
        splits[task.name] = split_task(
            task,
            seed=seed,
            warmup_size=warmup_size,
            heldout_size=heldout_size,
            calibration_size=calibration_size,
        )
    return splits
