"""Tests for per-task splits: disjointness, coverage, calibration subset and determinism."""

import pytest

from merit_jax.data import Example, Message, Task, split_mixture, split_task


def _task(name="t", count=100):
    examples = tuple(
        Example(name, (Message("user", f"q{i}"), Message("assistant", f"a{i}"))) for i in range(count)
    )
    return Task(name, "family", examples)


def _ids(examples):
    return [example.messages[0].content for example in examples]


def test_splits_are_disjoint_and_cover_task():
    task = _task(count=100)
    split = split_task(task, seed=0, warmup_size=10, heldout_size=15, calibration_size=20)
    warmup, train, heldout = set(_ids(split.warmup)), set(_ids(split.train)), set(_ids(split.heldout))
    assert len(split.warmup) == 10
    assert len(split.heldout) == 15
    assert len(split.train) == 75
    assert not warmup & train
    assert not warmup & heldout
    assert not train & heldout
    assert warmup | train | heldout == set(_ids(task.examples))


def test_calibration_is_distinct_subset_of_train():
    split = split_task(_task(count=100), seed=0, warmup_size=10, heldout_size=15, calibration_size=20)
    calibration = _ids(split.calibration)
    assert len(calibration) == 20
    assert len(set(calibration)) == 20
    assert set(calibration) <= set(_ids(split.train))
    # A seeded draw, not simply the first train examples.
    assert calibration != _ids(split.train)[:20]


def test_calibration_capped_by_train_size():
    split = split_task(_task(count=50), seed=0, warmup_size=5, heldout_size=5)
    assert len(split.train) == 40
    assert sorted(_ids(split.calibration)) == sorted(_ids(split.train))


def test_split_is_shuffled():
    split = split_task(_task(count=100), seed=0, warmup_size=10, heldout_size=10)
    assert _ids(split.warmup) != [f"q{i}" for i in range(10)]


def test_same_seed_gives_same_split():
    first = split_task(_task(), seed=3, warmup_size=5, heldout_size=5, calibration_size=10)
    second = split_task(_task(), seed=3, warmup_size=5, heldout_size=5, calibration_size=10)
    assert first == second


def test_other_seed_gives_other_split():
    first = split_task(_task(), seed=3, warmup_size=5, heldout_size=5)
    second = split_task(_task(), seed=4, warmup_size=5, heldout_size=5)
    assert _ids(first.heldout) != _ids(second.heldout)


def test_task_name_seeds_its_own_shuffle():
    first = split_task(_task("alpha"), seed=3, warmup_size=5, heldout_size=5)
    second = split_task(_task("beta"), seed=3, warmup_size=5, heldout_size=5)
    assert _ids(first.heldout) != _ids(second.heldout)


def test_heldout_does_not_depend_on_calibration_size():
    small = split_task(_task(), seed=0, warmup_size=5, heldout_size=5, calibration_size=3)
    large = split_task(_task(), seed=0, warmup_size=5, heldout_size=5, calibration_size=50)
    assert small.heldout == large.heldout
    assert small.train == large.train
    assert _ids(small.calibration) == _ids(large.calibration)[:3]


def test_zero_warmup_and_heldout_keeps_everything_in_train():
    split = split_task(_task(count=10), seed=0, warmup_size=0, heldout_size=0)
    assert split.warmup == ()
    assert split.heldout == ()
    assert len(split.train) == 10


def test_no_train_examples_raises():
    with pytest.raises(ValueError, match=r"task 't' has 20 examples.*warmup_size=10.*heldout_size=10"):
        split_task(_task(count=20), seed=0, warmup_size=10, heldout_size=10)


@pytest.mark.parametrize(
    "options",
    [
        {"warmup_size": -1, "heldout_size": 1},
        {"warmup_size": 1, "heldout_size": -1},
        {"warmup_size": 1, "heldout_size": 1, "calibration_size": 0},
        {"warmup_size": 1.5, "heldout_size": 1},
    ],
)
def test_invalid_sizes_raise(options):
    with pytest.raises(ValueError, match="must be an integer"):
        split_task(_task(), seed=0, **options)


def test_negative_seed_raises():
    with pytest.raises(ValueError, match="seed"):
        split_task(_task(), seed=-1, warmup_size=1, heldout_size=1)


def test_split_mixture_keys_by_name():
    splits = split_mixture([_task("a"), _task("b")], seed=0, warmup_size=5, heldout_size=5, calibration_size=7)
    assert list(splits) == ["a", "b"]
    assert splits["a"] == split_task(_task("a"), seed=0, warmup_size=5, heldout_size=5, calibration_size=7)


def test_split_mixture_rejects_duplicate_names():
    with pytest.raises(ValueError, match="task 'a' twice"):
        split_mixture([_task("a"), _task("a")], seed=0, warmup_size=1, heldout_size=1)
