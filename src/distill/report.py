"""report.md and PNG plots from a run's metrics.jsonl and results.json (`distill report RUN`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.run import RunDir, atomic_write

SKIP = {"time", "stage", "step", "epoch", "lr", "samples_per_s"}


def _by_stage(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    stages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        stages[r.get("stage", "run")].append(r)
    return stages


def _series(records: list[dict[str, Any]], keep) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for k, v in r.items():
            if keep(k) and isinstance(v, (int, float)):
                xs, ys = out.setdefault(k, ([], []))
                xs.append(r["step"])
                ys.append(v)
    return out


def _plot(
    path: Path, title: str, series: dict[str, tuple[list[int], list[float]]], ylabel: str, log: bool = False
) -> bool:
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if log and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True


def write_report(run_path: str | Path) -> Path:
    """Rebuild `report.md` and `plots/*.png` of a run; returns the report's path."""
    run = RunDir(run_path)
    if not (run.path / "config.yaml").is_file():
        raise DistillError(f"{run.path} is not a run directory (no config.yaml in it)")
    records = run.metrics()
    lines = [f"# Run `{run.path.name}`", ""]
    results_path = run.path / "results.json"
    if results_path.exists():
        result = json.loads(results_path.read_text())
        lines += ["## Results", "", _table(result.get("rows", [])), ""]
    else:
        lines += ["_No results.json yet: the run has not finished._", ""]
    for stage, recs in _by_stage(records).items():
        lines += [f"## Stage `{stage}`", ""]
        train = [r for r in recs if "loss" in r]
        evals = [r for r in recs if any(k.startswith("eval/") for k in r)]
        plots = [
            (
                "loss",
                "loss per term",
                _series(train, lambda k: k not in SKIP and not k.startswith("eval/")),
                "loss",
                True,
            ),
            ("eval", "evaluation", _series(evals, lambda k: k.startswith("eval/")), "value", False),
            ("lr", "learning rate", _series(train, lambda k: k == "lr"), "lr", False),
        ]
        for kind, title, series, ylabel, log in plots:
            rel = f"plots/{stage}-{kind}.png"
            if _plot(run.path / rel, f"{stage}: {title}", series, ylabel, log):
                lines += [f"![{stage} {title}]({rel})", ""]
        if train:
            last = train[-1]
            lines += [
                f"Last step {last['step']}: loss {last['loss']:.4f}, {last.get('samples_per_s', 0):.0f} samples/s.",
                "",
            ]
        if evals:
            lines += [
                "Evaluations: "
                + ", ".join(
                    f"step {r['step']}: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in r.items() if k.startswith("eval/"))
                    for r in evals[-5:]
                ),
                "",
            ]
    lines += ["## Config", "", "```yaml", (run.path / "config.yaml").read_text().rstrip(), "```", ""]
    out = run.path / "report.md"
    atomic_write(out, "\n".join(lines))
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_empty_"
    keys = list(rows[0])
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)
    body = "\n".join("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows)
    return f"{head}\n{body}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
