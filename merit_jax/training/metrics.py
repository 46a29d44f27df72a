"""Training metrics as JSON lines, one record per logged step, safe to resume."""

import json
import os
from pathlib import Path

import jax


class MetricsWriter:
    """Append-only JSON-lines writer for `runs/<name>/metrics.jsonl`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records with `step` greater than `step`, e.g. after resuming from a checkpoint.

        A run killed after logging step 120 but before checkpointing it resumes at an earlier
        step; without this, the file would hold steps 101..120 twice.
        """
        if not self.path.exists() or jax.process_index() != 0:
            return
        kept = []
        with self.path.open() as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # A line cut short by the kill.
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, self.path)

    def write(self, record: dict) -> None:
        if jax.process_index() != 0:  # with several hosts, process 0 writes the shared file
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Load every record of a metrics file."""
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
