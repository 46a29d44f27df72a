"""Training and evaluation pieces of the learning-rate sweep: subsampled data, merges, scores.

Scores are the pipeline's metrics on a fixed subsample of held-out examples: token-weighted loss
per task and exact match of greedy decoding per task, each averaged over tasks.
"""

import functools

import jax
import numpy as np

from analysis import probes
from merit_jax import data as data_lib
from merit_jax.evaluation import metrics as metrics_lib
from merit_jax.pipeline.plan import stable_seed


def epoch_batches_fn(ctx, encoded: list, run_name: str, train_config, seed_index: int):
    """Build `epoch → batches` over `encoded`, shuffled by a seed from the run name and the sweep seed."""
    seed = stable_seed(ctx.config.seed, f"{run_name}-lr-sweep-seed{seed_index}")

    @functools.lru_cache(maxsize=1)
    def epoch_batches(epoch: int):
        return ctx.family.epoch_batches(encoded, batch_size=train_config.batch_size, seed=seed, epoch=epoch,
                                        micro_batches=train_config.micro_batches)

    return epoch_batches


class Scorer:
    """Held-out loss and exact match of any parameters on one fixed subsample, per task.

    Examples of all tasks are decoded together, grouped by generation budget, so a model needs a
    few batched decoding calls rather than one per task. A task's budget is the smallest
    configured `max_new_tokens` bucket that fits its longest reference plus 2 tokens.
    """

    def __init__(self, ctx, examples_per_task: int, exact_match_examples: int):
        self.ctx = ctx
        self.names = ctx.task_names
        self.probe = probes.build_probe(ctx, "heldout", examples_per_task)
        self.score_fn = jax.jit(probes.per_example_loss(ctx.loss_fn, self.probe.per_row))
        self.exact_match = exact_match_examples > 0
        self.groups = self._example_groups(exact_match_examples) if self.exact_match else {}

    def _example_groups(self, count: int) -> dict:
        """Map each generation budget to its (examples, task of each example, references)."""
        groups = {}
        for name in self.names:
            examples = list(self.ctx.splits[name].heldout[:count])
            references = [data_lib.reference_answer(example) for example in examples]
            longest = max(len(self.ctx.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
            budget = next((int(b) for b in self.ctx.config.eval.max_new_tokens_buckets if b >= longest + 2), longest + 2)
            entry = groups.setdefault(budget, ([], [], []))
            entry[0].extend(examples)
            entry[1].extend([name] * len(examples))
            entry[2].extend(references)
        return groups

    def pooled_loss(self, params) -> float:
        return float(probes.token_weighted(probes.score_probe(self.probe, self.score_fn, params), self.probe.token_counts))

    def __call__(self, params) -> dict:
        sums = probes.score_probe(self.probe, self.score_fn, params)
        tokens = self.probe.token_counts
        losses = {name: float(sums[self.probe.tasks == name].sum() / tokens[self.probe.tasks == name].sum()) for name in self.names}
        result = {"task_loss": losses, "average_loss": float(np.mean(list(losses.values()))),
                  "pooled_loss": float(probes.token_weighted(sums, tokens))}
        if self.exact_match:
            correct = dict.fromkeys(self.names, 0)
            total = dict.fromkeys(self.names, 0)
            for budget, (examples, tasks, references) in sorted(self.groups.items()):
                answers = self.ctx.family.generate_answers(self.ctx.functional, params, examples, max_new_tokens=budget,
                                                           stop_ids=self.ctx.stop_token_ids, pad_id=self.ctx.pad_token_id)
                for task, answer, reference in zip(tasks, answers, references):
                    correct[task] += metrics_lib.exact_match([answer], [reference]).correct
                    total[task] += 1
            accuracy = {name: 100.0 * correct[name] / total[name] for name in self.names}
            result["task_exact_match"] = accuracy
            result["average_exact_match"] = float(np.mean(list(accuracy.values())))
        return result
