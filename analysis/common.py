"""Shared pieces of the analysis scripts: workdir access, provenance, atomic outputs, keys.

Every script writes into `WORKDIR/figures/<analysis>/` through `Outputs`, which writes each file
under a temporary name and then renames it. Its JSON records where every input came from
(`provenance`): the config hash, the manifest's stage hashes, checkpoint ids and library versions.
"""

import csv
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import threadpoolctl
from absl import app, logging

from merit_jax.core import tree as tree_lib
from merit_jax.pipeline.context import Context
from merit_jax.pipeline.prepare import read_groups
from merit_jax.pipeline.workdir import canonical_json, read_json
from merit_jax.training import checkpoint as checkpoint_lib

# The workdir does not record which config file made it, so the command names it as CONFIG.
PIPELINE_COMMAND = "python -m merit_jax.main --config=CONFIG --workdir={workdir} (with the CONFIG that made it)"

_VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
                       "scikit-learn", "matplotlib")


_BLAS_LIMITS = []


def setup_logging(blas_threads: int = 1) -> None:
    """Quiet orbax's INFO records and cap host BLAS threads.

    The host linear algebra of the analyses works on T × T matrices and (T, block) slices, which
    are too small to gain from BLAS threads. On a busy machine, spinning OpenBLAS threads made a
    45 × 32768 Gram product 200 times slower (0.7 s instead of 3.6 ms, 2 shared CPU cores).
    """
    logging.get_absl_handler().addFilter(checkpoint_lib.QuietCheckpointing())
    _BLAS_LIMITS.append(threadpoolctl.threadpool_limits(limits=blas_threads, user_api="blas"))


def run(main) -> None:
    """Run an analysis `main()` with absl after the shared setup, reporting a missing input as one line.

    Extra positional arguments are a usage error. A missing input file exits with status 1.
    """

    def checked_main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        setup_logging()
        try:
            main()
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    app.run(checked_main)


# Workdir inputs -------------------------------------------------------------------------------


def open_workdir(workdir: str | os.PathLike) -> Context:
    """Open a finished pipeline workdir, naming the pipeline command when it is missing."""
    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise FileNotFoundError(
            f"{workdir / 'config.json'} not found; run the pipeline first: "
            + PIPELINE_COMMAND.format(workdir=workdir)
        )
    return Context.from_workdir(workdir)


def require_file(path: Path, stage: str, workdir: Path) -> Path:
    """Return `path`, or raise FileNotFoundError naming the stage and the command that writes it."""
    if not Path(path).exists():
        raise FileNotFoundError(
            f"{path} not found: the pipeline's '{stage}' stage writes it; run "
            + PIPELINE_COMMAND.format(workdir=workdir)
        )
    return Path(path)


def params_dir(ctx: Context, name: str) -> Path:
    """Return the directory of the final parameters of `base`, a run (`joint-1ep`, `merit-2d-b01`) or a merged model."""
    if name == "base":
        return ctx.workdir / "init" / "params"
    if _is_run(name):
        return ctx.workdir / "runs" / name / "params"
    return ctx.workdir / "merged" / name / "params"


def _is_run(name: str) -> bool:
    """Joint baselines and branches (`merit-2d-b01`) are training runs; other models are merges."""
    return name.startswith("joint-") or "-b" in name


def stage_of(name: str) -> str:
    """Return the manifest stage that produced the parameters of model or run `name`."""
    if name == "base":
        return "init"
    if _is_run(name):
        return f"train:{name}"
    return f"merge:{name}"


def load_params(ctx: Context, name: str) -> dict:
    """Load the full parameter tree of model or run `name` (float32 leaves as stored)."""
    if name == "base":
        return ctx.theta0()
    directory = params_dir(ctx, name)
    if not checkpoint_lib.is_checkpoint(directory):
        raise FileNotFoundError(
            f"checkpoint {directory} not found: the pipeline's '{stage_of(name)}' stage writes it; "
            "run " + PIPELINE_COMMAND.format(workdir=ctx.workdir)
        )
    return ctx.load_params(directory)


def trainable_part(ctx: Context, params: dict) -> dict:
    """Return the trainable sub-tree of a full parameter tree (the coordinates MERIT works in)."""
    return tree_lib.partition(params, ctx.trainable)[0]


def branch_runs(ctx: Context, model: str) -> list[dict]:
    """Return the groups of split model `model` with their run name, label, tasks and merge weight."""
    require_file(ctx.workdir / "split" / "groups.json", "split", ctx.workdir)
    splits = read_groups(ctx)
    if model not in splits:
        raise ValueError(f"model {model!r} is not in split/groups.json; choose one of {sorted(splits)}")
    return [
        {"run": f"{model}-b{group['label']}", **group}
        for group in splits[model]["groups"]
    ]


def run_info(ctx: Context, run: str) -> dict | None:
    """Read `runs/<run>/run.json` (step counts), or return None for workdirs older than that file."""
    path = ctx.workdir / "runs" / run / "run.json"
    return json.loads(path.read_text()) if path.exists() else None


def snapshot_steps(ctx: Context, run: str) -> list[int]:
    """List the steps of the committed intermediate snapshots of `run`, ascending (empty when none)."""
    directory = ctx.workdir / "runs" / run / "snapshots"
    if not directory.is_dir():
        return []
    steps = [int(path.name) for path in directory.iterdir()
             if path.name.isdigit() and checkpoint_lib.is_checkpoint(path)]
    return sorted(steps)


def load_snapshot(ctx: Context, run: str, step: int) -> dict:
    """Load the trainable parameters that `run` saved after `step` steps."""
    target = tree_lib.partition(ctx.abstract_params, ctx.trainable)[0]
    return checkpoint_lib.load_params(ctx.workdir / "runs" / run / "snapshots" / f"{step:08d}", target)


# Provenance ------------------------------------------------------------------------------------


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["jax_backend"] = jax.default_backend()
    return versions


def checkpoint_id(ctx: Context, name: str, step: int | None = None) -> dict:
    """Return the path and manifest config hash of a checkpoint (a snapshot when `step` is given)."""
    entry = ctx.manifest.entry(stage_of(name)) or {}
    path = params_dir(ctx, name) if step is None else ctx.workdir / "runs" / name / "snapshots" / f"{step:08d}"
    return {"path": str(path), "stage": stage_of(name), "config_hash": entry.get("config_hash"), "step": step}


def provenance(ctx: Context, *, checkpoints: dict | None = None, keys: dict | None = None) -> dict:
    """Collect where the numbers come from: config and stage hashes, checkpoints, keys, versions, command."""
    config = read_json(ctx.workdir / "config.json")
    stages = ctx.manifest.stages()
    return {
        "workdir": str(ctx.workdir.resolve()),
        "config_sha256": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
        "stage_hashes": {name: entry.get("config_hash") for name, entry in sorted(stages.items())},
        "checkpoints": checkpoints or {},
        "keys": keys or {},
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# Randomness ------------------------------------------------------------------------------------


def purpose_keys(seed: int, purposes: dict[str, int]) -> tuple[dict, dict]:
    """Fold one root key with a fixed integer per purpose.

    Returns (name → key, a JSON record of the seed, the purpose integers and the key data).
    """
    root = jax.random.key(seed)
    keys = {name: jax.random.fold_in(root, number) for name, number in purposes.items()}
    record = {
        "seed": seed,
        "purposes": dict(purposes),
        "key_data": {name: np.asarray(jax.random.key_data(key)).tolist() for name, key in keys.items()},
    }
    return keys, record


def numpy_rng(key) -> np.random.Generator:
    """Build a NumPy generator seeded from a JAX key's data, for host-side draws."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key), dtype=np.uint64))


# Outputs ---------------------------------------------------------------------------------------


def jsonable(value):
    """Convert NumPy values to Python ones and non-finite floats to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class Outputs:
    """The folder `WORKDIR/figures/<name>/`; every write goes to a temporary name, then a rename."""

    def __init__(self, workdir: str | os.PathLike, name: str):
        self.name = name
        self.workdir = Path(workdir)
        self.directory = self.workdir / "figures" / name
        self.written: list[Path] = []

    def path(self, filename: str) -> Path:
        return self.directory / filename

    def _replace(self, filename: str, write) -> Path:
        # Created on the first write, so a script that fails on its inputs leaves no folder.
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path(filename)
        stem, suffix = os.path.splitext(filename)
        # The suffix stays last, because numpy and matplotlib choose formats by it.
        temporary = self.path(f".{stem}.tmp-{os.getpid()}{suffix}")
        write(temporary)
        os.replace(temporary, final)
        if final not in self.written:
            self.written.append(final)
        return final

    def write_json(self, filename: str, value) -> Path:
        text = json.dumps(jsonable(value), indent=1, sort_keys=True, allow_nan=False) + "\n"
        return self._replace(filename, lambda path: path.write_text(text))

    def write_csv(self, filename: str, header: list[str], rows: list[list]) -> Path:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        return self._replace(filename, lambda path: path.write_text(buffer.getvalue()))

    def write_npz(self, filename: str, **arrays) -> Path:
        return self._replace(filename, lambda path: np.savez_compressed(path, **arrays))

    def save_figure(self, figure, stem: str) -> list[Path]:
        """Write `stem.png` (150 dpi) and `stem.pdf`."""
        paths = [
            self._replace(f"{stem}.png", lambda path: figure.savefig(path, dpi=150, bbox_inches="tight")),
            self._replace(f"{stem}.pdf", lambda path: figure.savefig(path, bbox_inches="tight")),
        ]
        return paths

    def read_json(self, filename: str):
        """Read an earlier result for re-plotting, naming the command that writes it when missing."""
        path = self.path(filename)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found; compute it first: python -m analysis.{self.name} --workdir={self.workdir}"
            )
        return json.loads(path.read_text())

    def read_npz(self, filename: str) -> dict:
        path = self.path(filename)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found; compute it first: python -m analysis.{self.name} --workdir={self.workdir}"
            )
        with np.load(path) as data:
            return {key: data[key] for key in data.files}

    def report(self) -> None:
        """Print the written paths (the one place scripts print, at their end)."""
        for path in self.written:
            print(path)


# Conflict-matrix inputs ------------------------------------------------------------------------


def conflict_inputs(ctx: Context) -> dict:
    """Read the cosine matrix, PCA scores and per-task facts, in the order of `pca.json`'s tasks.

    Returns names, cosine (T, T), scores (T, r), explained_variance_ratio, pca_mode, families,
    samples and tokens (T,) and the split weight kind of the split stage.
    """
    workdir = ctx.workdir
    cosine = np.load(require_file(workdir / "conflicts" / "cosine.npy", "conflicts", workdir))
    pca = read_json(require_file(workdir / "conflicts" / "pca.json", "conflicts", workdir))
    tasks = read_json(require_file(workdir / "data" / "tasks.json", "data", workdir))["tasks"]
    groups = read_json(require_file(workdir / "split" / "groups.json", "split", workdir))
    names = list(pca["tasks"])
    return {
        "names": names,
        "cosine": np.asarray(cosine, dtype=np.float64),
        "scores": np.asarray(pca["scores"], dtype=np.float64),
        "explained_variance_ratio": list(pca["explained_variance_ratio"]),
        "pca_mode": pca["mode"],
        "families": [tasks[name].get("family") or "unlabelled" for name in names],
        "samples": np.array([tasks[name]["samples"]["train"] for name in names], dtype=np.float64),
        "tokens": np.array([tasks[name]["tokens"] for name in names], dtype=np.float64),
        "split_weight": groups.get("split_weight", "samples"),
    }


def group_labels(ctx: Context, model: str, names: list[str]) -> list[str]:
    """Return the group label of every task in `names` under split model `model`."""
    label_of = {task: group["label"] for group in branch_runs(ctx, model) for task in group["tasks"]}
    missing = [name for name in names if name not in label_of]
    if missing:
        raise ValueError(f"split {model!r} does not assign tasks {missing[:5]}; rerun the split stage")
    return [label_of[name] for name in names]


def default_split_model(ctx: Context, preferred: str = "merit-2d") -> str:
    """Return `preferred` if the workdir has it, otherwise its deepest MERIT split."""
    splits = read_groups(ctx)
    if preferred in splits:
        return preferred
    merit = sorted((info["dims"], model) for model, info in splits.items() if info["kind"] == "pca")
    if not merit:
        raise ValueError("split/groups.json has no MERIT (pca) split; rerun the split stage")
    return merit[-1][1]
