"""Shared fixtures: the quick demo workdir, built once per test session and reused read-only."""

from pathlib import Path

import pytest

from tests.demo_runs import run_quick_demo


@pytest.fixture(scope="session")
def quick_workdir(tmp_path_factory) -> Path:
    """A finished quick-demo workdir. Tests must not modify it; copy it first if they need to."""
    workdir = tmp_path_factory.mktemp("quick") / "workdir"
    run_quick_demo(workdir)
    return workdir
