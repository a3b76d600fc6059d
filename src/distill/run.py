"""The run directory: config snapshot, metrics.jsonl, TensorBoard events, checkpoints, results, report.

Layout of `runs/<recipe>-<time>/`:
    config.yaml         the resolved config (what `--resume` reads back)
    metrics.jsonl       one JSON record per log/eval event, each tagged with its stage
    events/             TensorBoard event files
    checkpoints/<stage>/step-XXXXXXXX.pt   resumable training state
    <stage>/model.safetensors              final weights of each finished stage
    results.json        the recipe's result table
    report.md, plots/   written by `distill report`

Only the main process writes; the other processes get a RunDir whose writers do nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from distill.errors import DistillError


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_run_name(recipe: str) -> str:
    return f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """A run's directory. `is_main=False` makes every write a no-op (non-main DDP processes)."""

    active: RunDir | None = None  # the run this process holds the lock of (what an interrupted CLI names)
    STARTED = ".config-started.yaml"  # the config a run started with, beside the config.yaml a user may edit
    RECIPE = ".recipe"  # the recipe that made the run
    BOOKKEEPING = {".lock", "config.yaml", STARTED, RECIPE}  # what start() writes

    def __init__(self, path: str | Path, is_main: bool = True) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self._writer = None
        self._lock: FileLock | None = None
        self.fresh = False  # made by this process's start() (set there)
        if is_main:
            if self.path.exists() and not self.path.is_dir():
                raise DistillError(
                    f"{self.path} is a file, not a run directory; choose another run.output_dir / run_name"
                )
            made = [p for p in (self.path, *self.path.parents) if not p.exists()]
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except (NotADirectoryError, FileExistsError):
                raise DistillError(f"{self.path} cannot be a run directory: a part of its path is a file") from None
            except OSError as e:  # a name too long, a read-only or full file system: leave nothing behind
                for p in made:
                    if p.is_dir() and not any(p.iterdir()):
                        p.rmdir()
                raise DistillError(
                    f"cannot make the run directory {self.path}: {e.strerror}; choose another run.output_dir or a "
                    "shorter run.run_name"
                ) from None

    def lock(self) -> RunDir:
        """Hold the run's lock until `close()` (or the process's end, a kill included): one writer per run."""
        if not self.is_main or self._lock is not None:
            return self
        lock = FileLock(self.path / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise DistillError(
                f"{self.path} is in use by another distill process; wait for it to end (or stop it) and resume then"
            ) from None
        self._lock = lock
        RunDir.active = self
        return self

    # --- creation and reopening -------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str, is_main: bool = True) -> RunDir:
        path = Path(root) / name
        if len(name.encode()) > 255:  # the common file systems' limit on one name
            raise DistillError(
                f"cannot make the run directory {name[:40]}... (File name too long: {len(name.encode())} bytes); "
                "choose a shorter run.run_name"
            )
        if is_main and (path / "config.yaml").exists():
            # two runs started in the same second: never reuse (and clobber) a run directory
            i = 1
            while (Path(root) / f"{name}-{i}" / "config.yaml").exists():
                i += 1
            path = Path(root) / f"{name}-{i}"
        return cls(path, is_main)

    @classmethod
    def open(cls, path: str | Path, is_main: bool = True) -> RunDir:
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise DistillError(f"{path} is not a run directory (no config.yaml in it)")
        return cls(path, is_main)

    # --- files --------------------------------------------------------------------------
    def write_text(self, rel: str, text: str) -> None:
        if self.is_main:
            atomic_write(self.path / rel, text)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2) + "\n")

    def read_json(self, rel: str) -> Any:
        return json.loads((self.path / rel).read_text())

    # --- metrics ------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl and its scalars to TensorBoard."""
        if not self.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._scalars([record])

    def _scalars(self, records: Iterable[dict[str, Any]]) -> None:
        writer = self._tensorboard()
        if writer is None:
            return
        for record in records:
            stage, step = record.get("stage", "run"), int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("time", "stage", "step", "epoch") and isinstance(value, (int, float)):
                    writer.add_scalar(f"{stage}/{key}", value, step, walltime=record.get("time"))
        writer.flush()

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise DistillError(f"{self.metrics_path} line {i + 1} is damaged") from None
                # the last line of a process killed while appending it: the resume rewrites the file
        return records

    def truncate_metrics(self, stage: str, step: int) -> None:
        """Drop what a killed run logged after the checkpoint it resumes from."""
        if not self.is_main:
            return
        records = self.metrics()
        kept = _records_until(records, stage, step)
        atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        events = self.path / "events"
        if len(kept) < len(records) and events.is_dir():  # TensorBoard would show the dropped steps twice
            self.close_tensorboard()
            shutil.rmtree(events)
            self._scalars(kept)  # the events again, from what metrics.jsonl keeps

    def _tensorboard(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional for library users
                self._writer = False
                return None
            self._writer = SummaryWriter(str(self.path / "events"))
        return self._writer or None

    def close_tensorboard(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None

    def remove_partial_files(self) -> list[Path]:
        """Remove what an interrupted atomic write left behind (`.NAME.*.tmp` files and folders); the run must be
        locked by this process, so no write of another is under way."""
        left = sorted(self.path.rglob(".*.tmp"))
        for p in left:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return left

    def holds_nothing_yet(self) -> bool:
        """Whether the run holds only what start() wrote (a run that failed before its first result)."""
        return all(p.name in self.BOOKKEEPING for p in self.path.iterdir())

    def recipe(self) -> str | None:
        """The recipe that made this run (None for a run from before this was kept)."""
        p = self.path / self.RECIPE
        return p.read_text().strip() if p.is_file() else None

    def close(self) -> None:
        self.close_tensorboard()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            RunDir.active = None


def _records_until(records: Iterable[dict[str, Any]], stage: str, step: int) -> list[dict[str, Any]]:
    kept = []
    for r in records:
        if r.get("stage") == stage and r.get("step", 0) > step:
            break
        kept.append(r)
    return kept
