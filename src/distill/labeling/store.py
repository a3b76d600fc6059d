"""Durable teacher outputs: every LLM response saved the moment it arrives, in SQLite (WAL mode).

A response is keyed by (teacher, prompt hash, sample index), so a rerun skips what is done, and a
process killed mid-run loses nothing already answered and repeats nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from distill.errors import DistillError
from distill.run import atomic_write

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    teacher TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    sample INTEGER NOT NULL,
    item TEXT NOT NULL,
    mode TEXT NOT NULL,
    raw TEXT NOT NULL,
    label TEXT,
    latency_s REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    logprobs TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (teacher, prompt_hash, sample)
);
CREATE INDEX IF NOT EXISTS responses_item ON responses (teacher, mode, item);
"""


@dataclass
class Response:
    teacher: str
    prompt_hash: str
    sample: int
    item: str
    mode: str
    raw: str
    label: str | None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: Any = None  # per-token top logprobs when the backend gives them


class LabelStore:
    """The SQLite file of a labelling run (one connection, used from one thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed row survives a killed process
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise DistillError(f"label store {self.path} cannot be opened: {e}") from None

    def put(self, r: Response) -> None:
        """Save one response now (its own transaction); a response already stored is kept as it was."""
        row = asdict(r)
        row["logprobs"] = json.dumps(r.logprobs) if r.logprobs is not None else None
        row["created"] = time.time()
        cols = ", ".join(row)
        with self.db:
            self.db.execute(f"INSERT OR IGNORE INTO responses ({cols}) VALUES ({', '.join(':' + c for c in row)})", row)

    def labels(self, teacher: str, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
        """The stored parsed label of each (prompt_hash, sample) pair of `teacher` that is answered."""
        return self._column(teacher, keys, "label")

    def raw(self, teacher: str, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The stored reply of each (prompt_hash, sample) pair of `teacher` that is answered."""
        return self._column(teacher, keys, "raw")

    def _column(self, teacher: str, keys: Iterable[tuple[str, int]], column: str) -> dict[tuple[str, int], Any]:
        keys = set(keys)
        hashes = sorted({h for h, _ in keys})
        out: dict[tuple[str, int], Any] = {}
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            q = f"SELECT prompt_hash, sample, {column} FROM responses WHERE teacher = ? AND prompt_hash IN ({','.join('?' * len(chunk))})"  # noqa: E501
            out.update({(h, s): v for h, s, v in self.db.execute(q, [teacher, *chunk]) if (h, s) in keys})
        return out

    def done(self, teacher: str, keys: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which (prompt_hash, sample) pairs of `teacher` are already answered."""
        return set(self.labels(teacher, keys))

    def responses(self, teacher: str | None = None, mode: str | None = None) -> Iterator[dict[str, Any]]:
        q, args = "SELECT * FROM responses WHERE 1=1", cast(list[Any], [])
        if teacher is not None:
            q, args = q + " AND teacher = ?", [*args, teacher]
        if mode is not None:
            q, args = q + " AND mode = ?", [*args, mode]
        cur = self.db.execute(q + " ORDER BY item, sample", args)
        names = [d[0] for d in cur.description]
        for row in cur:
            rec = dict(zip(names, row))
            rec["logprobs"] = json.loads(rec["logprobs"]) if rec["logprobs"] else None
            yield rec

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    # --- export ------------------------------------------------------------------------------
    def export(self, path: str | Path, fmt: str = "jsonl", teacher: str | None = None) -> Path:
        """All responses as JSONL, Parquet (needs pyarrow) or a `datasets` directory (needs datasets)."""
        rows = list(self.responses(teacher))
        path = Path(path)
        if fmt == "jsonl":
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
        elif fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise DistillError("Parquet export needs pyarrow: pip install pyarrow") from None
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(pa.Table.from_pylist([{**r, "logprobs": json.dumps(r["logprobs"])} for r in rows]), tmp)
            tmp.replace(path)
        elif fmt == "datasets":
            try:
                from datasets import Dataset
            except ImportError:
                raise DistillError("`datasets` export needs the datasets package: pip install datasets") from None
            Dataset.from_list([{**r, "logprobs": json.dumps(r["logprobs"])} for r in rows]).save_to_disk(str(path))
        else:
            raise DistillError(f"export format {fmt!r}: choose jsonl, parquet or datasets")
        return path

    def close(self) -> None:
        self.db.close()
