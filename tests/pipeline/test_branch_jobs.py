"""Branches as separate jobs, as concurrent sub-mesh runs and sequentially give the same merge.

Every workdir uses 8 CPU devices and a 4-device data mesh, so each branch sees the same layout
in all three modes; the mixture is cut to 8 tasks and two splits to keep the jobs short.
"""

import json
import shutil
import subprocess

import numpy as np
import pytest

from merit_jax.training.checkpoint import OrbaxLeafSource
from tests.demo_runs import ROOT, quick_demo_command, user_environment

pytestmark = pytest.mark.slow

TASKS = (
    "number_words_en", "number_words_fr", "unicode_category", "is_leap_year",
    "weekday_name", "reverse_word", "decimal_format", "uppercase_word",
)
SMALL = [
    "--config.mesh.data=4",
    f"--config.data.builtin_tasks=({','.join(repr(name) for name in TASKS)},)",
    "--config.data.examples_per_task=40",
    "--config.split.dims=(1,)",
    "--config.baselines.random_dims=(1,)",
    "--config.baselines.joint_epochs=(1,)",
]
MERGED = ("merit-1d", "random2")


def _command(workdir, job="", *extra):
    command = quick_demo_command(workdir, *SMALL, *extra)
    if job:
        command[3] = f"--config=configs/demo.py:quick,{job}"
    return command


def _run(workdir, job="", *extra, check=True):
    result = subprocess.run(
        _command(workdir, job, *extra), cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env=user_environment(devices=8),
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _merged(workdir, model):
    source = OrbaxLeafSource(workdir / "merged" / model / "params")
    return {path: source.read(path) for path in source.leaf_specs()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sequential") / "workdir"
    _run(workdir)
    return workdir


def _assert_same_merges(first, second):
    for model in MERGED:
        reference, other = _merged(first, model), _merged(second, model)
        assert reference.keys() == other.keys()
        for path in reference:
            assert np.array_equal(reference[path], other[path]), f"{model}: {path}"


def test_separate_branch_jobs_match_sequential_run(sequential, tmp_path):
    workdir = tmp_path / "jobs"
    # All jobs start at once: the branch jobs wait on the shared stages' locks, the merge job
    # waits for the branches.
    jobs = [f"branch={index}" for index in range(4)] + ["stage=train"]
    processes = [
        subprocess.Popen(
            _command(workdir, job), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=user_environment(devices=8),
        )
        for job in jobs
    ]
    merge = _run(workdir, "stage=merge", "--config.job.wait_for_branches=1200")
    for job, process in zip(jobs, processes):
        _, stderr = process.communicate(timeout=1200)
        assert process.returncode == 0, f"{job}: {stderr[-3000:]}"

    stages = json.loads((workdir / "manifest.json").read_text())["stages"]
    assert stages["init"]["attempts"] == 1  # the shared stages ran once
    assert stages["evaluate"]["status"] == "done"
    assert "waiting" in merge.stderr
    _assert_same_merges(sequential, workdir)


def test_concurrent_submesh_branches_match_sequential_run(sequential, tmp_path):
    workdir = tmp_path / "concurrent"
    result = _run(workdir, "", "--config.mesh.parallel_branches=2")
    assert "parallel" not in result.stderr or result.returncode == 0
    _assert_same_merges(sequential, workdir)


def test_merge_with_missing_branch_names_it(sequential, tmp_path):
    workdir = tmp_path / "missing"
    shutil.copytree(sequential, workdir)
    shutil.rmtree(workdir / "merged")
    shutil.rmtree(workdir / "runs" / "merit-1d-b1")
    manifest = json.loads((workdir / "manifest.json").read_text())
    for name in ("train:merit-1d-b1", "merge:merit-1d", "merge:random2", "evaluate"):
        manifest["stages"].pop(name)
    (workdir / "manifest.json").write_text(json.dumps(manifest))

    result = _run(workdir, "stage=merge", check=False)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "merit-1d-b1" in message
    assert "--config=configs/demo.py:quick,branch=merit-1d-b1 " in message
    assert "stage=merge" not in message
    assert "--config.mesh.data=4" in message
    assert "merit-1d-b0" not in message
