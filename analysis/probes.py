"""Fixed evaluation probes: stratified example sets, batched once, scored per example.

A probe keeps the per-example loss sums and token counts, so every mean is token-weighted
(Σ loss_sum / Σ token_count) and a bootstrap can resample examples without another forward
pass. Compared models are scored on the same batches in the same order.
"""

import dataclasses

import jax
import numpy as np
from tqdm.auto import tqdm

from merit_jax.pipeline.context import Context


@dataclasses.dataclass(frozen=True)
class Probe:
    """N examples of one split part; `rows[b][i]` is the probe index of row i of batch b (−1: padding).

    `per_row` is true when a batch's rows are independent (text batches), so per-example losses
    come from one batched call. Families whose rows share arrays (the image patches of
    vision-language batches) get one example per batch instead.
    """

    part: str
    tasks: np.ndarray
    example_indices: np.ndarray
    batches: list
    rows: list
    token_counts: np.ndarray
    per_row: bool = True

    @property
    def num_examples(self) -> int:
        return int(self.tasks.size)

    def describe(self) -> dict:
        names, counts = np.unique(self.tasks, return_counts=True)
        return {
            "part": self.part,
            "examples": self.num_examples,
            "tasks": int(names.size),
            "examples_per_task": {str(name): int(count) for name, count in zip(names, counts)},
            "tokens": float(self.token_counts.sum()),
            "batches": len(self.batches),
            "batch_shapes": sorted({tuple(batch["input_ids"].shape) for batch in self.batches}),
        }


def build_probe(
    ctx: Context,
    part: str,
    examples_per_task: int,
    *,
    task_names: list[str] | None = None,
    batch_size: int | None = None,
) -> Probe:
    """Take the first `examples_per_task` examples of `part` from every task (a stratified sample).

    The split stage already shuffled each task, so the first examples are a random sample. The
    examples are batched by length, which wastes little padding; the order is fixed for all models.
    """
    names = list(task_names or ctx.task_names)
    per_row = ctx.family.name == "qwen2"
    batch_size = (batch_size or ctx.config.eval.batch_size) if per_row else 1
    items = []
    for name in names:
        encoded = ctx.encoded(name, part)
        if not encoded:
            raise ValueError(f"task {name!r} has no {part!r} examples; choose another probe part")
        items += [(name, index, example) for index, example in enumerate(encoded[:examples_per_task])]

    order = sorted(range(len(items)), key=lambda i: len(items[i][2].input_ids))
    ordered = [items[i][2] for i in order]
    if per_row:
        # Text eval batches keep the example order: row r of batch b is example b * batch_size + r.
        batches = ctx.family.eval_batches(ordered, batch_size=batch_size)
    else:
        # Other families may reorder examples between batches, so each example is batched alone.
        batches = [ctx.family.eval_batches([item], batch_size=1)[0] for item in ordered]

    rows = []
    for start in range(0, len(order), batch_size):
        chunk = np.full(batch_size, -1, dtype=np.int64)
        members = order[start : start + batch_size]
        chunk[: len(members)] = members
        rows.append(chunk)
    tokens = np.zeros(len(items), dtype=np.float64)
    for batch, chunk in zip(batches, rows):
        valid = chunk >= 0
        tokens[chunk[valid]] = batch["loss_mask"].sum(axis=1)[valid]

    return Probe(
        part=part,
        tasks=np.array([name for name, _, _ in items]),
        example_indices=np.array([index for _, index, _ in items], dtype=np.int64),
        batches=batches,
        rows=rows,
        token_counts=tokens,
        per_row=per_row,
    )


def per_example_loss(loss_fn, per_row: bool = True):
    """Turn `loss_fn(params, batch) -> (loss_sum, token_count)` into per-row sums (B,), (B,).

    With `per_row` false, every batch contains one example and its sums are returned as (1,) arrays.
    """

    def by_row(params, batch):
        rows = jax.tree.map(lambda x: x[:, None], batch)
        return jax.vmap(lambda row: loss_fn(params, row))(rows)

    def single(params, batch):
        loss_sum, token_count = loss_fn(params, batch)
        return loss_sum[None], token_count[None]

    return by_row if per_row else single


def score_probe(probe: Probe, fn, *args, description: str | None = None) -> np.ndarray:
    """Score every probe example with `fn(*args, batch) -> (loss_sums (B,), token_counts (B,))`.

    Returns the per-example loss sums (N,) float64. Raises ValueError when `fn` counts other tokens than the probe (a wrong batch layout).
    """
    outputs = [fn(*args, batch) for batch in tqdm(probe.batches, desc=description, disable=description is None, leave=False)]
    loss_sums = np.zeros(probe.num_examples, dtype=np.float64)
    for (batch_loss, batch_tokens), chunk in zip(jax.device_get(outputs), probe.rows):
        valid = chunk >= 0
        loss_sums[chunk[valid]] = np.asarray(batch_loss, dtype=np.float64)[valid]
        if not np.array_equal(np.asarray(batch_tokens, dtype=np.float64)[valid], probe.token_counts[chunk[valid]]):
            raise ValueError("the loss function counted other tokens than the probe's loss masks")
    return loss_sums


def token_weighted(loss_sums: np.ndarray, token_counts: np.ndarray) -> np.ndarray:
    """Return Σ loss_sum / Σ token_count over the last axis (one division, never a mean of means)."""
    return np.sum(loss_sums, axis=-1) / np.sum(token_counts, axis=-1)

