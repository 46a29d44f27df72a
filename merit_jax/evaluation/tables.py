"""Results tables: `eval/results.json` (every model × task × metric) rendered as Markdown.

A family column is the unweighted mean over the family's tasks, and "Average" is the unweighted
mean over all tasks, so every task counts once whatever its size (as benchmark averages do).
"""

from typing import Sequence

import numpy as np

METRICS = {
    "exact_match": ("Exact-match accuracy (%) on held-out examples, greedy decoding", 100.0, 1, True),
    "loss": ("Held-out loss (nats per response token)", 1.0, 3, False),
}


def family_means(results: dict, model: str, tasks: dict, metric: str) -> dict[str, float]:
    """Mean of `metric` per family and over all tasks ('Average') for one model."""
    by_family: dict[str, list[float]] = {}
    for task, info in tasks.items():
        by_family.setdefault(info["family"], []).append(results[model][task][metric])
    means = {family: float(np.mean(values)) for family, values in sorted(by_family.items())}
    means["Average"] = float(np.mean([results[model][task][metric] for task in tasks]))
    return means


def _table(results: dict, models: Sequence[str], names: dict, tasks: dict, metric: str) -> list[str]:
    title, scale, digits, higher_is_better = METRICS[metric]
    families = sorted({info["family"] for info in tasks.values()})
    counts = {family: sum(info["family"] == family for info in tasks.values()) for family in families}
    columns = [f"{family} ({counts[family]})" for family in families] + [f"Average ({len(tasks)})"]

    rows = [f"### {title}", "", "| model | " + " | ".join(columns) + " |"]
    rows.append("|---|" + "---:|" * len(columns))
    means = {model: family_means(results, model, tasks, metric) for model in models}
    keys = families + ["Average"]
    best = {
        key: (max if higher_is_better else min)(means[model][key] for model in models) for key in keys
    }
    for model in models:
        cells = []
        for key in keys:
            text = f"{means[model][key] * scale:.{digits}f}"
            cells.append(f"**{text}**" if means[model][key] == best[key] else text)
        rows.append(f"| {names[model]} | " + " | ".join(cells) + " |")
    arrow = "higher" if higher_is_better else "lower"
    rows += ["", f"Column headers give the number of tasks; {arrow} is better; the best value is bold.", ""]
    return rows


def _per_task_table(results: dict, models: Sequence[str], names: dict, tasks: dict) -> list[str]:
    rows = ["### Per task (exact match % / loss)", ""]
    rows.append("| task | family | " + " | ".join(names[model] for model in models) + " |")
    rows.append("|---|---|" + "---:|" * len(models))
    for task, info in tasks.items():
        cells = [
            f"{results[model][task]['exact_match'] * 100:.0f} / {results[model][task]['loss']:.2f}"
            for model in models
        ]
        rows.append(f"| {task} | {info['family']} | " + " | ".join(cells) + " |")
    return rows + [""]


def render_markdown(report: dict) -> str:
    """Render a results report (the content of `results.json`) as Markdown."""
    models, names, tasks = report["models"], report["display_names"], report["tasks"]
    results = report["results"]
    lines = [f"# Results: {report.get('title', 'MERIT')}", ""]
    if report.get("description"):
        lines += [report["description"], ""]
    for metric in METRICS:
        lines += _table(results, models, names, tasks, metric)
    lines += _per_task_table(results, models, names, tasks)
    return "\n".join(lines)
