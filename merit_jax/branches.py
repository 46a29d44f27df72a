"""Print the commands that train each branch as its own job, and a job-array script for a scheduler.

    python -m merit_jax.branches --config=configs/demo.py --workdir=workdirs/demo

The branch list comes from the workdir's split, so run the prepare job first
(`--config=...:stage=prepare`). Every branch job shares nothing with the others but the workdir.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from merit_jax.pipeline import plan, prepare
from merit_jax.pipeline.context import Context
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.jobs import job_array_script, job_command

_CONFIG = config_flags.DEFINE_config_file("config", None, "The experiment config, as given to merit_jax.main.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The prepared workdir whose branches to list.")
_SCHEDULER = flags.DEFINE_enum("scheduler", "slurm", ["slurm", "none"], "Also print a job-array script for this scheduler.")
flags.mark_flags_as_required(["config", "workdir"])


def branch_runs(ctx: Context) -> list[plan.RunSpec]:
    """List the branch runs of a prepared workdir, in the order that `branch=<index>` counts."""
    if not (ctx.workdir / "split" / "groups.json").exists():
        raise ConfigError(
            f"{ctx.workdir} has no split yet; run the prepare job first: "
            f"python -m merit_jax.main --config=CONFIG:stage=prepare --workdir={ctx.workdir}"
        )
    runs = plan.training_runs(ctx.config, ctx.task_names, prepare.read_groups(ctx))
    return [run for run in runs if run.model != run.name]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    ctx = Context(_CONFIG.value, _WORKDIR.value)
    try:
        runs = branch_runs(ctx)
    except ConfigError as error:
        sys.exit(f"error: {error}")

    # The commands run merit_jax.main with this invocation's config, preset and overrides.
    argv = ["merit_jax.main"] + [argument for argument in sys.argv[1:] if not argument.startswith("--scheduler")]
    print(f"# {len(runs)} branch runs; each line is one independent job.")
    for index, run in enumerate(runs):
        print(f"{job_command(argv, f'branch={index}')}  # {run.name}")
    print(f"# When all are done: {job_command(argv, 'stage=merge')}")
    if _SCHEDULER.value == "slurm":
        print("\n# Example SLURM job array (save as branches.sbatch, submit with sbatch branches.sbatch):")
        print(job_array_script(job_command(argv, "branch=$SLURM_ARRAY_TASK_ID"), len(runs)))


if __name__ == "__main__":
    app.run(main)
