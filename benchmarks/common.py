"""Helpers shared by benchmarks: machine description, mean/std, atomic JSON + markdown output."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from distill.run import atomic_write

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    first: dict[str, str] = {}  # each /proc/cpuinfo field as the first core gives it
    try:
        for key, _, value in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()):
            first.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(first.get("flags", "").split())
    return {
        "cpu": first.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        # one CPU name covers machines with and without AMX, and bf16 speed depends on which
        "matrix_isa": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"}),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


UNDECIDED = "undecided (one seed)"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t interval (n-1 degrees of freedom); inf half-width for fewer than 2 values."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return statistics.fmean(values), math.inf
    return statistics.fmean(values), t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)


def reading(mean: float, half: float, lower: str = "lower", higher: str = "higher") -> str:
    """What a 95% interval of a difference says: `lower`/`higher` when it excludes 0, else a tie; nothing from one
    value (an infinite half-width)."""
    if not math.isfinite(half):
        return UNDECIDED
    if mean + half < 0:
        return lower
    return higher if mean - half > 0 else "a tie (the interval holds 0)"


def paired(a: list[float], b: list[float], lower: str, higher: str, within: float | None = None) -> dict:
    """a - b seed by seed in points (accuracies given as fractions), its mean and 95% t half-width, what the
    interval says, and with `within`, whether its lower end stays within that many points below 0."""
    diffs = [100 * (x - y) for x, y in zip(a, b)]
    mean, half = t_interval(diffs)
    out = {"diffs": [round(d, 2) for d in diffs], "mean": round(mean, 2), "ci95": round(half, 2),
           "verdict": reading(mean, half, lower, higher)}  # fmt: skip
    if within is not None:  # on the rounded figures the report shows
        held = "held" if out["mean"] - out["ci95"] >= -within else "did not hold"
        out[f"within_{within:g}_points"] = held if math.isfinite(half) else UNDECIDED
    return out


def write(name: str, data: dict[str, Any], markdown: str) -> None:
    atomic_write(RESULTS / f"{name}.json", json.dumps(data, indent=2) + "\n")
    atomic_write(RESULTS / f"{name}.md", markdown)


def finish(name: str, data: dict[str, Any], markdown, t0: float, note: str | None = None) -> None:
    """Stamp the results with the machine, the wall time since `t0` and an optional note; write and print them."""
    data.update(machine=machine(), wall_s=time.perf_counter() - t0)
    if note:
        data["note"] = note
    md = markdown(data)
    write(name, data, md)
    print(md)
