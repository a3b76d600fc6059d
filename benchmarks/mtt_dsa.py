"""DSA per image (the official code's default, now ours) against one draw per batch, in MTT on Fashion-MNIST
at 10 images per class: test accuracy over distillation seeds, and the seconds one iteration takes.

    python benchmarks/mtt_dsa.py [--seeds 2] [--iters 80] [--buffer runs/bench-mtt_fmnist/ipc1]

The expert buffer is reused from the main MTT benchmark (benchmarks/mtt_fmnist.py: 3 experts x 6 epochs,
width 32), so the two modes see the same experts. Each (mode, seed) distils with the `distill mtt` recipe
and is evaluated on 3 fresh nets; the cost is timed on the cost section's setting (width 128), the two
modes interleaved in one process. Writes benchmarks/results/mtt_dsa.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, finish, mean_std, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.dd.augment import DSAConfig  # noqa: E402
from distill.recipes import mtt  # noqa: E402
from mtt_fmnist import _iteration  # noqa: E402

MODES = {"per image": False, "per batch": True}  # dsa.same_for_batch


def quality(args: argparse.Namespace, root: Path) -> dict:
    out: dict = {}
    for seed in range(args.seeds):
        for mode, same in MODES.items():
            name = f"{mode.replace(' ', '-')}-seed{seed}"
            over = [f"run.output_dir={root}", f"run.run_name={name}", f"run.seed={seed}", f"buffer.from_run={args.buffer}",
                    "model.args.width=32", "buffer.experts=3", "buffer.train.epochs=6", "distill.max_start_epoch=4",
                    f"distill.train.max_steps={args.iters}", "distill.train.log_every=1", "distill.train.save_every=40",
                    f"dsa.same_for_batch={str(same).lower()}", f"eval.nets={args.nets}",
                    f"eval.train.epochs={args.eval_epochs}", "eval.baselines=[]", "eval.cross_arch=[]"]  # fmt: skip
            run_dir = root / name
            t0 = time.perf_counter()
            result = mtt.run(load_config(mtt.Config, "fmnist_ipc10", over, recipe="mtt"),
                             resume=run_dir if (run_dir / "config.yaml").exists() else None)  # fmt: skip
            wall = time.perf_counter() - t0
            metrics = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in metrics if r.get("stage") == "distill" and "loss" in r]
            row = result.rows[0]
            out.setdefault(mode, []).append({
                "seed": seed, "accuracy": row["test_accuracy"], "eval_std": row.get("std"), "wall_s": round(wall, 1),
                "s_per_iter": round((steps[-1]["time"] - steps[0]["time"]) / max(1, steps[-1]["step"] - steps[0]["step"]), 3),
                "match_loss_last": round(steps[-1]["loss"], 4),
            })  # fmt: skip
            print(mode, out[mode][-1], flush=True)
    return out


def cost(reps: int, iters: int) -> dict:
    """Seconds per iteration at width 128, IPC 10, 30 unrolled steps; the modes interleaved."""
    steps = {m: _iteration(10, 30, "constant", 1, 0, DSAConfig(same_for_batch=same)) for m, same in MODES.items()}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(reps):
        for mode, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                step()
            times[mode].append((time.perf_counter() - t0) / iters)
    ratios = [a / b for a, b in zip(times["per image"], times["per batch"])]
    return {"s_per_iter": times, "ratio_per_image_over_per_batch": ratios}


def committed() -> dict:
    return json.loads((RESULTS / "mtt_dsa.json").read_text())


def max_gap(q: dict) -> float:
    return max(100 * (max(r["accuracy"] for r in runs) - min(r["accuracy"] for r in runs)) for runs in q.values())


def markdown(d: dict) -> str:
    b, q = d["budget"], d["quality"]
    quality_lines = [
        f"Budget: the expert buffer of benchmarks/mtt_fmnist.py (3 experts x 6 epochs, ConvNet width 32); "
        f"{b['iters']} iterations per distillation, {b['seeds']} distillation seeds per mode, each evaluated on "
        f"{b['nets']} nets x {b['eval_epochs']} epochs (test accuracy = their mean).",
        "",
        "| DSA draws | test accuracy (%) per seed | mean ± std over seeds | s / iteration (width 32, in the run) |",
        "|---|---|---:|---:|",
    ]
    lines = [
        "# MTT on Fashion-MNIST, IPC 10: DSA per image vs per batch",
        "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, torch {d['machine']['torch']}. "
        f"Wall time {d['wall_s'] / 60:.1f} min.",
        "",
        *(quality_lines if q else ["Accuracy: not run in this invocation (--cost-only)."]),
    ]
    for mode, runs in q.items():
        accs = [100 * r["accuracy"] for r in runs]
        m, s = mean_std(accs)
        per = ", ".join(f"{a:.2f}" for a in accs)
        lines.append(f"| {mode} | {per} | {m:.2f} ± {s:.2f} | {statistics.median(r['s_per_iter'] for r in runs):.2f} |")
    if q:  # the seeds share nothing across modes but the seed: compare each seed's pair
        diffs = [100 * (a["accuracy"] - b["accuracy"]) for a, b in zip(q["per image"], q["per batch"])]
        spread = max(r["eval_std"] for runs in q.values() for r in runs)
        mean = statistics.mean(diffs)
        verdict = "within that noise: a tie" if abs(mean) < 100 * spread else "larger than that noise"
        lines += ["", f"Per image minus per batch, seed by seed: {', '.join(f'{d:+.2f}' for d in diffs)} pts (mean "
                  f"{mean:+.2f}); seeds differ by up to {max_gap(q):.2f} pts and one distillation's 3 evaluation "
                  f"nets by up to {100 * spread:.2f} pts (std): the difference is {verdict}."]  # fmt: skip
    c = d["cost"]
    med = {m: statistics.median(v) for m, v in c["s_per_iter"].items()}
    r = c["ratio_per_image_over_per_batch"]
    lines += [
        "",
        f"Cost at width 128 (30 unrolled steps, constant memory), {len(r)} interleaved repetitions: per image "
        f"{med['per image']:.2f} s/iteration, per batch {med['per batch']:.2f}; ratio per image / per batch "
        f"{statistics.median(r):.3f} (range {min(r):.3f}-{max(r):.3f}).",
        "",
        *([f"Note: {d['note']}", ""] if d.get("note") else []),
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--iters", type=int, default=80)
    p.add_argument("--nets", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--buffer", default="runs/bench-mtt_fmnist/ipc1", help="a run whose expert buffer to reuse")
    p.add_argument("--out", default="runs/bench-mtt_dsa", help="run directories (kept, resumed if interrupted)")
    p.add_argument("--cost-reps", type=int, default=3)
    p.add_argument("--cost-iters", type=int, default=2)
    p.add_argument("--cost-only", action="store_true", help="only the seconds per iteration")
    p.add_argument("--reuse-cost", action="store_true", help="keep the cost part of the committed results")
    p.add_argument("--note")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the committed JSON (and --note)")
    args = p.parse_args()
    if args.render:
        data = committed()
        data.update({"note": args.note} if args.note else {})
        return write("mtt_dsa", data, markdown(data))
    t0 = time.perf_counter()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    data = {"budget": {k: v for k, v in vars(args).items() if k != "note"}}
    data["quality"] = {} if args.cost_only else quality(args, root)
    if args.reuse_cost:  # the cost part wants the cores alone; the accuracy part can share them
        old = committed()
        data["cost"] = old["cost"]
        data["budget"].update({k: old["budget"][k] for k in ("cost_reps", "cost_iters")})
    else:
        data["cost"] = cost(args.cost_reps, args.cost_iters)
    finish("mtt_dsa", data, markdown, t0, args.note)


if __name__ == "__main__":
    main()
