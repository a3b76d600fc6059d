"""report.md and PNG plots from a run's metrics.jsonl and results.json (`distill report RUN`)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.meter import SAMPLES, TOKENS
from distill.plots import save_figure
from distill.run import RunDir, atomic_write

BOOKKEEPING = {"time", "stage", "step", "epoch", "samples_seen"}
PREFIXES = {"eval/": "eval", "param/": "params", "speed/": "speed"}


def chart_of(key: str) -> str | None:
    """The chart a logged key belongs on, by its prefix: eval/, param/ (learned scalars, e.g. mtt's step size),
    speed/ (throughput); `lr` on its own; a key without a prefix is a loss term; None for bookkeeping."""
    if key in BOOKKEEPING:
        return None
    if key == "lr":
        return "lr"
    return next((chart for p, chart in PREFIXES.items() if key.startswith(p)), "loss" if "/" not in key else None)


Series = dict[str, tuple[list[float], list[float]]]


def _by_stage(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    stages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        stages[r.get("stage", "run")].append(r)
    return stages


def _series(records: list[dict[str, Any]], keep: Callable[[str], bool], x: Callable[[dict], float]) -> Series:
    out: Series = {}
    for r in records:
        for k, v in r.items():
            if keep(k) and isinstance(v, (int, float)):
                xs, ys = out.setdefault(k, ([], []))
                xs.append(x(r))
                ys.append(v)
    return out


def _plot(path: Path, title: str, series: Series, ylabel: str, xlabel: str, log: bool) -> bool:
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def _results(result: dict[str, Any]) -> list[str]:
    if not result:
        return ["_No results.json yet: the run has not finished._", ""]
    lines = ["## Results", "", markdown_table(result.get("rows", [])), ""]
    for rel in result.get("figures", []):  # images a recipe drew (e.g. mtt's synthetic set)
        lines += [f"![{Path(rel).stem}]({rel})", ""]
    for key, value in result.get("tables", {}).items():  # further tables a recipe returns (e.g. minitron's search)
        if value:
            lines += [f"## {key.replace('_', ' ').capitalize()}", "", markdown_table(value), ""]
    samples = [(r["model"], s) for r in result.get("rows", []) for s in r.get("samples", [])]
    if samples:
        lines += ["## Samples", ""] + [f"- **{m}**: {s!r}" for m, s in samples] + [""]
    return lines


def _stage(run: RunDir, stage: str, recs: list[dict[str, Any]], tokens_per_sample: int | None) -> list[str]:
    lines = [f"## Stage `{stage}`", ""]
    train = [r for r in recs if "loss" in r]
    on = lambda chart: lambda k: chart_of(k) == chart  # noqa: E731
    is_eval = on("eval")
    evals = [r for r in recs if any(map(is_eval, r))]
    by_step = lambda r: r["step"]  # noqa: E731
    plots = [
        (
            "loss",
            "loss per term",
            _series(train, on("loss"), by_step),
            "loss",
            "step",
            True,
        ),
        ("eval", "evaluation", _series(evals, is_eval, by_step), "value", "step", False),
        ("lr", "learning rate", _series(train, on("lr"), by_step), "lr", "step", False),
        ("params", "learned parameters", _series(train, on("params"), by_step), "value", "step", False),
        ("speed", "training throughput", _series(train, on("speed"), by_step), "per second", "step", False),
    ]
    if tokens_per_sample and evals and "samples_seen" in evals[0]:
        by_tokens = _series(evals, is_eval, lambda r: r["samples_seen"] * tokens_per_sample)
        plots.append(("eval-tokens", "evaluation vs tokens seen", by_tokens, "value", "tokens seen", False))
    for kind, title, series, ylabel, xlabel, log in plots:
        rel = f"plots/{stage}-{kind}.png"
        if _plot(run.path / rel, f"{stage}: {title}", series, ylabel, xlabel, log):
            lines += [f"![{stage} {title}]({rel})", ""]
    if train:
        last = train[-1]
        lines += [
            f"Last step {last['step']}: loss {last['loss']:.4f}, {last.get(SAMPLES, 0):.0f} samples/s"
            + (f", {last[TOKENS]:.0f} tokens/s." if TOKENS in last else "."),
            "",
        ]
    if evals:
        shown = [
            f"step {r['step']}: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in r.items() if is_eval(k))
            for r in evals[-5:]
        ]
        lines += ["Evaluations: " + "; ".join(shown), ""]
    return lines


def write_report(run_path: str | Path) -> Path:
    """Rebuild `report.md` and `plots/*.png` of a run; returns the report's path."""
    run = RunDir.open(run_path)  # a clear error, and nothing created, for a path that is not a run
    results_path = run.path / "results.json"
    result = json.loads(results_path.read_text()) if results_path.exists() else {}
    lines = [f"# Run `{run.path.name}`", "", *_results(result)]
    for stage, recs in _by_stage(run.metrics()).items():
        lines += _stage(run, stage, recs, result.get("info", {}).get("tokens_per_sample"))
    lines += ["## Config", "", "```yaml", (run.path / "config.yaml").read_text().rstrip(), "```", ""]
    out = run.path / "report.md"
    atomic_write(out, "\n".join(lines))
    return out


# the headers of the keys the recipes' rows share (any other key is its own header)
HEADERS = {
    "test_accuracy": "test accuracy",
    "val_accuracy": "validation accuracy",
    "val_loss": "held-out loss",
    "ppl": "perplexity",
    "tokens_per_s": "tokens/s",
}


def markdown_table(
    rows: list[dict[str, Any]],
    columns: dict[str, str] | list[str] | None = None,
    formats: dict[str, str] | None = None,
) -> str:
    """Rows as a markdown table. `columns`: which keys, in order, under which headers (a list: the keys under
    their HEADERS; default: every key of scalar values, as named); `formats`: a format spec per key (e.g. ','
    or '.4f'; default: floats to 4 places, ints with thousands separators). Columns of numbers are
    right-aligned; a missing value is blank."""
    if not rows:
        return "_empty_"
    if isinstance(columns, list):
        columns = {k: HEADERS.get(k, k) for k in columns}
    if columns is None:
        keys = [
            k
            for k in dict.fromkeys(k for r in rows for k in r)
            if not any(isinstance(r.get(k), (list, dict)) for r in rows)
        ]
        columns = {k: k for k in keys}
    formats = formats or {}

    def cell(r: dict[str, Any], k: str) -> str:
        if k not in r:
            return ""
        return format(r[k], formats[k]) if k in formats and r[k] is not None else _fmt(r[k])

    def numeric(k: str) -> bool:
        values = [r[k] for r in rows if r.get(k) is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    head = "| " + " | ".join(columns.values()) + " |\n|" + "".join("---:|" if numeric(k) else "---|" for k in columns)
    body = "\n".join("| " + " | ".join(cell(r, k) for k in columns) + " |" for r in rows)
    return f"{head}\n{body}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
