"""Rows read lazily from files on disk, for corpora and teacher caches larger than memory.

A `RowStore` is a mapping of column name -> column, the same shape as the in-memory
`{"input_ids": tensor, "labels": tensor}` every recipe and the engine already take: `len(col)`,
`col[slice]`, `col[index tensor]` return tensors; only the rows asked for are read.

`TokenShards` is a tokenized corpus written once as memory-mapped token files (`tokens-00000.npy`,
...) with an `index.json`; `TokenRows` packs its token stream into rows of seq_len + 1 tokens
(input ids and next-token labels) by position, so that a row's place in the stream, not the
order of reading, decides its content: the engine's seeded batch order makes it deterministic
and resumable.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from distill.errors import DistillError
from distill.run import atomic_write

INDEX = "index.json"
SHARD_TOKENS = 1 << 24  # 64 MiB of int32 tokens per file


class RowStore(Mapping):
    """Columns of equally many rows, read on demand; subclasses define `columns`, `__len__` and `read`."""

    columns: tuple[str, ...] = ()

    def __len__(self) -> int:  # rows, not columns: what `len(store[col])` also says
        raise NotImplementedError

    def read(self, column: str, rows: list[int]) -> Tensor:
        raise NotImplementedError

    def __getitem__(self, column: str) -> _Column:
        if column not in self.columns:
            raise KeyError(column)
        return _Column(self, column)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)


class _Column:
    def __init__(self, store: RowStore, name: str) -> None:
        self.store, self.name = store, name

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, idx: int | slice | Tensor | list[int]) -> Tensor:
        if isinstance(idx, int):
            return self.store.read(self.name, [idx])[0]
        if isinstance(idx, slice):
            rows = list(range(*idx.indices(len(self.store))))
        else:
            rows = [int(i) for i in (idx.tolist() if isinstance(idx, Tensor) else idx)]
        return self.store.read(self.name, rows)


def tokenizer_fingerprint(tokenizer) -> str:
    """Two tokenizers share a fingerprint when they map the same tokens to the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps([vocab, tokenizer.eos_token_id]).encode()).hexdigest()[:16]


class TokenShards:
    """A token stream in memory-mapped files: `tokens-*.npy` (int32) and `index.json`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = json.loads((self.path / INDEX).read_text())
        self.files = [np.load(self.path / f, mmap_mode="r") for f in index["shards"]]
        self.starts = np.cumsum([0] + [len(f) for f in self.files]).tolist()
        self.tokens = self.starts[-1]

    def span(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream, across shard boundaries."""
        out, pos = [], start
        while pos < stop:
            s = bisect.bisect_right(self.starts, pos) - 1
            a = pos - self.starts[s]
            b = min(stop, self.starts[s + 1]) - self.starts[s]
            out.append(self.files[s][a:b])
            pos += b - a
        return np.concatenate(out) if len(out) != 1 else np.asarray(out[0])

    @staticmethod
    def write(
        path: str | Path,
        docs: Iterable[list[int]],
        eos: int | None,
        meta: dict,
        shard_tokens: int | None = None,
    ) -> TokenShards:
        """Write tokenized documents (each followed by `eos`) as shards of `shard_tokens`; `index.json` last,
        so a directory without it is an unfinished write (started over). An existing index with the same
        `meta` is reused: the corpus is tokenized once."""
        path, shard_tokens = Path(path), shard_tokens or SHARD_TOKENS
        index = path / INDEX
        if index.is_file():
            if json.loads(index.read_text()).get("meta") == meta:
                return TokenShards(path)
            raise DistillError(
                f"{path} holds token shards of another corpus or tokenizer; use another data.shards directory"
            )
        path.mkdir(parents=True, exist_ok=True)
        names: list[str] = []
        buf: list[list[int]] = []
        size = 0

        def flush(final: bool) -> None:
            nonlocal buf, size
            flat = np.fromiter((t for ids in buf for t in ids), dtype=np.int32, count=size)
            while len(flat) >= shard_tokens or (final and len(flat)):
                name = f"tokens-{len(names):05d}.npy"
                tmp = path / f".{name}.tmp"
                with open(tmp, "wb") as f:  # np.save on a file object keeps the name as given
                    np.save(f, flat[:shard_tokens])
                os.replace(tmp, path / name)
                names.append(name)
                flat = flat[shard_tokens:]
            buf, size = [flat.tolist()], len(flat)

        for ids in docs:
            ids = list(ids) + ([eos] if eos is not None else [])
            buf.append(ids)
            size += len(ids)
            if size >= shard_tokens:
                flush(False)
        flush(True)
        if not names:
            raise DistillError("the corpus holds no tokens")
        atomic_write(index, json.dumps({"shards": names, "meta": meta}, indent=1))
        return TokenShards(path)


class TokenRows(RowStore):
    """Rows [first, first + n) of a token stream cut into seq_len + 1 tokens: `input_ids`, `labels`."""

    columns = ("input_ids", "labels")

    def __init__(self, shards: TokenShards, seq_len: int, first: int = 0, n: int | None = None) -> None:
        self.shards, self.seq_len, self.first = shards, seq_len, first
        total = shards.tokens // (seq_len + 1)
        self.n = total - first if n is None else min(n, total - first)

    def __len__(self) -> int:
        return self.n

    def read(self, column: str, rows: list[int]) -> Tensor:
        w = self.seq_len + 1
        out = np.empty((len(rows), self.seq_len), dtype=np.int64)
        for j, r in enumerate(rows):
            if not 0 <= r < self.n:
                raise IndexError(f"row {r} of {self.n}")
            span = self.shards.span((self.first + r) * w, (self.first + r + 1) * w)
            out[j] = span[:-1] if column == "input_ids" else span[1:]
        return torch.from_numpy(out)
