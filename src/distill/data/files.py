"""Reading users' text files: one clear line for a binary file, another encoding, or a bad JSONL line."""

from __future__ import annotations

import json
from collections.abc import Iterator
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
    return list(iter_jsonl(path, field, hint))


def _lines(path: Path) -> Iterator[str]:
    """The file's lines, read as it is walked (a corpus may be larger than memory)."""
    with path.open("rb") as f:
        if b"\x00" in f.read(8192):
            raise DistillError(f"{path} is a binary file, not text")
        f.seek(0)
        offset = 0
        for raw in f:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                at = offset + e.start
                raise DistillError(f"{path} is not UTF-8 text (byte {at}: {raw[e.start : e.start + 1]!r})") from None
            offset += len(raw)


def iter_jsonl(path: Path, field: str | tuple[str, ...], hint: str = "set data.text_field") -> Iterator[dict[str, Any]]:
    """`read_jsonl`, one record at a time."""
    fields = (field,) if isinstance(field, str) else field
    for n, line in enumerate(_lines(path), start=1):
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
        yield {**record, "_line": n}
