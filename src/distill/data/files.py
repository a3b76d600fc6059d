"""Reading users' text files: one clear line for a binary file, another encoding, or a bad JSONL line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import DistillError


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a binary or otherwise-encoded file is a DistillError naming the byte."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DistillError(f"{path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DistillError(f"{path} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})") from None


def read_jsonl(path: Path, field: str | tuple[str, ...], hint: str = "set data.text_field") -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, each holding `field` (or every one of several); a bad line is named
    by its number, which each record keeps as `_line`."""
    fields = (field,) if isinstance(field, str) else field
    records = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DistillError(f"{path} line {n} is not JSON: {e.msg}") from None
        if not isinstance(record, dict):
            raise DistillError(f"{path} line {n} is not a JSON object")
        for f in fields:
            if f not in record:
                raise DistillError(f"{path} line {n} has no field {f!r} (it has {sorted(record)}); {hint}")
        records.append({**record, "_line": n})
    return records
