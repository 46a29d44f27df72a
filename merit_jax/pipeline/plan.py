"""The runs and models of one pipeline: which training runs exist and how they are merged.

Model names are fixed strings shared by the workdir, results and tables: `base` (θ0),
`joint-<e>ep`, `merit-<r>d` (MERIT with K = 2^r branches) and `random<K>` (random split into K
groups). Branch runs are named `<model>-b<label>`, with the group's bit-string label.
"""

import dataclasses
import zlib


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run from θ0: its name, the tasks it trains on and its number of epochs."""

    name: str
    model: str
    tasks: tuple[str, ...]
    num_epochs: int


def stable_seed(seed: int, name: str) -> int:
    """Derive a per-run seed from the config seed and a name, identical on every machine."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def joint_model(epochs: int) -> str:
    return f"joint-{epochs}ep"


def merit_model(dims: int) -> str:
    return f"merit-{dims}d"


def random_model(dims: int) -> str:
    return f"random{2 ** dims}"


def display_name(model: str) -> str:
    """Row label of a model in results tables: `merit-2d` → `MERIT-2D`, `joint-1ep` → `Joint (1 ep)`."""
    if model == "base":
        return "Base (θ0)"
    if model.startswith("joint-"):
        return f"Joint ({model.removeprefix('joint-').removesuffix('ep')} ep)"
    if model.startswith("merit-"):
        return f"MERIT-{model.removeprefix('merit-').upper()}"
    if model.startswith("random"):
        return f"Random-{model.removeprefix('random')}"
    return model


def split_models(config) -> list[tuple[str, str, int]]:
    """List the split-based models as (model, kind, dims); kind is 'pca' or 'random'."""
    models = [(merit_model(dims), "pca", dims) for dims in config.split.dims]
    models += [(random_model(dims), "random", dims) for dims in config.baselines.random_dims]
    return models


def evaluated_models(config) -> list[str]:
    """List the models of the results table, in row order."""
    models = ["base"] + [joint_model(epochs) for epochs in config.baselines.joint_epochs]
    random_models = [random_model(dims) for dims in config.baselines.random_dims]
    return models + random_models + [merit_model(dims) for dims in config.split.dims]


def training_runs(config, task_names: list[str], groups: dict | None) -> list[RunSpec]:
    """List every training run: joint baselines first, then the branches of each split.

    `groups` maps a split model name to its groups (as written by the split stage); with
    `None` only the joint runs are listed.
    """
    runs = [
        RunSpec(joint_model(epochs), joint_model(epochs), tuple(task_names), epochs)
        for epochs in config.baselines.joint_epochs
    ]
    if groups is None:
        return runs
    for model, _, _ in split_models(config):
        for group in groups[model]["groups"]:
            runs.append(RunSpec(f"{model}-b{group['label']}", model, tuple(group["tasks"]), 1))
    return runs
