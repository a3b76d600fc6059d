""" "Text is Text, No Matter What" (Bhunia et al., ICCV 2021) on generated printed and handwritten text: the
paper's claims, checked at a CPU budget.

    python benchmarks/unify_text.py [--seeds 3] [--ablation-seeds 2] [--quick]

`distill unify` with its defaults: two domains of 8,000 training and 1,000 test images each (printed words and
numbers in 14 printed fonts under scene-like noise; handwritten words in 7 handwriting fonts with elastic
distortion, and numbers composed of real MNIST digits), test words never seen in training. A specialist per
domain is trained once (seed 0's run) and serves every seed; each seed then trains, from the same initial
weights and over the same batches:
    union      the student's network on both domains, cross-entropy alone
    KD         the unified student: cross-entropy + logits + hint + attention + affinity, each sample against
               its own domain's specialist
    KD - term  the same without one of the four terms (the ablation; on the first --ablation-seeds seeds)
Writes benchmarks/results/unify_text.{json,md}; runs stay in runs/bench-unify (an interrupted benchmark
resumes its unfinished run and reuses the finished ones).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, mean_std, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.meter import SAMPLES  # noqa: E402
from distill.recipes import unify  # noqa: E402

TERMS = ("logits", "hint", "attention", "affinity")


def run_seed(args, root: Path, seed: int, ablations: bool) -> dict:
    name = f"seed{seed}"
    run_dir = root / name
    if (run_dir / "results.json").exists():
        return json.loads((run_dir / "results.json").read_text())
    over = [
        f"run.output_dir={root}",
        f"run.run_name={name}",
        f"run.seed={seed}",
        f"ablations={str(ablations).lower()}",
        "train.progress=false",
        "teacher_train.progress=false",
    ]
    if seed != 0:  # the specialists of seed 0 serve every seed
        over.append(
            "teacher_checkpoints={"
            + ", ".join(
                f"{d}: {root / 'seed0' / f'teacher-{d}' / 'model.safetensors'}" for d in ("printed", "handwritten")
            )
            + "}"
        )
    if args.quick:
        over += [
            "data.domains=[{name: printed, train: 256, val: 64, test: 64}, "
            "{name: handwritten, kind: handwritten, train: 256, val: 64, test: 64}]",
            "teacher_train.epochs=1",
            "train.epochs=1",
        ]
    t0 = time.perf_counter()
    resume = run_dir if (run_dir / "config.yaml").exists() else None
    cfg = load_config(unify.Config, None, over) if resume is None else None
    result = unify.run(cfg or load_config(unify.Config, run_dir / "config.yaml"), resume=resume).to_json()
    print(f"{name}: {time.perf_counter() - t0:.0f}s", flush=True)
    return result


def stage_speed(run_dir: Path) -> dict[str, float]:
    """Median training images per second of each stage (its logged windows; the first holds the warm-up)."""
    rates: dict[str, list[float]] = {}
    for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if SAMPLES in r:
            rates.setdefault(r["stage"], []).append(r[SAMPLES])
    return {stage: statistics.median(v[1:] or v) for stage, v in rates.items()}


def logged_minutes(run_dir: Path) -> float:
    """Minutes from a run's first metrics record to its last (its stages' training and evaluation)."""
    times = [r["time"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    return (max(times) - min(times)) / 60


def verdict(diff: float, spread: float) -> str:
    if abs(diff) <= 2 * spread:
        return "tie (inside 2x the spread)"
    return "higher" if diff > 0 else "lower"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ablation-seeds", type=int, default=2)
    p.add_argument("--out", default="runs/bench-unify")
    p.add_argument("--name", default="unify_text")
    p.add_argument("--quick", action="store_true", help="tiny data and 1 epoch, to check the script")
    p.add_argument("--note", default="", help="a remark kept with the results (e.g. how a run was resumed)")
    args = p.parse_args()
    root = Path(args.out)
    runs = [run_seed(args, root, s, s < args.ablation_seeds) for s in range(args.seeds)]
    minutes = {f"seed{s}": logged_minutes(root / f"seed{s}") for s in range(args.seeds)}

    domains = runs[0]["info"]["domains"]
    metrics = [f"{d}_{m}" for d in domains for m in ("word_accuracy", "cer")] + ["mean_word_accuracy"]
    per_model: dict[str, dict[str, list[float]]] = {}
    for res in runs:
        for row in res["rows"]:
            for m in metrics:
                per_model.setdefault(row["model"], {}).setdefault(m, []).append(row[m])
    params = {row["model"]: row["params"] for row in runs[0]["rows"]}
    summary = {
        model: {m: mean_std(v) for m, v in ms.items()} | {"seeds": len(ms[metrics[0]])}
        for model, ms in per_model.items()
    }

    def paired(a: str, b: str, m: str) -> dict:
        """a - b per seed (same initial weights and batches), its mean and std."""
        diffs = [x - y for x, y in zip(per_model[a][m], per_model[b][m])]
        mean, std = mean_std(diffs)
        return {"diffs": diffs, "mean": mean, "std": std, "verdict": verdict(mean, std)}

    spec = {d: per_model[f"{d} specialist"] for d in domains}
    claims = {
        "specialists_collapse_across_domains": {
            d: {
                "own": spec[d][f"{d}_word_accuracy"][0],
                "other": {o: spec[d][f"{o}_word_accuracy"][0] for o in domains if o != d},
            }
            for d in domains
        },
        "kd_vs_each_specialist_on_its_domain": {
            d: {
                "kd": summary["student KD"][f"{d}_word_accuracy"],
                "specialist": spec[d][f"{d}_word_accuracy"][0],
                "diff": summary["student KD"][f"{d}_word_accuracy"][0] - spec[d][f"{d}_word_accuracy"][0],
            }
            for d in domains
        },
        "kd_vs_union": {m: paired("student KD", "union, cross-entropy", m) for m in metrics if "word" in m},
        "ablation": {
            t: paired("student KD", f"KD without {t}", "mean_word_accuracy")
            for t in TERMS
            if f"KD without {t}" in per_model
        },
    }
    # seed 1's union and KD students trained alone on the machine (seed 0's first stages shared it, see the note)
    speed_run = "seed1" if args.seeds > 1 else "seed0"
    speed = {k: v for k, v in stage_speed(root / speed_run).items() if k in ("union", "student")}
    res = {
        "budget": {
            "train_images_per_domain": runs[0]["info"]["train_images"],
            "test_images_per_domain": runs[0]["info"]["test_images"],
            "teacher_epochs": runs[0]["info"]["teacher_epochs"],
            "student_epochs": runs[0]["info"]["epochs"],
            "seeds": args.seeds,
            "ablation_seeds": args.ablation_seeds,
            "quick": args.quick,
        },
        "params": params,
        "models": summary,
        "claims": claims,
        "images_per_s": {"run": speed_run, "stages": speed},
        "logged_minutes": minutes,
        "note": args.note,
        "machine": machine(),
    }
    shutil.copyfile(root / "seed0" / "readings.png", RESULTS / f"{args.name}_readings.png")
    res["figure"] = f"{args.name}_readings.png"
    write(args.name, res, markdown(res, domains))
    print(markdown(res, domains))


def _pct(ms: tuple[float, float]) -> str:
    return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"


def markdown(res: dict, domains: list[str]) -> str:
    b, m = res["budget"], res["machine"]
    lines = [
        "# Text is Text: one recogniser for printed and handwritten text (`distill unify`)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Logged time per run (min): "
        + ", ".join(f"{k} {v:.0f}" for k, v in res["logged_minutes"].items())
        + (f". {res['note']}" if res["note"] else "."),
        f"Budget: {b['train_images_per_domain']} training and {b['test_images_per_domain']} test images per domain; "
        f"specialists {b['teacher_epochs']} epochs on their domain (trained once, seed 0); students "
        f"{b['student_epochs']} epochs on the union; {b['seeds']} seeds (ablations on {b['ablation_seeds']}). "
        "Word accuracy and CER in %, mean ± std over seeds (specialists: one run).",
        "",
        "| model | params | " + " | ".join(f"{d} word acc | {d} CER" for d in domains) + " | mean word acc | seeds |",
        "|---|---:|" + "---:|" * (2 * len(domains) + 2),
    ]
    for model, s in res["models"].items():
        once = model.endswith("specialist")  # trained once, loaded by every seed: no spread to show
        fmt = (lambda ms: f"{100 * ms[0]:.1f}") if once else _pct
        cells = " | ".join(f"{fmt(s[f'{d}_word_accuracy'])} | {fmt(s[f'{d}_cer'])}" for d in domains)
        seeds = 1 if once else s["seeds"]
        lines.append(f"| {model} | {res['params'][model]:,} | {cells} | {fmt(s['mean_word_accuracy'])} | {seeds} |")
    c = res["claims"]
    lines += ["", "## The paper's claims, here", "", "Specialists across domains (word accuracy, %):", ""]
    for d, v in c["specialists_collapse_across_domains"].items():
        other = ", ".join(f"{o} {100 * a:.1f}" for o, a in v["other"].items())
        lines.append(f"- {d} specialist: own domain {100 * v['own']:.1f}, {other}")
    lines += ["", "Unified KD student against each specialist on the specialist's own domain:", ""]
    for d, v in c["kd_vs_each_specialist_on_its_domain"].items():
        lines.append(
            f"- {d}: KD {_pct(v['kd'])} vs specialist {100 * v['specialist']:.1f} ({100 * v['diff']:+.1f} pts)"
        )
    lines += ["", "KD student minus the union-trained student (paired by seed: same initial weights and batches):", ""]
    for metric, v in c["kd_vs_union"].items():
        lines.append(
            f"- {metric}: {100 * v['mean']:+.1f} ± {100 * v['std']:.1f} pts "
            f"(per seed {', '.join(f'{100 * x:+.1f}' for x in v['diffs'])}): {v['verdict']}"
        )
    lines += ["", "Ablation, full KD minus KD without the term (mean word accuracy, paired by seed):", ""]
    for term, v in c["ablation"].items():
        lines.append(
            f"- {term}: {100 * v['mean']:+.1f} ± {100 * v['std']:.1f} pts "
            f"(per seed {', '.join(f'{100 * x:+.1f}' for x in v['diffs'])}): {v['verdict']}"
        )
    lines += ["", f"Test images read by each model (seed 0; green: right, red: wrong): ![readings]({res['figure']})"]
    speed = res["images_per_s"]
    lines += [
        "",
        f"Training speed of {speed['run']}'s stages (images/s, median of logged windows): "
        + ", ".join(f"{k} {v:.0f}" for k, v in speed["stages"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
