"""Shared fixtures: the quick demo workdir, built once per test session and reused read-only.

The test process gets 8 CPU devices, so sharding tests can build meshes; unsharded code runs on
the first device as it would with one.
"""

import os

# Must be set before JAX initializes its backends, which happens on first use.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.demo_runs import run_quick_demo  # noqa: E402


@pytest.fixture(scope="session")
def quick_workdir(tmp_path_factory) -> Path:
    """A finished quick-demo workdir. Tests must not modify it; copy it first if they need to."""
    workdir = tmp_path_factory.mktemp("quick") / "workdir"
    run_quick_demo(workdir)
    return workdir
