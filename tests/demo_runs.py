"""Runs the pipeline as a user would, in a subprocess, for the end-to-end tests."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_demo_command(workdir: Path, *overrides: str) -> list[str]:
    """The command line of the quick demo with extra absl flags."""
    return [
        sys.executable, "-m", "merit_jax.main", "--config=configs/demo.py:quick",
        f"--workdir={workdir}", *overrides,
    ]


def run_quick_demo(workdir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the quick demo to completion; raise with the end of stderr when `check` and it fails."""
    result = subprocess.run(
        quick_demo_command(workdir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=1500
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pipeline failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result
