"""The built-in offline mixture: templated instruction tasks over records that ship with
Python and with the pinned `babel`, `pycountry` and `num2words` packages.

`TASKS` maps each task name to its `TaskSpec`, whose `source` and `answer_format` fields
describe the task; `describe_tasks()` renders them as a Markdown table. Examples are the
same for a given seed on every machine that runs the same Python minor version (it fixes the
Unicode database and `http.HTTPStatus`) and the pinned package versions.
"""

from collections.abc import Sequence

from merit_jax.data.builtin import calendar_tasks, iso_codes, locale_format, number_words, text_ops, unicode_tasks
from merit_jax.data.builtin.spec import TaskSpec, generate_examples
from merit_jax.data.tasks import Task

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for module in (number_words, locale_format, unicode_tasks, iso_codes, calendar_tasks, text_ops)
    for spec in module.TASKS
}


def builtin_mixture(examples_per_task: int, seed: int, *, task_names: Sequence[str] | None = None) -> list[Task]:
    """Build the built-in tasks (all of `TASKS`, or `task_names` in that order).

    Each task draws `examples_per_task` examples with pairwise different inputs from a
    generator seeded with `seed` and the task name.
    """
    if isinstance(examples_per_task, bool) or not isinstance(examples_per_task, int) or examples_per_task < 1:
        raise ValueError(f"examples_per_task must be a positive integer, got {examples_per_task!r}")

    names = list(TASKS) if task_names is None else list(task_names)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown built-in task(s) {unknown}; choose from {sorted(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"task_names lists a task more than once: {names}")

    tasks = []
    for name in names:
        spec = TASKS[name]
        tasks.append(Task(name, spec.family, generate_examples(spec, examples_per_task, seed)))
    return tasks


def describe_tasks() -> str:
    """Return a Markdown table of every built-in task: name, family, source, answer format."""
    lines = ["| task | family | source | answer format |", "|---|---|---|---|"]
    for spec in TASKS.values():
        lines.append(f"| {spec.name} | {spec.family} | {spec.source} | {spec.answer_format} |")
    return "\n".join(lines)


__all__ = ["TASKS", "TaskSpec", "builtin_mixture", "describe_tasks"]
