"""Classic KD on Fashion-MNIST: accuracy of every shipped method over seeds, and engine overhead.

    python benchmarks/kd_fmnist.py [--seeds 3] [--epochs 2] [--quick]

Writes benchmarks/results/kd_fmnist.{json,md}. Each seed trains its teacher once (in the
Hinton run); every other method of that seed distills from that same checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, mean_std, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.data import ImageData, load_images  # noqa: E402
from distill.engine import TrainConfig, fit  # noqa: E402
from distill.kd.distiller import Distiller  # noqa: E402
from distill.models import ModelSpec, build_model  # noqa: E402
from distill.recipe import start  # noqa: E402
from distill.recipes import kd  # noqa: E402

CONFIGS = Path(__file__).parent.parent / "configs" / "kd"
METHODS = ["student_alone", "hinton", "fitnets", "attention", "rkd", "combined", "two_teachers"]


def accuracy_runs(args: argparse.Namespace, root: Path) -> dict:
    common = [f"train.epochs={args.epochs}", f"run.output_dir={root}", "train.progress=false"]
    if args.quick:
        common += ["data.train_limit=3000", "data.test_limit=1000"]
    # hinton trains each seed's teacher and student_alone is the reference: both always run
    methods = list(dict.fromkeys(["hinton", "student_alone", *args.methods.split(",")]))
    per_method: dict[str, list[float]] = {m: [] for m in methods}
    teacher_acc: list[float] = []
    params: dict[str, int] = {}
    walls: dict[str, list[float]] = {m: [] for m in methods}
    teacher_ckpt = {}
    for seed in range(args.seeds):
        for method in methods:
            over = common + [f"run.seed={seed}", f"run.run_name={method}-seed{seed}"]
            if method != "student_alone":
                over += [f"teachers.0.train.epochs={args.teacher_epochs}", "teachers.0.train.progress=false"]
                if method == "two_teachers":
                    over += [f"teachers.1.train.epochs={args.teacher_epochs}", "teachers.1.train.progress=false"]
                if seed in teacher_ckpt:
                    over.append(f"teachers.0.model.checkpoint={teacher_ckpt[seed]}")
            cfg = load_config(kd.Config, CONFIGS / f"{method}.yaml", over)
            t0 = time.perf_counter()
            result = kd.run(cfg)
            walls[method].append(time.perf_counter() - t0)
            rows = {r["model"]: r for r in result.rows}
            student = rows.get("student KD") or rows["student"]
            per_method[method].append(student["test_accuracy"])
            params["student"] = student["params"]
            if method == "hinton":
                teacher_ckpt[seed] = str(Path(result.run_dir) / "teacher" / "model.safetensors")
                teacher_acc.append(rows["teacher"]["test_accuracy"])
                params["teacher"] = rows["teacher"]["params"]
            if method == "two_teachers":
                params["teacher b"] = rows["teacher b"]["params"]
                per_method.setdefault("_teacher_b", []).append(rows["teacher b"]["test_accuracy"])
            print(f"seed {seed} {method}: {student['test_accuracy']:.4f} ({walls[method][-1]:.0f}s)", flush=True)
    return {
        "teacher": teacher_acc,
        "methods": per_method,
        "params": params,
        "wall_s": walls,
        "teacher_ckpt": teacher_ckpt,
    }


def bare_loop(student, teacher, data, steps: int, batch: int, lr: float, temperature: float) -> float:
    """Hinton KD written by hand: the same math as configs/kd/hinton.yaml, no engine."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    x_all, y_all = data["inputs"], data["labels"]
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    student.train()
    teacher.eval()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = perm[(step * batch) % (len(perm) - batch) :][:batch]
        x, y = x_all[idx], y_all[idx]
        logits = student(x)
        with torch.no_grad():
            t_logits = teacher(x)
        kl = (
            F.kl_div(
                F.log_softmax(logits / temperature, -1),
                F.log_softmax(t_logits / temperature, -1),
                log_target=True,
                reduction="batchmean",
            )
            * temperature**2
        )
        loss = 0.9 * kl + 0.1 * F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return steps * batch / (time.perf_counter() - t0)


def engine_loop(student, teacher, data, steps: int, batch: int, lr: float, temperature: float, root: Path) -> float:
    cfg = load_config(
        kd.Config, CONFIGS / "hinton.yaml", [f"run.output_dir={root}", f"run.run_name=overhead-{time.time_ns()}"]
    )
    ctx = start("kd", cfg, cfg.run)
    distiller = Distiller(student, cfg.objective, {"teacher": teacher})
    tcfg = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, weight_decay=5e-4, progress=False)
    t0 = time.perf_counter()
    fit(distiller, data, tcfg, stage="student", run=ctx.run, accelerator=ctx.accelerator, seed=0)
    return steps * batch / (time.perf_counter() - t0)


def overhead(args: argparse.Namespace, root: Path) -> dict:
    data = load_images(ImageData(train_limit=3000 if args.quick else None)).train
    torch.manual_seed(0)  # speed does not depend on the teacher's weights: an untrained one will do
    teacher = build_model(ModelSpec(arch="convnet", args={"channels": [32, 64, 128]}))
    steps = 40 if args.quick else args.overhead_steps

    def student():
        torch.manual_seed(0)
        return build_model(ModelSpec(arch="convnet", args={"channels": [8, 16, 32]}))

    bare, engine = [], []
    for _ in range(args.overhead_reps):  # interleaved, so drifts in machine load hit both alike
        bare.append(bare_loop(student(), teacher, data, steps, 128, 2e-3, 4.0))
        engine.append(engine_loop(student(), teacher, data, steps, 128, 2e-3, 4.0, root))
    b, e = sorted(bare)[len(bare) // 2], sorted(engine)[len(engine) // 2]
    return {
        "steps": steps,
        "batch": 128,
        "reps": args.overhead_reps,
        "bare_img_s": bare,
        "engine_img_s": engine,
        "median_bare": b,
        "median_engine": e,
        "ratio": e / b,
        "target": 0.95,
    }


def markdown(res: dict) -> str:
    acc, b = res["accuracy"], res["budget"]
    t_mean, t_std = mean_std(acc["teacher"])
    base, _ = mean_std(acc["methods"]["student_alone"])
    lines = [
        "# Classic KD on Fashion-MNIST",
        "",
        f"Budget: teacher {b['teacher_epochs']} epochs, students {b['epochs']} epochs each (AdamW lr 2e-3, cosine, "
        f"batch 128), {b['seeds']} seeds; full 60k train / 10k test{' (QUICK subset)' if b['quick'] else ''}.",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}. "
        f"Accuracy runs took {res.get('accuracy_wall_s', res.get('wall_s', 0)) / 60:.1f} min of wall time.",
        "",
        "| model | params | test accuracy (mean ± std) | vs student alone |",
        "|---|---:|---:|---:|",
        f"| teacher (ConvNet 32-64-128) | {acc['params']['teacher']:,} | {t_mean:.4f} ± {t_std:.4f} | |",
    ]
    if "_teacher_b" in acc["methods"]:
        m, s = mean_std(acc["methods"]["_teacher_b"])
        lines.append(
            f"| teacher b (ConvNet 48-96-96, two_teachers only) | {acc['params']['teacher b']:,} "
            f"| {m:.4f} ± {s:.4f} | |"
        )
    for method in [m for m in METHODS if m in acc["methods"]]:
        m, s = mean_std(acc["methods"][method])
        delta = "" if method == "student_alone" else f"{100 * (m - base):+.2f} pts"
        lines.append(f"| student: {method} | {acc['params']['student']:,} | {m:.4f} ± {s:.4f} | {delta} |")
    o = res["overhead"]
    lines += [
        "",
        f"Student/teacher parameter ratio: 1/{acc['params']['teacher'] / acc['params']['student']:.1f}.",
        "",
        *([f"Note: {res['note']}", ""] if res.get("note") else []),
        "## Engine overhead (Hinton KD step, batch 128)",
        "",
        f"{o['steps']} steps, {o['reps']} interleaved repetitions, medians: bare PyTorch loop "
        f"{o['median_bare']:.0f} img/s, `distill` engine {o['median_engine']:.0f} img/s; "
        f"ratio **{o['ratio']:.3f}** (target >= {o['target']}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--overhead-steps", type=int, default=200)
    p.add_argument("--overhead-reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a small subset, to check the script")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated configs/kd names")
    p.add_argument("--name", default="kd_fmnist")
    p.add_argument("--note", help="a sentence stored with the results and printed under the table")
    p.add_argument("--part", choices=["all", "accuracy", "overhead", "render"], default="all",
                   help="rerun one part, keeping the other from the committed JSON")  # fmt: skip
    args = p.parse_args()
    t0 = time.perf_counter()
    out = RESULTS / f"{args.name}.json"
    res = json.loads(out.read_text()) if args.part != "all" and out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.part in ("all", "accuracy"):
            acc = accuracy_runs(args, root)
            acc.pop("teacher_ckpt")
            budget = {"seeds": args.seeds, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs}
            res.update(accuracy=acc, budget={**budget, "quick": args.quick}, accuracy_wall_s=time.perf_counter() - t0)
        if args.part in ("all", "overhead"):
            res["overhead"] = overhead(args, root)
    if args.part != "render":
        res["machine"] = machine()
    if args.note:
        res["note"] = args.note
    md = markdown(res)
    write(args.name, res, md)
    print(md)


if __name__ == "__main__":
    main()
