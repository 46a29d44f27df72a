"""The workdir: atomic writes and the run manifest that lets reruns skip finished stages.

Every stage output appears under its final name only once it is complete (write to a temporary
sibling, then `os.replace`), and `manifest.json` records per stage its status, config hash,
inputs, outputs and timings. Updates to the manifest hold an exclusive file lock, so several
processes (for example branches trained as separate jobs) can share one workdir.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import jax


def canonical_json(value: Any) -> str:
    """Serialize `value` deterministically (sorted keys, no whitespace)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_to_jsonable)


def _to_jsonable(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialize {type(value).__name__} value {value!r} to JSON")


def config_hash(*parts: Any) -> str:
    """Hash the JSON form of `parts` (config sections, upstream hashes) to a short hex string."""
    return hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()[:16]


def _temporary_name(path: Path) -> Path:
    # Host and process in the name: hosts sharing a filesystem can have equal process ids.
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename (on the primary host only).

    With several hosts every one computes the same content, and process 0 alone writes it.
    """
    if jax.process_index() != 0:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write `value` as indented JSON to `path` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=_to_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; run the stage that writes it first") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it and rerun its stage") from None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` only if the block finishes without error.

    An existing `path` is never replaced: the caller decides whether a finished output is reused.
    """
    path = Path(path)
    if jax.process_index() != 0:
        # Other hosts compute the same outputs; they write them to a private directory that is
        # dropped, and only collective writes (orbax checkpoints) need their participation.
        with tempfile.TemporaryDirectory() as private:
            yield Path(private)
        return
    if path.exists():
        raise FileExistsError(f"{path} already exists and is never overwritten; delete it to recompute")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    os.replace(temporary, path)


class StageMismatchError(RuntimeError):
    """A finished stage in the workdir was produced with different settings."""


class Manifest:
    """`WORKDIR/manifest.json`: stage name → status, config hash, inputs, outputs, timings."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / "manifest.json"
        self._lock_path = self.workdir / ".manifest.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                stages = read_json(self.path)["stages"] if self.path.exists() else {}
                yield stages
                write_json_atomic(self.path, {"stages": stages})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def stages(self) -> dict:
        return read_json(self.path)["stages"] if self.path.exists() else {}

    def entry(self, stage: str) -> dict | None:
        return self.stages().get(stage)

    def is_done(self, stage: str, stage_hash: str) -> bool:
        """Tell whether `stage` finished with `stage_hash`.

        Raises `StageMismatchError` when the stage finished, or started and left partial
        outputs, with another hash: mixing outputs of different settings would be silent
        corruption.
        """
        entry = self.entry(stage)
        if entry is None:
            return False
        if entry.get("config_hash") != stage_hash:
            raise StageMismatchError(
                f"stage '{stage}' in {self.workdir} was {entry.get('status')} with different "
                f"settings (config hash {entry.get('config_hash')}, now {stage_hash}); outputs are "
                "never overwritten, so use a new --workdir, or delete that stage's outputs and its "
                "entry in manifest.json to recompute it"
            )
        return entry.get("status") == "done"

    def start(self, stage: str, stage_hash: str, inputs: list[str]) -> None:
        with self._locked() as stages:
            previous = stages.get(stage, {})
            now = time.time()
            stages[stage] = {
                "status": "running",
                "config_hash": stage_hash,
                "inputs": inputs,
                "first_started": previous.get("first_started", now),
                "started": now,
                "attempts": previous.get("attempts", 0) + 1,
            }

    def finish(self, stage: str, outputs: list[str], **info: Any) -> None:
        with self._locked() as stages:
            entry = stages[stage]
            entry.update(status="done", outputs=outputs, finished=time.time(), **info)
            entry["wall_seconds"] = entry["finished"] - entry["started"]
