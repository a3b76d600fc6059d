"""How long must Minitron's search candidates train before their ranking settles? SmolLM2-135M pruned to half
its parameters: every candidate shape distils on the longest budget at a constant learning rate (the search's
default schedule, so its validation loss after t tokens is what a search of t tokens would rank by), evaluated
along the way; the rankings at each budget are compared by Spearman's rank correlation.

    python benchmarks/minitron_search.py [--candidates 6] [--tokens 40960] [--evals 8]

Runs the `distill minitron` recipe (its own search code); the final student gets one step, it is not measured.
Writes benchmarks/results/minitron_search.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, finish, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.recipes import minitron  # noqa: E402


def ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0] * len(values)
    for rank, i in enumerate(order):
        out[i] = rank
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two lists without ties: 1 - 6 sum d^2 / (n (n^2 - 1))."""
    ra, rb, n = ranks(a), ranks(b), len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def run(args: argparse.Namespace) -> dict:
    per_step = args.batch * args.seq_len
    steps = args.tokens // per_step
    over = [f"run.output_dir={args.dir}", f"run.run_name=search-{time.strftime('%H%M%S')}",
            "teacher.path=smollm2-135m", "data.source=austen", f"data.seq_len={args.seq_len}",
            f"data.max_val_sequences={args.val}", f"calibration={args.calibration}", "depth_batches=1",
            "target.params=0.5", f"search.candidates={args.candidates}", f"search.tokens={args.tokens}",
            f"search.train.batch_size={args.batch}", f"search.train.eval_every={steps // args.evals}",
            f"search.train.log_every={steps // args.evals}", "search.train.progress=true",
            "train.max_steps=1", f"train.batch_size={args.batch}", "samples=[]"]  # fmt: skip
    result = minitron.run(load_config(minitron.Config, None, over))
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    stages = {f"search-{i}" for i in range(args.candidates)}
    curves: dict[str, dict[int, float]] = {}
    for r in records:
        if r.get("stage") in stages and "eval/val_loss" in r:
            curves.setdefault(r["stage"], {})[r["step"] * per_step] = r["eval/val_loss"]
    info = sorted(({k: v for k, v in row.items() if k not in ("val_loss", "tokens")} for row in result.tables["search"]),
                  key=lambda r: int(r["stage"].split("-")[1]))  # fmt: skip
    return {"curves": curves, "candidates": info, "run_dir": Path(result.run_dir).name}


def analyse(curves: dict[str, dict[int, float]]) -> dict:
    stages = sorted(curves)
    budgets = sorted(set.intersection(*(set(c) for c in curves.values())))
    loss = {b: [curves[s][b] for s in stages] for b in budgets}
    last = budgets[-1]
    return {
        "budgets": budgets,
        "rank_corr_with_longest": {b: round(spearman(loss[b], loss[last]), 3) for b in budgets},
        "rank_corr_with_next": {b: round(spearman(loss[b], loss[n]), 3) for b, n in zip(budgets, budgets[1:])},
        "best_at": {b: stages[min(range(len(stages)), key=lambda i: loss[b][i])] for b in budgets},
        "ranks": {b: ranks(loss[b]) for b in budgets},
    }


def markdown(d: dict) -> str:
    a, b = d["analysis"], d["budget"]
    shapes = {f"search-{i}": None for i in range(len(d["curves"]))}
    lines = [
        "# Minitron search: how stable is the candidates' ranking?",
        "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, torch {d['machine']['torch']}. Wall time "
        f"{d['wall_s'] / 60:.1f} min. One seed.",
        "",
        f"SmolLM2-135M -> 50% of its parameters, {len(shapes)} candidate shapes within 5% of the budget (pruned by "
        f"activation importance), each distilled (forward KL) on Jane Austen at batch {b['batch']} x {b['seq_len']} "
        f"tokens, lr 3e-4 constant after 2 warmup steps, up to {b['tokens']:,} tokens; validation loss on "
        f"{b['val']} held-out sequences after each share of the budget.",
        "",
        "| tokens | " + " | ".join(f"search-{i}" for i in range(len(shapes))) + " | best | Spearman vs longest |",
        "|---:|" + "---:|" * len(shapes) + "---|---:|",
    ]
    for budget in a["budgets"]:
        cells = [f"{d['curves'][f'search-{i}'][budget]:.3f} ({a['ranks'][budget][i] + 1})" for i in range(len(shapes))]
        lines.append(f"| {budget:,} | " + " | ".join(cells) + f" | {a['best_at'][budget]} | "
                     f"{a['rank_corr_with_longest'][budget]:+.2f} |")  # fmt: skip
    lines += ["", "Validation loss (rank). Candidates:", ""]
    lines += [
        f"- {r['stage']}: " + ", ".join(f"{k} {v:,}" for k, v in r.items() if k != "stage") for r in d["candidates"]
    ]
    lines += ["", *([f"Note: {d['note']}", ""] if d.get("note") else [])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--candidates", type=int, default=6)
    p.add_argument("--tokens", type=int, default=40_960)
    p.add_argument("--evals", type=int, default=8, help="evaluations along the way (equal shares of --tokens)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--val", type=int, default=32)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--dir", default="runs/bench-minitron-search")
    p.add_argument("--note")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the committed JSON")
    args = p.parse_args()
    if args.render:
        data = json.loads((RESULTS / "minitron_search.json").read_text())
        data["curves"] = {s: {int(b): v for b, v in c.items()} for s, c in data["curves"].items()}  # JSON keys
        data["analysis"] = analyse(data["curves"])
        return write("minitron_search", data, markdown(data))
    t0 = time.perf_counter()
    data = {"budget": {k: v for k, v in vars(args).items() if k not in ("note", "dir")}, **run(args)}
    data["analysis"] = analyse(data["curves"])
    finish("minitron_search", data, markdown, t0, args.note)


if __name__ == "__main__":
    main()
