"""Online distillation (ERNIE 3.0 Titan) on Jane Austen: claims of the framework, checked at a CPU budget.

    python benchmarks/online_austen.py [--steps 500] [--seeds 2] [--quick]

A 6-layer teacher learns the Austen corpus from scratch (byte-level BPE of 4,096 tokens) while a 4-layer
and a 2-layer student learn from it. Variants, each run by `distill online` with the same data, batches
and budget (students take as many steps as the teacher):
    online          students learn from the teacher's signals of the same step (logit KL + attention relations)
    online-kl       the same with the logit KL alone
    online-aux      the relation loss at an auxiliary layer on top of each student, dropped on export
    online-ta       the 2-layer student learns from the 4-layer one (a teacher assistant), not the teacher
    offline         the teacher first, then each student from the finished teacher (+ students alone)
Writes benchmarks/results/online_austen.{json,md}; runs stay in runs/bench-online (an interrupted
benchmark reuses the finished variants).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.recipes import online  # noqa: E402

TEACHER = "{layers: 6, hidden: 192, heads: 4, ffn: 512}"
MEDIUM = "{layers: 4, hidden: 128, heads: 4, ffn: 344}"
SMALL = "{layers: 2, hidden: 96, heads: 4, ffn: 256}"
VARIANTS = {
    "online": [],
    "online-kl": ["relation.weight=0"],
    "online-aux": [f"students=[{{name: medium, shape: {MEDIUM}, auxiliary_layer: true}}, "
                   f"{{name: small, shape: {SMALL}, auxiliary_layer: true}}]"],
    "online-ta": [f"students=[{{name: medium, shape: {MEDIUM}}}, {{name: small, shape: {SMALL}, source: medium}}]"],
    "offline": ["mode=offline", "alone=true"],
}  # fmt: skip


def common(args: argparse.Namespace, root: Path, seed: int) -> list[str]:
    return [
        f"run.output_dir={root}", f"run.seed={seed}", "data.source=austen", f"data.seq_len={args.seq_len}",
        f"data.max_val_sequences={args.val}", f"tokenizer_vocab={args.vocab}", f"teacher.shape={TEACHER}",
        f"students=[{{name: medium, shape: {MEDIUM}}}, {{name: small, shape: {SMALL}}}]",
        "relation.weight=1.0", "relation.heads=4", f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
        "train.lr=2e-3", f"train.warmup_steps={max(1, args.steps // 20)}", "train.log_every=10",
        f"train.eval_every={args.steps}", "train.save_every=100", "train.clip_grad_norm=1.0", "train.progress=false",
    ]  # fmt: skip


def run_variant(args, root: Path, variant: str, seed: int) -> dict:
    name = f"{variant}-seed{seed}"
    run_dir = root / name
    if (run_dir / "results.json").exists():  # finished earlier: reuse
        return json.loads((run_dir / "results.json").read_text())
    over = [*common(args, root, seed), *VARIANTS[variant], f"run.run_name={name}"]
    t0 = time.perf_counter()
    resume = run_dir if (run_dir / "config.yaml").exists() else None
    cfg = load_config(online.Config, None, over) if resume is None else None
    result = online.run(cfg or load_config(online.Config, run_dir / "config.yaml"), resume=resume)
    print(f"{name}: {time.perf_counter() - t0:.0f}s", flush=True)
    return result.to_json()


def step_seconds(run_dir: Path, stage: str, batch: int) -> float:
    """Median seconds per optimizer step of a stage, from its logged samples/s."""
    rates = [r["samples_per_s"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if r.get("stage") == stage and "samples_per_s" in r]  # fmt: skip
    return batch / statistics.median(rates[1:] or rates)  # the first window holds the warm-up


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--val", type=int, default=256, help="held-out sequences")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; online and offline always run")
    p.add_argument("--name", default="online_austen", help="results file name")
    p.add_argument("--out", default="runs/bench-online")
    p.add_argument("--quick", action="store_true", help="a few steps, to check the script")
    args = p.parse_args()
    if args.quick:
        args.steps, args.seeds, args.val = 20, 1, 16
    root = Path(args.out)
    t0 = time.perf_counter()
    variants = list(dict.fromkeys(["online", "offline", *args.variants.split(",")]))
    runs = {(v, s): run_variant(args, root, v, s) for s in range(args.seeds) for v in variants}
    wall = time.perf_counter() - t0

    # held-out loss of every model of every variant, per seed
    losses: dict[str, list[float]] = {}
    forwards: dict[str, int] = {}
    for (variant, _), res in runs.items():
        for row in res["rows"]:
            key = f"{variant}: {row['model']}"
            losses.setdefault(key, []).append(row["val_loss"])
        forwards[variant] = res["info"]["teacher_forwards"]

    # one online step against a teacher step + one offline KD step per student (seed 0's runs)
    b = args.batch
    online_dir, offline_dir = root / "online-seed0", root / "offline-seed0"
    t_online = step_seconds(online_dir, "online", b)
    t_parts = {"teacher": step_seconds(offline_dir, "teacher", b)}
    t_parts.update({s: step_seconds(offline_dir, f"offline/{s}", b) for s in ("medium", "small")})
    speed = {"online_step_s": t_online, "parts_s": t_parts, "sum_s": sum(t_parts.values()),
             "online_tokens_per_s": b * args.seq_len / t_online,
             "separate_tokens_per_s": b * args.seq_len / sum(t_parts.values())}  # fmt: skip

    res = {"budget": {"teacher_steps": args.steps, "student_steps": args.steps, "batch": b, "seq_len": args.seq_len,
                      "tokens_per_model": args.steps * b * args.seq_len, "vocab": args.vocab,
                      "held_out_sequences": args.val, "seeds": args.seeds, "quick": args.quick},
           "shapes": {"teacher": TEACHER, "medium": MEDIUM, "small": SMALL}, "losses": losses,
           "teacher_forwards": forwards, "speed": speed, "wall_s": wall, "machine": machine()}  # fmt: skip
    write(args.name, res, markdown(res))
    print(markdown(res))


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (max(values) - min(values)) / 2


def markdown(res: dict) -> str:
    b, m, L = res["budget"], res["machine"], res["losses"]
    import math

    lines = [
        "# Online distillation (ERNIE 3.0 Titan) on Jane Austen",
        "",
        f"Budget: teacher {res['shapes']['teacher']} from scratch, {b['teacher_steps']} steps of {b['batch']} x "
        f"{b['seq_len']} tokens ({b['tokens_per_model']:,} tokens); students medium {res['shapes']['medium']} and "
        f"small {res['shapes']['small']}, {b['student_steps']} steps each on the same batches; byte-level BPE of "
        f"{b['vocab']} tokens; held-out: the corpus's last {b['held_out_sequences']} sequences. {b['seeds']} seeds "
        f"(mean, ± half the range). Machine: {m['cpu']}, {m['cores']} cores; {res['wall_s'] / 60:.1f} min.",
        "",
        "| variant: model | held-out loss | perplexity | teacher forwards of the variant |",
        "|---|---:|---:|---:|",
    ]
    for key, values in L.items():
        mean, spread = _ms(values)
        lines.append(f"| {key} | {mean:.4f} ± {spread:.4f} | {math.exp(mean):.1f} | "
                     f"{res['teacher_forwards'][key.split(':')[0]]:,} |")  # fmt: skip
    sp = res["speed"]
    lines += ["", f"One online step (teacher + 2 students): {sp['online_step_s']:.3f} s, {sp['online_tokens_per_s']:.0f} "
              f"tokens/s; a teacher step plus one offline KD step per student: {sp['sum_s']:.3f} s "
              f"({', '.join(f'{k} {v:.3f}' for k, v in sp['parts_s'].items())}), {sp['separate_tokens_per_s']:.0f} "
              f"tokens/s; ratio {sp['sum_s'] / sp['online_step_s']:.2f}x.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
