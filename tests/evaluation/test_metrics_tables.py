"""Tests of the evaluation metrics and the Markdown results table."""

import numpy as np
import pytest

from merit_jax.evaluation import metrics
from merit_jax.evaluation.tables import family_means, render_markdown


def test_heldout_loss_is_token_weighted():
    batches = [{"loss": 6.0, "tokens": 2.0}, {"loss": 1.0, "tokens": 8.0}]
    result = metrics.heldout_loss(lambda params, batch: (batch["loss"], batch["tokens"]), None, batches)
    assert result.loss == pytest.approx(7.0 / 10.0)
    assert result.loss != pytest.approx((3.0 + 0.125) / 2)


def test_exact_match_strips_only_outer_whitespace():
    result = metrics.exact_match(["  cinq \n", "Cinq", "cinq  six"], ["cinq", "cinq", "cinq six"])
    assert result.correct == 1
    assert result.accuracy == pytest.approx(1 / 3)


def test_exact_match_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metrics.exact_match(["a", "b"], ["a"])


def test_generate_answers_restores_prompt_order():
    batches = [
        (np.zeros((2, 3)), np.ones((2, 3)), np.array([2, 0])),
        (np.zeros((2, 3)), np.ones((2, 3)), np.array([1, -1])),
    ]
    calls = []

    def generate(params, ids, mask, max_new_tokens):
        calls.append(max_new_tokens)
        return np.full((ids.shape[0], max_new_tokens), len(calls))

    answers = metrics.generate_answers(generate, None, batches, lambda tokens: str(tokens[0]), 3, 4)
    assert answers == ["1", "2", "1"]
    assert calls == [4, 4]


def test_generate_answers_reports_missing_prompts():
    batches = [(np.zeros((1, 2)), np.ones((1, 2)), np.array([0]))]
    with pytest.raises(ValueError, match="1 prompts undecoded"):
        metrics.generate_answers(lambda *args: np.zeros((1, 1)), None, batches, str, 2, 1)


def _report():
    tasks = {"a": {"family": "f1"}, "b": {"family": "f1"}, "c": {"family": "f2"}}
    results = {
        "base": {name: {"exact_match": 0.0, "loss": 3.0} for name in tasks},
        "merit-1d": {
            "a": {"exact_match": 1.0, "loss": 1.0},
            "b": {"exact_match": 0.5, "loss": 2.0},
            "c": {"exact_match": 0.0, "loss": 0.5},
        },
    }
    return {
        "models": ["base", "merit-1d"],
        "display_names": {"base": "Base (θ0)", "merit-1d": "MERIT-1D"},
        "tasks": tasks,
        "results": results,
    }


def test_family_means_weight_tasks_equally():
    means = family_means(_report()["results"], "merit-1d", _report()["tasks"], "exact_match")
    assert means["f1"] == pytest.approx(0.75)
    assert means["f2"] == pytest.approx(0.0)
    assert means["Average"] == pytest.approx(0.5)


def test_markdown_has_a_row_per_model_and_bold_best():
    text = render_markdown(_report())
    assert "| MERIT-1D | **75.0** | **0.0** | **50.0** |" in text
    assert "| Base (θ0) | 0.0 | **0.0** | 0.0 |" in text
    assert "| model | f1 (2) | f2 (1) | Average (3) |" in text
    assert "| MERIT-1D | **1.500** | **0.500** | **1.167** |" in text
