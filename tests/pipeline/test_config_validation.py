"""Tests of the demo config and of the checks that reject invalid settings before any stage runs."""

import importlib.util
from pathlib import Path

import pytest

from merit_jax.pipeline import plan
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.defaults import parse_arg
from merit_jax.pipeline.jobs import job_array_script, job_command, select_branch
from merit_jax.pipeline.runner import validate_config

ROOT = Path(__file__).resolve().parents[2]


def _demo_config(arg=None):
    spec = importlib.util.spec_from_file_location("demo_config", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("arg", [None, "quick"])
def test_demo_configs_are_valid(arg):
    validate_config(_demo_config(arg), num_tasks=45)


def test_demo_config_rejects_unknown_argument():
    with pytest.raises(ValueError, match="unknown config preset 'fast'"):
        _demo_config("fast")


@pytest.mark.parametrize(
    "section, field, value",
    [
        ("data", "source", "csv"),
        ("init", "mode", "pretrained"),
        ("conflicts", "pca_mode", "svd"),
        ("split", "weight", "examples"),
        ("merge", "weights", "ties"),
        ("train", "optimizer", "lion"),
    ],
)
def test_invalid_choice_names_option(section, field, value):
    config = _demo_config("quick")
    config[section][field] = value
    with pytest.raises(ConfigError, match=f"config.{section}.{field} = '{value}' is invalid"):
        validate_config(config, num_tasks=45)


def test_split_dimension_needs_enough_tasks():
    config = _demo_config("quick")
    with pytest.raises(ConfigError, match=r"2\^r <= 7 tasks"):
        validate_config(config, num_tasks=7)
    config.split.dims = (1, 2)
    config.baselines.random_dims = (2,)
    validate_config(config, num_tasks=7)


def test_checkpoint_mode_needs_checkpoint():
    config = _demo_config("quick")
    config.init.mode = "checkpoint"
    with pytest.raises(ConfigError, match="config.model.checkpoint is empty"):
        validate_config(config, num_tasks=45)


def test_results_rows_follow_paper_order():
    config = _demo_config()
    names = [plan.display_name(model) for model in plan.evaluated_models(config)]
    assert names == ["Base (θ0)", "Joint (1 ep)", "Joint (2 ep)", "Random-8", "MERIT-1D", "MERIT-2D", "MERIT-3D"]


def test_training_runs_cover_every_group():
    config = _demo_config("quick")
    groups = {
        "merit-1d": {"groups": [{"label": "0", "tasks": ["a"]}, {"label": "1", "tasks": ["b", "c"]}]},
        "merit-2d": {"groups": [{"label": f"{i:02b}", "tasks": [str(i)]} for i in range(4)]},
        "merit-3d": {"groups": [{"label": f"{i:03b}", "tasks": [str(i)]} for i in range(8)]},
        "random8": {"groups": [{"label": f"{i:03b}", "tasks": [str(i)]} for i in range(8)]},
    }
    runs = plan.training_runs(config, ["a", "b", "c"], groups)
    names = [run.name for run in runs]
    assert names[:3] == ["joint-1ep", "joint-2ep", "merit-1d-b0"]
    assert len(names) == 2 + 2 + 4 + 8 + 8
    assert runs[1].num_epochs == 2
    assert all(run.num_epochs == 1 for run in runs[2:])
    assert runs[3].tasks == ("b", "c")


def test_parse_arg_separates_preset_and_job_options():
    assert parse_arg("quick,branch=3") == ("quick", {"branch": "3"})
    assert parse_arg("stage=merge") == ("", {"stage": "merge"})
    assert parse_arg(None) == ("", {})
    with pytest.raises(ValueError, match="unknown config option 'steps'"):
        parse_arg("steps=3")
    with pytest.raises(ValueError, match="two presets"):
        parse_arg("quick,full")


def test_branch_option_selects_train_job():
    config = _demo_config("quick,branch=merit-2d-b01")
    assert config.job.branch == "merit-2d-b01"
    assert config.job.stage == "train"
    assert _demo_config("stage=prepare").job.stage == "prepare"


def test_job_command_replaces_job_and_keeps_overrides():
    argv = ["merit_jax/main.py", "--config=configs/demo.py:quick,stage=merge", "--workdir=w", "--config.seed=3"]
    assert job_command(argv, "branch=5") == (
        "python -m merit_jax.main --config=configs/demo.py:quick,branch=5 --workdir=w --config.seed=3"
    )
    assert job_command(["main", "--config=configs/qwen3b.py"], "branch=0") == (
        "python -m merit_jax.main --config=configs/qwen3b.py:branch=0"
    )


def test_job_array_script_expands_task_id():
    command = job_command(["main", "--config=configs/demo.py", "--workdir=w"], "branch=$SLURM_ARRAY_TASK_ID")
    script = job_array_script(command, 22)
    assert "#SBATCH --array=0-21" in script
    assert '"--config=configs/demo.py:branch=$SLURM_ARRAY_TASK_ID"' in script
    assert "'" not in script.splitlines()[-1]


def test_select_branch_by_index_and_name():
    runs = [
        plan.RunSpec("joint-1ep", "joint-1ep", ("a",), 1),
        plan.RunSpec("merit-1d-b0", "merit-1d", ("a",), 1),
        plan.RunSpec("merit-1d-b1", "merit-1d", ("b",), 1),
    ]
    assert select_branch(runs, "1").name == "merit-1d-b1"
    assert select_branch(runs, "merit-1d-b0").name == "merit-1d-b0"
    with pytest.raises(ConfigError, match="out of range"):
        select_branch(runs, "2")
    with pytest.raises(ConfigError, match="not a run"):
        select_branch(runs, "random8-b000")


def test_branch_index_checked_before_stages():
    config = _demo_config("quick,branch=21")
    validate_config(config, num_tasks=45)
    config = _demo_config("quick,branch=22")
    with pytest.raises(ConfigError, match=r"branch=22 is out of range: there are 22 branch runs \(0 to 21\)"):
        validate_config(config, num_tasks=45)
