"""Training text for language models: the bundled Jane Austen novels, users' text / JSONL files,
or a local `datasets` directory; tokenized and packed into fixed-length sequences with a held-out split.
"""

from __future__ import annotations

import gzip
import itertools
import os
import sys
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import Field
from torch import Tensor

from distill.config import Section
from distill.data.files import iter_jsonl, read_text
from distill.data.shards import TokenRows, TokenShards, tokenizer_fingerprint
from distill.errors import DistillError

# token rows by column ("input_ids", "labels"): tensors in memory, or memory-mapped from shards (TokenRows)
Rows = Mapping[str, Any]

AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
AUSTEN_ROOTS = [
    os.environ.get("DISTILL_DATA", str(Path.home() / ".cache" / "distill")) + "/janeaustenr",
    "/",  # installed with apt (pulls in R)
]
AUSTEN_BOOKS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]


class TextData(Section):
    """Where the text comes from and how it is cut into sequences."""

    source: Literal["austen", "files", "datasets", "mixture"] = Field("austen", description="corpus kind")
    paths: list[str] = Field(default_factory=list, description="files: .txt / .jsonl files; datasets: one directory")
    text_field: str = Field("text", description="JSONL / datasets: the field holding the text")
    seq_len: int = Field(256, gt=1, description="tokens per packed sequence")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of sequences held out (the corpus's end)")
    max_sequences: int | None = Field(None, gt=0, description="use at most this many training sequences")
    max_val_sequences: int | None = Field(None, gt=0, description="evaluate on at most this many held-out sequences")
    evaluate_on: Literal["held_out", "validation"] = Field(
        "held_out",
        description="validation: evaluate on the last val_fraction of the training sequences instead, and train on "
        "those before them (for choosing hyperparameters; the held-out sequences are not used)",
    )
    parts: list[TextData] = Field(
        default_factory=list,
        description="mixture: the corpora to mix (each its own source and paths), interleaved in pieces of "
        "~4,000 characters, one part after another, so that every part runs through the whole corpus",
    )
    shards: str | None = Field(
        None,
        description="tokenize the corpus once into memory-mapped token shards in this directory and read rows from "
        "them (memory does not grow with the corpus); null: hold the tokens in memory",
    )


def austen_novels() -> list[str]:
    """The six novels as strings, from the Debian package r-cran-janeaustenr (parsed with `rdata`)."""
    import warnings

    import rdata

    for root in AUSTEN_ROOTS:
        d = Path(root) / AUSTEN_DATA
        if (d / "Rdata.rdx").is_file():
            break
    else:
        raise DistillError("the Jane Austen corpus is not installed; run `make data` (Debian r-cran-janeaustenr)")
    with warnings.catch_warnings():  # rdata warns that a lazy-load index has no file header
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((d / "Rdata.rdx").read_bytes())))
        rdb = (d / "Rdata.rdb").read_bytes()
        books = []
        for name in AUSTEN_BOOKS:
            off, length = (int(v) for v in index["variables"][name])
            lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(rdb[off + 4 : off + length])))
            books.append("\n".join(str(line) for line in lines))
    return books


def read_texts(cfg: TextData) -> list[str]:
    return list(iter_texts(cfg))


def iter_texts(cfg: TextData) -> Iterator[str]:
    """The corpus's documents one at a time (a JSONL file or a `datasets` directory is never read whole)."""
    if cfg.source == "austen":
        yield from austen_novels()
        return
    if cfg.source == "mixture":
        if not cfg.parts:
            raise DistillError("data.parts must name the corpora of a mixture")
        pieces = [_pieces(iter_texts(part)) for part in cfg.parts]
        while pieces:  # round robin; a part that runs out drops out
            for it in list(pieces):
                if (piece := next(it, None)) is None:
                    pieces.remove(it)
                else:
                    yield piece
        return
    if not cfg.paths:
        raise DistillError(f"data.paths must name the {cfg.source} input(s)")
    if cfg.source == "datasets":
        try:
            from datasets import load_from_disk
        except ImportError:
            raise DistillError("data.source=datasets needs the datasets package: pip install datasets") from None
        ds = load_from_disk(cfg.paths[0])
        ds = ds["train"] if hasattr(ds, "keys") and "train" in ds else ds
        for start in range(0, len(ds), 1000):
            yield from (str(t) for t in ds[start : start + 1000][cfg.text_field])
        return
    any_text = False
    for p in map(Path, cfg.paths):
        if not p.is_file():
            raise DistillError(f"text file {p} does not exist")
        docs = (
            (str(r[cfg.text_field]) for r in iter_jsonl(p, cfg.text_field))
            if p.suffix in (".jsonl", ".json")
            else iter([read_text(p)])
        )
        for t in docs:
            any_text = any_text or bool(t.strip())
            yield t
    if not any_text:
        raise DistillError(f"the files {cfg.paths} hold no text")


def _pieces(docs: Iterator[str], size: int = 4000) -> Iterator[str]:
    """Documents cut at line ends into pieces of about `size` characters (a novel is not one piece)."""
    for doc in docs:
        start = 0
        while start < len(doc):
            end = doc.find("\n", start + size)
            end = len(doc) if end < 0 else end + 1
            yield doc[start:end]
            start = end


def pack(token_lists: list[list[int]], seq_len: int, eos: int | None) -> Tensor:
    """Concatenate documents (separated by `eos`) and cut into (N, seq_len) rows; the tail is dropped."""
    flat: list[int] = []
    for ids in token_lists:
        flat += ids
        if eos is not None:
            flat.append(eos)
    n = len(flat) // seq_len
    if n == 0:
        raise DistillError(f"the corpus has {len(flat)} tokens: fewer than one sequence of {seq_len}")
    return torch.tensor(flat[: n * seq_len]).view(n, seq_len)


def token_splits(cfg: TextData, tokenizer) -> tuple[Rows, Rows]:
    """(train, held-out) batches-to-be {"input_ids", "labels"}: rows of seq_len tokens and their next tokens.

    The held-out split is the corpus's last sequences, so it never overlaps training text.
    """
    if cfg.shards:
        return _shard_splits(cfg, tokenizer)
    texts = read_texts(cfg)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    seqs = pack(ids, cfg.seq_len + 1, tokenizer.eos_token_id)
    (t0, tn), (v0, vn) = _split(len(seqs), cfg)
    train, val = seqs[t0 : t0 + tn], seqs[v0 : v0 + vn]
    return ({"input_ids": train[:, :-1], "labels": train[:, 1:]}, {"input_ids": val[:, :-1], "labels": val[:, 1:]})


def _held_out(rows: int, cfg: TextData) -> int:
    n_val = max(1, int(rows * cfg.val_fraction))
    if rows - n_val < 1:
        raise DistillError(f"{rows} sequences are too few to hold {n_val} out; use a shorter data.seq_len")
    return n_val


def _split(rows: int, cfg: TextData) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first row, rows) of the training and the evaluation split: the corpus's end is held out; with
    `evaluate_on=validation` the training rows' end is evaluated on instead (the held-out rows go unread)."""
    n_val = _held_out(rows, cfg)
    rows -= n_val
    if cfg.evaluate_on == "validation":
        n_val = _held_out(rows, cfg)
        rows -= n_val
    return (0, min(rows, cfg.max_sequences or rows)), (rows, min(n_val, cfg.max_val_sequences or n_val))


def _shard_splits(cfg: TextData, tokenizer) -> tuple[TokenRows, TokenRows]:
    """`token_splits` read from memory-mapped token shards (written on first use)."""
    meta = {
        "source": cfg.source,
        "paths": cfg.paths,
        "text_field": cfg.text_field,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    texts = iter_texts(cfg)

    def docs() -> Iterator[list[int]]:
        while batch := list(itertools.islice(texts, 256)):
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]

    shards = TokenShards.write(cast(str, cfg.shards), docs(), tokenizer.eos_token_id, meta)
    rows = shards.tokens // (cfg.seq_len + 1)
    if rows == 0:
        raise DistillError(f"the corpus has {shards.tokens} tokens: fewer than one sequence of {cfg.seq_len + 1}")
    (t0, tn), (v0, vn) = _split(rows, cfg)
    return TokenRows(shards, cfg.seq_len, t0, tn), TokenRows(shards, cfg.seq_len, v0, vn)


def learned_tokenizer(cfg: TextData, vocab_size: int, saved: Path | None = None, who: str = "distill"):
    """`train_tokenizer` on the corpus of `cfg`, or the one saved at `saved` by an earlier attempt of the run."""
    if saved is not None and saved.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    tokenizer = train_tokenizer(read_texts(cfg), vocab_size)
    if (n := len(tokenizer)) < vocab_size:  # BPE stops when the corpus has no pair left to merge
        say = f"the corpus yields {n:,} tokens, fewer than tokenizer_vocab={vocab_size:,}"
        print(f"distill: {who}: {say}; the models use {n:,}", file=sys.stderr)
    return tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer of `vocab_size` tokens learned on `texts` (deterministic), for models
    trained from scratch; `<|endoftext|>` ends documents and pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=end, bos_token=end, pad_token=end)
