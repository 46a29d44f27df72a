"""Runs the pipeline as a user would, in a subprocess, for the end-to-end tests."""

import os
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


def user_environment(devices: int = 1) -> dict[str, str]:
    """The test environment with `devices` CPU devices, as a user's machine would have (default 1)."""
    env = dict(os.environ)
    flags = [flag for flag in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in flag]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def run_quick_demo(
    workdir: Path, *overrides: str, check: bool = True, devices: int = 1
) -> subprocess.CompletedProcess:
    """Run the quick demo to completion; raise with the end of stderr when `check` and it fails."""
    result = subprocess.run(
        quick_demo_command(workdir, *overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        env=user_environment(devices),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pipeline failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result
