"""A teacher-signal cache for language models: the teacher runs once over a token corpus, and
students train from what it stored instead of running it at every step.

Per position the cache keeps the teacher's top-k token ids (int32), their log-probabilities over
the full vocabulary (float16) and the log of the probability mass outside them (float32, -inf
when k is the vocabulary), which `losses.sparse_kl` needs to account for the rest. Rows are
stored with their input ids and labels, in shards of `shard_rows` rows (`shard-00000.safetensors`,
...), each written whole (temporary file, then rename) so that a capture killed at any point
resumes without losing a shard or computing one twice. `manifest.json` says what was captured:
the teacher's and tokenizer's fingerprints, the corpus's, the sequence length and k; a cache of
another teacher, tokenizer or corpus is refused.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from pydantic import Field, field_validator
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.config import Section
from distill.data.shards import RowStore, tokenizer_fingerprint
from distill.errors import DistillError
from distill.kd.objective import Term, parse_ref
from distill.models.llm import LlmSpec
from distill.run import atomic_write

MANIFEST = "manifest.json"
VERSION = 1
COLUMNS = ("input_ids", "labels", "topk_ids", "topk_logprobs", "rest_logprob")
# what a student's run must share with the cache (k may differ: any k trains a student)
MUST_MATCH = ("teacher", "tokenizer", "seq_len", "corpus", "rows")


class CacheConfig(Section):
    """How a teacher's signals are captured."""

    k: int = Field(32, gt=0, description="top-k log-probabilities kept per position")
    shard_rows: int = Field(256, gt=0, description="sequences per shard file (the unit of resume)")
    batch_size: int = Field(8, gt=0, description="sequences per teacher forward pass")


class CachedTeacher(LlmSpec):
    """A causal LM teacher, optionally read from a teacher-signal cache."""

    cache: str | None = Field(
        None,
        description="a teacher-signal cache directory: students train from it instead of running the teacher at "
        "every step (captured there first when missing or unfinished)",
    )
    capture: CacheConfig = Field(default_factory=CacheConfig, description="how the cache is captured")

    @field_validator("cache")
    @classmethod
    def _a_directory(cls, cache: str | None) -> str | None:
        if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
            raise ValueError(f"teacher cache {cache} must be a directory (with {MANIFEST} in it), not a file")
        return cache


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the config and of a strided sample of every tensor's values (cheap for billions of weights)."""
    h = hashlib.sha256()
    config: Any = getattr(model, "config", None)
    h.update((config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else "").encode())
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def rows_fingerprint(rows: Mapping[str, Any], chunk: int = 1024) -> str:
    """A hash of a corpus's token rows (read a chunk at a time)."""
    h = hashlib.sha256()
    ids = rows["input_ids"]
    for start in range(0, len(ids), chunk):
        h.update(ids[start : start + chunk].to(torch.int32).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def top_k(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, log-probabilities, log of the rest's mass) of the k most probable tokens at each position.

    One pass for the normaliser and a top-k on the raw logits (the same order): no log-softmax of the whole
    vocabulary is written. The rest's mass is 1 minus the top-k's, summed in float64; -inf when k covers
    the vocabulary."""
    logits = logits.float()
    k = min(k, logits.shape[-1])
    norm = torch.logsumexp(logits, -1, keepdim=True)
    values, ids = logits.topk(k, -1)
    values = values - norm
    if k == logits.shape[-1]:
        return ids, values, torch.full(values.shape[:-1], float("-inf"), device=values.device)
    rest = -torch.expm1(torch.logsumexp(values.double(), -1))  # 1 - top-k mass, without cancellation near 0
    return ids, values, rest.clamp_min(1e-30).log().float()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The cache's manifest (None when there is none yet); one line when it is not a manifest."""
    if (path / MANIFEST).is_dir() or (path.exists() and not path.is_dir()):
        raise DistillError(f"teacher cache {path} must be a directory (with {MANIFEST} in it)")
    if not (path / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        int(manifest["rows"]), int(manifest["shard_rows"]), int(manifest["k"]), int(manifest["seq_len"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise DistillError(
            f"teacher cache {path}: {MANIFEST} is damaged ({type(e).__name__}: {str(e)[:80]}); remove the directory "
            "and capture again"
        ) from None
    return manifest


def check_manifest(path: Path, found: dict[str, Any], expected: dict[str, Any], keys: tuple[str, ...]) -> None:
    """One line naming the first property in which the cache differs from what the run needs."""
    for key in keys:
        if found.get(key) != expected.get(key):
            raise DistillError(
                f"teacher cache {path} was captured with another {key} ({found.get(key)} != {expected.get(key)}); "
                "capture into another directory"
            )


def capture(
    model: nn.Module,
    rows: Mapping[str, Any],
    path: str | Path,
    manifest: dict[str, Any],
    cfg: CacheConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """Run `model` over every row of `rows` ({"input_ids", "labels"}) and store its top-k in `path`.

    `manifest` names the teacher, tokenizer, corpus and sequence length (see `describe`). Shards already
    on disk are kept (resume). With several processes, each computes shards j = rank mod world. Returns
    {"tokens": ..., "seconds": ...} for the shards this process computed now.
    """
    path = Path(path)
    manifest = {
        **manifest,
        "k": cfg.k,
        "shard_rows": cfg.shard_rows,
        "rows": len(rows["input_ids"]),
        "version": VERSION,
    }
    if (found := read_manifest(path)) is not None:
        check_manifest(path, found, manifest, (*MUST_MATCH, "k", "shard_rows"))
    else:
        atomic_write(path / MANIFEST, json.dumps(manifest, indent=1))
    n, seq_len = manifest["rows"], manifest["seq_len"]
    model.eval()
    mine = [
        (j, j * cfg.shard_rows, min(n, (j + 1) * cfg.shard_rows))
        for j in range(rank, math.ceil(n / cfg.shard_rows), world)
    ]
    bar = tqdm(
        total=sum(b - a for _, a, b in mine) * seq_len,
        unit="tok",
        unit_scale=True,
        desc="capture",
        disable=not progress,
    )
    computed, seconds = 0, 0.0
    pending = list(mine)
    with torch.inference_mode():  # the teacher's forward builds no graph
        while pending:
            j, a, b = pending.pop(0)
            out = path / shard_name(j)
            if shard_problem(path, j, manifest) is None:
                bar.update((b - a) * seq_len)
                continue
            lock = FileLock(str(path / f".{out.name}.lock"))
            try:
                lock.acquire(timeout=0 if pending else -1)  # another capture is on it: come back to it last
            except Timeout:
                pending.append((j, a, b))
                continue
            if shard_problem(path, j, manifest) is None:  # the other capture finished it meanwhile
                lock.release()
                bar.update((b - a) * seq_len)
                continue
            t0 = time.perf_counter()
            parts: dict[str, list[Tensor]] = {c: [] for c in COLUMNS}
            for s in range(a, b, cfg.batch_size):
                ids = rows["input_ids"][s : min(b, s + cfg.batch_size)]
                top_ids, top_lp, rest = top_k(model(input_ids=ids.to(device)).logits, cfg.k)
                parts["input_ids"].append(ids.to(torch.int32))
                parts["labels"].append(rows["labels"][s : min(b, s + cfg.batch_size)].to(torch.int32))
                parts["topk_ids"].append(top_ids.to(torch.int32).cpu())
                parts["topk_logprobs"].append(top_lp.half().cpu())
                parts["rest_logprob"].append(rest.float().cpu())
                bar.update(len(ids) * seq_len)
            tmp = out.with_name(f".{out.name}.tmp")
            save_file({c: torch.cat(v).contiguous() for c, v in parts.items()}, str(tmp))
            atomic_write(_checksum(out), _sha256(tmp) + "\n")  # before the shard appears: a shard has its checksum
            os.replace(tmp, out)  # a shard exists whole or not at all
            lock.release()
            computed += (b - a) * seq_len
            seconds += time.perf_counter() - t0
    bar.close()
    return {"tokens": computed, "seconds": seconds}


def shard_name(j: int) -> str:
    return f"shard-{j:05d}.safetensors"


def _checksum(shard: Path) -> Path:
    return shard.with_name(shard.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_problem(path: Path, j: int, manifest: dict[str, Any]) -> str | None:
    """Why shard `j` cannot be used (missing, damaged, or not what the manifest says), or None when it is whole."""
    out = path / shard_name(j)
    if not out.is_file():
        return "missing"
    sums = _checksum(out)
    if not sums.is_file() or sums.read_text().strip() != _sha256(out):
        return "damaged (its bytes do not match the checksum written with it)"
    rows = min(manifest["shard_rows"], manifest["rows"] - j * manifest["shard_rows"])
    try:
        with safe_open(str(out), framework="pt") as f:
            shape = tuple(f.get_slice("topk_ids").get_shape())
    except Exception as e:  # noqa: BLE001 - a file that is not safetensors fails in many ways
        return f"unreadable ({str(e)[:60]})"
    if shape != (rows, manifest["seq_len"], manifest["k"]):
        return f"{DISAGREES} ({shape[0]} rows x {shape[2]} top-k, the manifest says {rows} x {manifest['k']})"
    return None


DISAGREES = "disagrees with the manifest"  # whole, but not what the manifest says: the manifest was edited


def describe(teacher: nn.Module, tokenizer, rows: Mapping[str, Any]) -> dict[str, Any]:
    """What a cache of `teacher` over `rows` must match: fingerprints and the sequence length."""
    return {
        "teacher": model_fingerprint(teacher),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "corpus": rows_fingerprint(rows),
        "seq_len": int(rows["input_ids"][0].shape[-1]),
        "rows": len(rows["input_ids"]),
    }


class TeacherCache(RowStore):
    """A finished cache, read lazily: columns input_ids, labels, topk_ids, topk_logprobs, rest_logprob."""

    columns = COLUMNS

    def __init__(self, path: str | Path, expected: dict[str, Any] | None = None, verified: bool = False) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise DistillError(f"{self.path} is not a teacher cache (no {MANIFEST}); make one with `distill capture`")
        self.manifest = manifest
        if expected is not None:
            check_manifest(self.path, self.manifest, expected, MUST_MATCH)
        n, per = self.manifest["rows"], self.manifest["shard_rows"]
        count = math.ceil(n / per)
        if not verified and (problems := _problems(self.path, self.manifest)):
            (first, why), *_ = problems.items()
            raise DistillError(
                f"teacher cache {self.path} is not whole ({len(problems)} of {count} shards missing or damaged; "
                f"{first}: {why}); run the capture again to recompute them"
            )
        self.files = [safe_open(str(self.path / shard_name(j)), framework="pt") for j in range(count)]
        self.starts = [j * per for j in range(count)] + [n]
        self.n = n
        self.captured = {"tokens": 0, "seconds": 0.0}

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    def __len__(self) -> int:
        return self.n

    def read(self, column: str, rows: list[int]) -> Tensor:
        out = []
        for r in rows:
            if not 0 <= r < self.n:
                raise IndexError(f"row {r} of {self.n}")
            j = bisect.bisect_right(self.starts, r) - 1
            i = r - self.starts[j]
            out.append(self.files[j].get_slice(column)[i : i + 1])
        t = torch.cat(out) if out else torch.empty(0)
        return t.long() if t.dtype == torch.int32 else t


def open_or_capture(
    path: str | Path,
    teacher: nn.Module,
    tokenizer,
    rows: Mapping[str, Any],
    cfg: CacheConfig,
    accelerator,
    expected: dict[str, Any] | None = None,
) -> TeacherCache:
    """The cache at `path` for this teacher and corpus; captured (or finished) first when it is not whole,
    each process computing its share of the shards. `.captured` holds this process's capture figures.
    `expected`: what `check_cache` returned, when the caller checked already (hashing a corpus reads it)."""
    expected = expected or check_cache(path, teacher, tokenizer, rows)
    path = Path(path)
    stats = {"tokens": 0, "seconds": 0.0}
    manifest = read_manifest(path)
    problems = _problems(path, manifest) if manifest is not None else {}
    if any(why.startswith(DISAGREES) for why in problems.values()):
        name, why = next((n, w) for n, w in problems.items() if w.startswith(DISAGREES))
        raise DistillError(f"teacher cache {path}: {name} {why}; was {MANIFEST} edited? restore it or capture anew")
    if manifest is None or problems:  # missing or damaged shards are computed (again)
        stats = capture(
            teacher,
            rows,
            path,
            expected,
            cfg,
            accelerator.device,
            accelerator.is_main_process,
            accelerator.process_index,
            accelerator.num_processes,
        )
    accelerator.wait_for_everyone()
    cache = TeacherCache(path, expected, verified=manifest is not None and not problems)  # each shard hashed once
    cache.captured = stats
    return cache


def check_cache(path: str | Path, teacher: nn.Module, tokenizer, rows: Mapping[str, Any]) -> dict[str, Any]:
    """What a cache at `path` must match; refused at once (before any work) when one there does not."""
    expected = describe(teacher, tokenizer, rows)
    if (found := read_manifest(Path(path))) is not None:
        check_manifest(Path(path), found, expected, MUST_MATCH)
    return expected


def _problems(path: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """The shards a manifest promises that are missing or damaged, with why."""
    count = math.ceil(manifest["rows"] / manifest["shard_rows"])
    found = {shard_name(j): shard_problem(path, j, manifest) for j in range(count)}
    return {name: why for name, why in found.items() if why is not None}


def from_cache(terms: list[Term]) -> list[Term]:
    """The objective reading a cache: each forward KL on the teacher's logits becomes `sparse_kl` on the
    cached top-k; any other teacher signal is an error (a cache holds only the output distribution)."""
    out = []
    for term in terms:
        refs = [parse_ref(r) for r in term.inputs]
        if not any(r.owner == "teacher" for r in refs):
            out.append(term)
            continue
        if term.loss != "kl" or [(r.owner, r.key) for r in refs] != [("student", "logits"), ("teacher", "logits")]:
            raise DistillError(
                f"objective term {term.name!r} ({term.loss} on {term.inputs}) needs the live teacher; a teacher "
                "cache serves only a forward KL on student.logits and teacher.logits"
            )
        if float(term.args.get("temperature", 1.0)) != 1.0:
            raise DistillError(
                f"objective term {term.name!r}: a teacher cache holds T=1 probabilities; remove temperature"
            )
        args = {k: v for k, v in term.args.items() if k == "chunk_size"}
        inputs = ["student.logits", "batch.topk_ids", "batch.topk_logprobs", "batch.rest_logprob"]
        out.append(term.model_copy(update={"loss": "sparse_kl", "inputs": inputs, "args": args}))
    return out
