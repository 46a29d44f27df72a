"""Tests of atomic workdir writes and of the manifest's skip and mismatch rules."""

import json

import pytest

from merit_jax.pipeline.workdir import (
    Manifest,
    StageMismatchError,
    atomic_directory,
    config_hash,
    read_json,
    write_json_atomic,
)


def test_atomic_directory_appears_only_on_success(tmp_path):
    target = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as directory:
            (directory / "half.txt").write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []

    with atomic_directory(target) as directory:
        (directory / "done.txt").write_text("complete")
    assert (target / "done.txt").read_text() == "complete"


def test_atomic_directory_never_overwrites(tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="never overwritten"):
        with atomic_directory(tmp_path / "stage"):
            pass
    assert (tmp_path / "stage" / "keep.txt").read_text() == "old"


def test_write_json_atomic_leaves_no_temporary(tmp_path):
    write_json_atomic(tmp_path / "a" / "value.json", {"b": [1, 2]})
    assert read_json(tmp_path / "a" / "value.json") == {"b": [1, 2]}
    assert [path.name for path in (tmp_path / "a").iterdir()] == ["value.json"]


def test_read_json_names_broken_file(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        read_json(tmp_path / "broken.json")


def test_config_hash_depends_on_every_part():
    assert config_hash({"a": 1}, "x") == config_hash({"a": 1}, "x")
    assert config_hash({"a": 1}, "x") != config_hash({"a": 2}, "x")
    assert config_hash({"a": (1, 2)}) == config_hash({"a": [1, 2]})


def test_manifest_skips_done_stage_with_same_hash(tmp_path):
    manifest = Manifest(tmp_path)
    assert not manifest.is_done("split", "h1")
    manifest.start("split", "h1", ["conflicts"])
    assert not manifest.is_done("split", "h1")
    manifest.finish("split", ["split/groups.json"], groups=8)

    assert manifest.is_done("split", "h1")
    entry = json.loads((tmp_path / "manifest.json").read_text())["stages"]["split"]
    assert entry["status"] == "done"
    assert entry["groups"] == 8
    assert entry["wall_seconds"] >= 0


def test_manifest_rejects_other_settings(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.start("train:joint-1ep", "h1", [])
    with pytest.raises(StageMismatchError, match="new --workdir"):
        manifest.is_done("train:joint-1ep", "h2")
    manifest.finish("train:joint-1ep", [])
    with pytest.raises(StageMismatchError, match="train:joint-1ep"):
        manifest.is_done("train:joint-1ep", "h2")


def test_manifest_counts_attempts(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.start("init", "h", [])
    manifest.start("init", "h", [])
    assert manifest.entry("init")["attempts"] == 2
