"""Where a CPU budget goes furthest for MTT at 10 images per class on Fashion-MNIST (issue 13: the gap to
DC's published 82.3%). Each variant changes one thing from the base and is scored two ways: the benchmarks'
evaluation (3 nets x 300 epochs) and the paper's (5 nets x 1000 epochs), on the same synthetic set.

    python benchmarks/mtt_budget.py [--variants trajectories,experts,iterations] [--random 32,64] [--render]

The base is benchmarks/mtt_dsa.py's per-image runs (3 experts x 6 epochs, ConvNet width 32, start epoch <= 4,
80 iterations; 2 distillation seeds), whose sets are only re-evaluated here. The variants distil with seed 0:
  trajectories  experts trained 15 epochs instead of 6, start epochs up to 13 (the paper's IPC 10 goes to 20)
  experts       8 experts instead of 3
  iterations    200 iterations instead of 80 (the base buffer)
  width64       ConvNet width 64 instead of 32, for the experts, the distillation and the evaluation (DC: 128)
  width64-seed1 the same with distillation seed 1, on width64's experts
--random trains 3 nets x 300 epochs on 10 random real images per class at each width (how much a wider
evaluation net adds without distillation). Several processes may run disjoint --variants side by side; each variant's result is kept in its run
directory (an interrupted run resumes), and --render collects them into benchmarks/results/mtt_budget.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, mean_std  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.context import stage_seed  # noqa: E402
from distill.data import load_images  # noqa: E402
from distill.dd.coreset import random_real  # noqa: E402
from distill.dd.protocol import evaluate_set  # noqa: E402
from distill.recipes import mtt  # noqa: E402
from distill.run import atomic_write  # noqa: E402

BASE = ["runs/bench-mtt_dsa/per-image-seed0", "runs/bench-mtt_dsa/per-image-seed1"]
BUFFER = "runs/bench-mtt_fmnist/ipc1"  # the base's experts: 3 x 6 epochs, width 32
# one change each from the base: (label, expert buffer to reuse or None, experts, expert epochs, start epochs, iters,
# ConvNet width, distillation seed)
VARIANTS = {
    "trajectories": ("expert trajectories 15 epochs, start epoch <= 13", None, 3, 15, 13, 80, 32, 0),
    "experts": ("8 experts", None, 8, 6, 4, 80, 32, 0),
    "iterations": ("200 iterations", BUFFER, 3, 6, 4, 200, 32, 0),
    "width64": ("ConvNet width 64", None, 3, 6, 4, 80, 64, 0),
    "width64-seed1": ("ConvNet width 64", "runs/bench-mtt_budget/width64", 3, 6, 4, 80, 64, 1),
}
# the main benchmark's IPC 10 sets: 150 iterations on the base's buffer, one DSA draw per batch (a tie with per
# image in mtt_dsa), unrolled and constant memory (which differ by rounding only): two more points on iterations
OTHER = ["runs/bench-mtt_fmnist/ipc10", "runs/bench-mtt_fmnist/ipc10-constant"]
LABELS = {"base": "base", "other": "150 iterations, DSA per batch (mtt_fmnist)"}
PAPER_EVAL = {"nets": 5, "epochs": 1000}


def distil(key: str, root: Path) -> Path:
    """The variant's run with our evaluation (3 nets x 300 epochs), resumed if it exists."""
    _, buffer, experts, expert_epochs, start, iters, width, seed = VARIANTS[key]
    over = [f"run.output_dir={root}", f"run.run_name={key}", f"run.seed={seed}", f"model.args.width={width}",
            f"buffer.experts={experts}", f"buffer.train.epochs={expert_epochs}", f"distill.max_start_epoch={start}",
            f"distill.train.max_steps={iters}", "distill.train.log_every=5", "distill.train.save_every=20",
            "eval.nets=3", "eval.train.epochs=300", "eval.baselines=[]", "eval.cross_arch=[]"]  # fmt: skip
    over += [f"buffer.from_run={buffer}"] if buffer else []
    run_dir = root / key
    cfg = load_config(mtt.Config, "fmnist_ipc10", over, recipe="mtt")
    result = mtt.run(cfg, resume=run_dir if (run_dir / "config.yaml").exists() else None)
    return Path(result.run_dir)


def paper_eval(run_dir: Path) -> dict:
    """The run's synthetic set trained on by PAPER_EVAL's nets and epochs; kept in the run directory."""
    path = run_dir / "evaluation" / "paper-protocol.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = load_config(mtt.Config, run_dir / "config.yaml", [])
    data = load_images(cfg.data)
    syn = load_file(run_dir / "synthetic.safetensors")
    lr = float(syn["lr"])
    train = cfg.eval.train.model_copy(update={"lr": lr, "epochs": PAPER_EVAL["epochs"], "progress": False})
    t0 = time.perf_counter()
    accs = evaluate_set(cfg.model, mtt._shape(data), syn["images"], syn["labels"], data.test, train, nets=PAPER_EVAL["nets"],
                        dsa_cfg=cfg.dsa, accelerator=Accelerator(cpu=True),
                        seed=stage_seed(cfg.run.seed, "evaluate/paper"))  # fmt: skip
    row = {"accuracies": accs, "wall_s": round(time.perf_counter() - t0, 1), **PAPER_EVAL}
    atomic_write(path, json.dumps(row))
    return row


def random_baseline(width: int, root: Path) -> dict:
    """10 random real images per class (seed 0) trained on by 3 nets x 300 epochs at `width`: how much a wider
    evaluation net alone adds, without any distillation. Kept in `root`."""
    path = root / f"random-real-width{width}.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = load_config(mtt.Config, Path(BASE[0]) / "config.yaml", [f"model.args.width={width}"])
    data = load_images(cfg.data)
    idx = random_real(data.train["labels"], data.num_classes, 10, torch.Generator().manual_seed(0))
    accs = evaluate_set(cfg.model, mtt._shape(data), data.train["inputs"][idx], data.train["labels"][idx], data.test,
                        cfg.eval.train.model_copy(update={"epochs": 300, "progress": False}), nets=3, dsa_cfg=cfg.dsa,
                        accelerator=Accelerator(cpu=True), seed=stage_seed(0, "evaluate/random"))  # fmt: skip
    row = {"width": width, "accuracies": accs}
    atomic_write(path, json.dumps(row))
    return row


def stage_walls(run_dir: Path) -> dict[str, float]:
    """Seconds from each stage's first to last logged record, the experts summed: where the run's time went."""
    spans: dict[str, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "stage" in r and "time" in r:
            spans.setdefault(r["stage"], []).append(r["time"])
    out = {"experts": 0.0}
    for stage, times in spans.items():
        key = "experts" if stage.startswith("buffer/") else stage
        out[key] = round(out.get(key, 0.0) + max(times) - min(times), 1)
    return out


def entry(run_dir: Path) -> dict:
    own = json.loads((run_dir / "results.json").read_text())
    row = next(r for r in own["rows"] if r["set"] == "mtt")
    return {"run": str(run_dir), "ours": row["test_accuracy"], "ours_std": row["std"], "ours_nets": row["nets"],
            "paper": paper_eval(run_dir), "walls": stage_walls(run_dir), "info": own.get("info", {})}  # fmt: skip


def markdown(d: dict) -> str:
    base = d["entries"]["base"]
    b_ours, _ = mean_std([100 * e["ours"] for e in base])
    b_paper, _ = mean_std([100 * a for e in base for a in e["paper"]["accuracies"]])
    lines = [
        "# MTT on Fashion-MNIST, IPC 10: where the budget goes furthest",
        "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, torch {d['machine']['torch']}; every "
        "process of this script one thread, beside 1-3 other processes (the minutes below are that setting's, not "
        "speed figures; the 150-iteration rows' distillations ran in benchmarks/mtt_fmnist.py).",
        "",
        "Base: benchmarks/mtt_dsa.py's per-image runs (ConvNet width 32, 3 experts x 6 epochs, start epoch <= 4, "
        "M = 2 expert epochs, N = 30 steps, 80 iterations; distillation seeds 0 and 1). Each variant changes one "
        "thing and distils once (seed 0; width 64 also seed 1, on the same experts). Every set is scored by our benchmarks' evaluation (3 nets x 300 epochs) "
        f"and by the paper's ({PAPER_EVAL['nets']} nets x {PAPER_EVAL['epochs']} epochs, same set). Target: DC's "
        "82.3% (MTT's own paper has no Fashion-MNIST figure).",
        "",
        "| variant | seed | 3 x 300 (%) | 5 x 1000 (%) mean ± std over nets | vs base (5 x 1000) | experts (min) "
        "| distillation (min) | evaluation 5 x 1000 (min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, runs in d["entries"].items():
        label = LABELS.get(key) or VARIANTS[key][0]
        for e in runs:
            pm, ps = mean_std([100 * a for a in e["paper"]["accuracies"]])
            vs = "" if key == "base" else f"{pm - b_paper:+.2f}"
            seed = e["info"].get("seed", 0)
            if key == "other":  # both seed 0: they differ by the memory mode
                seed = f"0 ({'constant' if e['run'].endswith('constant') else 'unrolled'} memory)"
            w = e["walls"]
            lines.append(f"| {label} | {seed} | {100 * e['ours']:.2f} | {pm:.2f} ± {ps:.2f} | "
                         f"{vs} | {w['experts'] / 60:.1f} | {w.get('distill', 0) / 60:.1f} | "
                         f"{e['paper']['wall_s'] / 60:.1f} |")  # fmt: skip
    lines += [
        "",
        f"Base means: {b_ours:.2f}% (3 x 300), {b_paper:.2f}% (5 x 1000, all 10 nets of both seeds). The base's two "
        "seeds give the spread one distillation seed carries. The base's experts were trained in "
        "benchmarks/mtt_fmnist.py (its minutes are not in this table).",
        "",
        *wide_summary(d["entries"], b_paper),
        *[random_line(r) for r in d.get("random_real", [])],
        *([""] if d.get("random_real") else []),
        *([f"Note: {d['note']}", ""] if d.get("note") else []),
    ]
    return "\n".join(lines)


def random_line(r: dict) -> str:
    m, s = mean_std([100 * a for a in r["accuracies"]])
    return f"- Random real images, 10 per class, 3 x 300 at width {r['width']}: {m:.2f} ± {s:.2f}%"


def wide_summary(entries: dict, b_paper: float) -> list[str]:
    """Width 64 over both distillation seeds, against the base's two, and DC's 82.3% (a width-128 figure)."""
    runs = entries.get("width64", []) + entries.get("width64-seed1", [])
    if len(runs) < 2:
        return []
    accs = [100 * a for e in runs for a in e["paper"]["accuracies"]]
    m, s = mean_std(accs)
    per_seed = " / ".join(f"{mean_std([100 * a for a in e['paper']['accuracies']])[0]:.2f}" for e in runs)
    return [
        f"Width 64, both seeds: {m:.2f} ± {s:.2f}% (5 x 1000, all {len(accs)} nets; seeds {per_seed}), "
        f"{m - b_paper:+.2f} pts over the base, {m - 82.3:+.2f} vs DC's 82.3% (width 128).",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--base", action="store_true", help="also re-evaluate the base's sets")
    p.add_argument("--other", type=int, help="also re-evaluate this one of the main benchmark's IPC 10 sets (0, 1)")
    p.add_argument("--out", default="runs/bench-mtt_budget", help="run directories (kept, resumed if interrupted)")
    p.add_argument("--random", default="", help="also train on random real images at these widths (e.g. 32,64)")
    p.add_argument("--render", action="store_true", help="collect every finished variant into the results")
    p.add_argument("--note")
    args = p.parse_args()
    t0, root = time.perf_counter(), Path(args.out)
    if args.base:
        for run in BASE:
            print("base", entry(Path(run)), flush=True)
    if args.other is not None:
        print("other", entry(Path(OTHER[args.other])), flush=True)
    for width in filter(None, args.random.split(",")):
        print("random real", random_baseline(int(width), root), flush=True)
    for key in filter(None, args.variants.split(",")):
        if key not in VARIANTS:
            raise SystemExit(f"unknown variant {key!r}: choose from {', '.join(VARIANTS)}")
        print(key, entry(distil(key, root)), flush=True)
    if args.render:
        entries = {"base": [entry(Path(r)) for r in BASE]}
        entries |= {k: [entry(root / k)] for k in VARIANTS if (root / k / "results.json").exists()}
        entries["other"] = [entry(Path(r)) for r in OTHER if (Path(r) / "evaluation" / "paper-protocol.json").exists()]
        randoms = [json.loads(f.read_text()) for f in sorted(root.glob("random-real-width*.json"))]
        finish("mtt_budget", {"entries": entries, "paper_eval": PAPER_EVAL, "random_real": randoms}, markdown, t0,
               args.note)  # fmt: skip


if __name__ == "__main__":
    main()
