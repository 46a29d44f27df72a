"""End-to-end run of the vision-language demo: image tasks, frozen vision tower, all results rows."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from merit_jax.training.checkpoint import OrbaxLeafSource
from tests.demo_runs import ROOT, user_environment

MODELS = ["Base (θ0)", "Joint (1 ep)", "Joint (2 ep)", "Random-8", "MERIT-1D", "MERIT-2D", "MERIT-3D"]

pytestmark = pytest.mark.slow


def _leaves(directory):
    source = OrbaxLeafSource(directory)
    return {path: source.read(path) for path in source.leaf_specs()}


@pytest.fixture(scope="module")
def vl_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vl") / "workdir"
    command = [sys.executable, "-m", "merit_jax.main", "--config=configs/demo_vl.py:quick", f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=user_environment())
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_vl_demo_fills_every_results_row(vl_workdir):
    text = (vl_workdir / "eval" / "results.md").read_text()
    for name in MODELS:
        assert f"| {name} |" in text
    report = json.loads((vl_workdir / "eval" / "results.json").read_text())
    assert len(report["tasks"]) >= 8
    for model in report["models"]:
        losses = [report["results"][model][task]["loss"] for task in report["tasks"]]
        assert np.all(np.isfinite(losses))


def test_frozen_vision_tower_equals_theta0_in_every_run(vl_workdir):
    theta0 = _leaves(vl_workdir / "init" / "params")
    vision = [path for path in theta0 if path.startswith("visual/")]
    decoder = [path for path in theta0 if path.startswith("model/")]
    assert vision and decoder

    runs = sorted((vl_workdir / "runs").iterdir())
    merged = sorted((vl_workdir / "merged").iterdir())
    assert len(runs) == 2 + 2 + 4 + 8 + 8
    for directory in [run / "params" for run in runs] + [model / "params" for model in merged]:
        leaves = _leaves(directory)
        assert leaves.keys() == theta0.keys(), directory
        for path in vision:
            assert np.array_equal(leaves[path], theta0[path]), f"{directory}: {path} changed"
        assert any(not np.array_equal(leaves[path], theta0[path]) for path in decoder), directory


def test_warmup_trained_the_vision_tower(vl_workdir):
    # θ0 preparation trains the whole model; only later runs keep the vision tower frozen.
    from merit_jax.core.tree import leaves_with_paths
    from merit_jax.pipeline.context import Context

    initial = dict(leaves_with_paths(Context.from_workdir(vl_workdir).random_init_params()))
    theta0 = _leaves(vl_workdir / "init" / "params")
    for path in ("visual/patch_embed/proj/kernel", "visual/merger/mlp/0/kernel"):
        assert not np.allclose(np.asarray(initial[path]), theta0[path])
    metrics = [json.loads(line) for line in (vl_workdir / "init" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def _vision_flan_copy(tmp_path):
    fixtures = ROOT / "tests" / "data" / "vision" / "fixtures"
    shutil.copytree(fixtures / "images_191task_1k", tmp_path / "images")
    annotation = tmp_path / "annotation.json"
    shutil.copy(fixtures / "vision_flan_annotation.json", annotation)
    return annotation, tmp_path / "images"


def _vision_flan_command(annotation, images, workdir):
    return [
        sys.executable, "-m", "merit_jax.main", "--config=configs/demo_vl.py:quick", f"--workdir={workdir}",
        "--config.data.source=vision_flan", f"--config.data.annotation_path={annotation}",
        f"--config.data.image_root={images}", "--config.data.min_examples_per_task=1",
        "--config.data.warmup_size=0", "--config.data.heldout_size=0",
        "--config.split.dims=(1,)", "--config.baselines.random_dims=(1,)",
    ]


def test_corrupt_image_fails_with_one_line_error(tmp_path):
    annotation, images = _vision_flan_copy(tmp_path)
    broken = images / "VQA_counting" / "dots_0003.png"
    broken.write_bytes(broken.read_bytes()[:60])  # a valid header with the pixel data cut off
    workdir = tmp_path / "workdir"

    result = subprocess.run(
        _vision_flan_command(annotation, images, workdir), cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=user_environment(),
    )
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    assert "dots_0003.png" in message
    assert "Traceback" not in result.stderr
    # Nothing of the data stage was written: no tokenizer, no task table.
    assert not (workdir / "data" / "tokenizer").exists()
    assert not (workdir / "data" / "tasks.json").exists()


def test_missing_image_fails_before_writing(tmp_path):
    annotation, images = _vision_flan_copy(tmp_path)
    (images / "VQA_counting" / "dots_0003.png").unlink()
    workdir = tmp_path / "workdir"

    result = subprocess.run(
        _vision_flan_command(annotation, images, workdir), cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=user_environment(),
    )
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "dots_0003.png" in message and str(annotation) in message
    assert not workdir.exists()
