"""Command-line entry point: flags → config → pipeline.

    python -m merit_jax.main --config=configs/demo.py --workdir=workdirs/demo

Errors in the user's input (mixture files, configs, a workdir made with other settings) end the
program with a one-line message and exit status 1, without a traceback.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from merit_jax.data import MixtureFormatError
from merit_jax.data.vision import ImageError, ImageTruncationError
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.runner import run_pipeline
from merit_jax.pipeline.workdir import StageMismatchError
from merit_jax.training import checkpoint as checkpoint_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, optionally with ':arg' (e.g. configs/demo.py:quick).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for every artifact of the run; rerunning with it resumes the run."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(checkpoint_lib.QuietCheckpointing())
    logging.info("workdir %s", _WORKDIR.value)
    try:
        run_pipeline(_CONFIG.value, _WORKDIR.value, argv=sys.argv)
    except (ConfigError, ImageError, ImageTruncationError, MixtureFormatError, StageMismatchError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        # Stages checkpoint as they go, so the same command resumes. Exit status 130 means SIGINT.
        print(f"interrupted; rerun the same command to resume in {_WORKDIR.value}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)
