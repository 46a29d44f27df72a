"""Jobs on a shared workdir: which branch a job trains, and the commands of other jobs.

A branch is named by its run name ("merit-2d-b01") or by its index among the branch runs, in
the order `python -m merit_jax.branches` prints them.
"""

import re
import shlex

from merit_jax.pipeline import plan
from merit_jax.pipeline.defaults import JOB_OPTIONS
from merit_jax.pipeline.errors import ConfigError


def select_branch(runs: list[plan.RunSpec], branch: str) -> plan.RunSpec:
    """Find a branch run by name or by its index among the branch runs (as `merit_jax.branches` lists them)."""
    branches = [run for run in runs if run.model != run.name]
    if branch.isdigit():
        index = int(branch)
        if index >= len(branches):
            raise ConfigError(f"branch={index} is out of range: there are {len(branches)} branch runs (0 to {len(branches) - 1})")
        return branches[index]
    for run in runs:
        if run.name == branch:
            return run
    raise ConfigError(f"branch={branch!r} is not a run of this workdir; choose one of {[run.name for run in branches]}")


def job_command(argv: list[str], job: str) -> str:
    """Rewrite a `merit_jax.main` command line so that it runs `job` (e.g. "branch=3").

    The --config argument keeps its preset and loses any other job option; --config.x=y
    overrides are kept, since a job must see the same settings as the run it belongs to.
    """
    parts = ["python", "-m", "merit_jax.main"]
    for argument in argv[1:]:
        if argument.startswith("--config="):
            path, _, arg = argument.removeprefix("--config=").partition(":")
            items = [item for item in arg.split(",") if item and item.split("=", 1)[0].strip() not in JOB_OPTIONS]
            argument = f"--config={path}:{','.join(items + [job])}"
        parts.append(shlex.quote(argument))
    return " ".join(parts)


def job_array_script(command: str, count: int) -> str:
    """Write a SLURM job-array script whose task i runs `command` (which uses $SLURM_ARRAY_TASK_ID)."""
    # Single quotes (from shlex) would keep the shell from expanding the task id.
    command = re.sub(r"'([^'\"$`]*\$SLURM_ARRAY_TASK_ID[^'\"$`]*)'", r'"\1"', command)
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --array=0-{count - 1}",
            "#SBATCH --job-name=merit-branch",
            "# One branch per array task; add your partition, GPU and time requests here.",
            command,
        ]
    )
