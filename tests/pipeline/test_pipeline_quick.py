"""End-to-end tests of the pipeline on the quick demo config, run as a user would run it.

The uninterrupted run is the reference: a run killed during branch training and rerun must skip
the stages it had finished and end with bit-identical merged weights.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.demo_runs import ROOT, quick_demo_command, run_quick_demo, user_environment


MODELS = ["Base (θ0)", "Joint (1 ep)", "Joint (2 ep)", "Random-8", "MERIT-1D", "MERIT-2D", "MERIT-3D"]
MERGED = ["merit-1d", "merit-2d", "merit-3d", "random8"]

pytestmark = pytest.mark.slow


def _stages(workdir):
    return json.loads((Path(workdir) / "manifest.json").read_text())["stages"]


def _merged_leaves(workdir, model):
    """Every leaf of a merged checkpoint, read through the streaming reader, as NumPy arrays."""
    from merit_jax.training.checkpoint import OrbaxLeafSource

    source = OrbaxLeafSource(Path(workdir) / "merged" / model / "params")
    return {path: source.read(path) for path in source.leaf_specs()}


@pytest.fixture
def reference_workdir(quick_workdir):
    return quick_workdir


def test_quick_demo_fills_every_results_row(reference_workdir):
    text = (reference_workdir / "eval" / "results.md").read_text()
    for name in MODELS:
        assert f"| {name} |" in text

    report = json.loads((reference_workdir / "eval" / "results.json").read_text())
    assert report["models"] == ["base", "joint-1ep", "joint-2ep", "random8", "merit-1d", "merit-2d", "merit-3d"]
    assert len(report["tasks"]) >= 32
    for model in report["models"]:
        for task in report["tasks"]:
            scores = report["results"][model][task]
            assert np.isfinite(scores["loss"]) and scores["loss"] > 0
            assert 0.0 <= scores["exact_match"] <= 1.0
            assert scores["total"] > 0


def test_quick_demo_trains_every_model(reference_workdir):
    stages = _stages(reference_workdir)
    assert all(entry["status"] == "done" for entry in stages.values())
    groups = json.loads((reference_workdir / "split" / "groups.json").read_text())["splits"]
    assert [len(groups[model]["groups"]) for model in MERGED] == [2, 4, 8, 8]

    # Branches of a split together see exactly the examples of Joint (1 ep), once each.
    tasks = json.loads((reference_workdir / "data" / "tasks.json").read_text())["tasks"]
    for model in MERGED:
        covered = sorted(task for group in groups[model]["groups"] for task in group["tasks"])
        assert covered == sorted(tasks)
        budget = sum(group["tokens"] for group in groups[model]["groups"])
        assert budget == sum(info["tokens"] for info in tasks.values())

    # Every trained model moved away from θ0, and differently from the others.
    base = _merged_leaves(reference_workdir, "merit-1d")
    for model in MERGED[1:]:
        other = _merged_leaves(reference_workdir, model)
        assert any(not np.array_equal(base[path], other[path]) for path in base)


def test_rerun_skips_finished_stages(reference_workdir):
    before = _stages(reference_workdir)
    started = time.perf_counter()
    run_quick_demo(reference_workdir)
    assert time.perf_counter() - started < 120
    after = _stages(reference_workdir)
    assert after == before


def test_killed_branch_training_resumes_to_same_weights(reference_workdir, tmp_path):
    workdir = tmp_path / "killed"
    process = subprocess.Popen(
        quick_demo_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=user_environment(),
    )
    branch = workdir / "runs" / "merit-1d-b0"
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and process.poll() is None:
            checkpoints = branch / "checkpoints"
            if checkpoints.is_dir() and any(path.name.isdigit() for path in checkpoints.iterdir()):
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read()[-3000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    killed = _stages(workdir)
    assert killed["train:merit-1d-b0"]["status"] == "running"
    finished_before_kill = [name for name, entry in killed.items() if entry["status"] == "done"]
    assert {"data", "init", "gradients", "split", "train:joint-1ep"} <= set(finished_before_kill)
    assert not (branch / "params").exists()

    result = run_quick_demo(workdir)
    assert "resuming at step" in result.stderr

    resumed = _stages(workdir)
    for name in finished_before_kill:
        assert resumed[name] == killed[name], f"stage {name} was redone"
    assert resumed["train:merit-1d-b0"]["attempts"] == 2
    for model in MERGED:
        reference = _merged_leaves(reference_workdir, model)
        rerun = _merged_leaves(workdir, model)
        assert reference.keys() == rerun.keys()
        for path in reference:
            assert np.array_equal(reference[path], rerun[path]), f"{model}: {path} differs"
    steps = [json.loads(line)["step"] for line in (branch / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_malformed_jsonl_fails_cleanly(tmp_path):
    mixture = tmp_path / "mixture.jsonl"
    good = {"task": "echo", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]}
    mixture.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n")
    workdir = tmp_path / "workdir"

    result = run_quick_demo(workdir, "--config.data.source=jsonl", f"--config.data.jsonl_path={mixture}", check=False)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    assert f"{mixture}:3" in message
    assert "Traceback" not in result.stderr
    assert not workdir.exists()
