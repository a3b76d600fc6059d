"""Classic KD on Fashion-MNIST under the papers' protocols: a converged teacher, a converged student budget,
hyperparameters chosen on a validation split, every number over seeds; and the engine's overhead.

    python benchmarks/kd_fmnist.py [--seeds 3] [--epochs 12] [--teacher-epochs 10] [--dir runs/kd_fmnist]

The teacher trains once (seed 0) and its checkpoint serves every student and seed. Students read its
logits and features from memory (`teacher_signals=precomputed`: exact, the images are not augmented). The last
5,000 training images are the validation split; every choice (KD's temperature and alpha, attention
transfer's weight) is made on it, and the test set is read only for the report. Each finished run is kept
in --dir, so an interrupted benchmark resumes where it stopped. Writes benchmarks/results/kd_fmnist.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, mean_std, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.context import start  # noqa: E402
from distill.data import ImageData, load_images  # noqa: E402
from distill.engine import TrainConfig, fit  # noqa: E402
from distill.kd.distiller import Distiller  # noqa: E402
from distill.models import ModelSpec, build_model  # noqa: E402
from distill.recipes import kd  # noqa: E402
from distill.run import atomic_write  # noqa: E402

CONFIGS = Path(__file__).parent.parent / "configs" / "kd"
VAL = 5000
TEMPERATURES, ALPHAS = [1.0, 2.0, 4.0], [0.5, 0.9]
AT_WEIGHTS = [0.25, 1.0, 4.0]


class Runs:
    """Every finished run's result, one JSON file each in DIR/results: a rerun only trains what is missing.
    Several processes may share DIR (--worker 1 beside the main one): each claims a run (an O_EXCL file in
    DIR/claims) before training it, and waits for the runs another process claimed."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.results, self.claims = root / "results", root / "claims"
        self.results.mkdir(parents=True, exist_ok=True)
        if args.worker == 0:  # claims of runs a killed process never finished
            shutil.rmtree(self.claims, ignore_errors=True)
        self.claims.mkdir(exist_ok=True)
        old = root / "runs.json"  # the single-file format of the first invocations
        self.done = json.loads(old.read_text()) if old.exists() else {}

    def _file(self, key: str) -> str:
        return key.replace("/", "-") + ".json"

    def _reload(self) -> None:
        for f in self.results.glob("*.json"):
            row = json.loads(f.read_text())
            self.done[row["key"]] = row

    def _claim(self, key: str) -> bool:
        try:
            os.close(os.open(self.claims / self._file(key), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def _train(self, name: str, config: str, over: list[str], seed: int) -> None:
        a, key = self.args, f"{name}/seed{seed}"
        base = [f"run.output_dir={self.root}", f"run.run_name={key.replace('/', '-')}", f"run.seed={seed}",
                f"data.val_images={VAL}", "train.progress=false", f"train.epochs={a.epochs}"]  # fmt: skip
        if a.quick:
            base += ["data.train_limit=8000", "data.test_limit=1000"]
        shutil.rmtree(self.root / key.replace("/", "-"), ignore_errors=True)  # a killed attempt's leftovers
        t0 = time.perf_counter()
        result = kd.run(load_config(kd.Config, CONFIGS / f"{config}.yaml", base + over))
        rows = {r["model"]: r for r in result.rows}
        r = {**(rows.get("student KD") or rows["student"]), "key": key, "wall_s": time.perf_counter() - t0,
             "run_dir": str(Path(result.run_dir).relative_to(self.root))}  # fmt: skip
        atomic_write(self.results / self._file(key), json.dumps(r))
        self.done[key] = r
        print(f"{key}: val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f} ({r['wall_s']:.0f}s)", flush=True)

    def prefetch(self, jobs: list[tuple]) -> None:
        """Train each job that no process has done or claimed (the others' are waited for in get)."""
        for name, config, over, seed in jobs:
            self._reload()
            key = f"{name}/seed{seed}"
            if key not in self.done and self._claim(key):
                self._train(name, config, over, seed)

    def get(self, name: str, config: str, over: list[str], seed: int) -> dict:
        key = f"{name}/seed{seed}"
        while key not in self.done:
            self._reload()
            if key in self.done:
                break
            if self._claim(key):
                self._train(name, config, over, seed)
            else:
                time.sleep(5)
        return self.done[key]

    def jobs(self, name: str, config: str, over: list[str], seeds: int | None = None) -> list[tuple]:
        return [(name, config, over, seed) for seed in range(seeds or self.args.seeds)]

    def seeds(self, name: str, config: str, over: list[str], seeds: int | None = None) -> dict:
        jobs = self.jobs(name, config, over, seeds)
        self.prefetch(jobs)
        rows = [self.get(*job) for job in jobs]
        return {
            "config": config,
            "overrides": over,
            "val": [r["val_accuracy"] for r in rows],
            "test": [r["test_accuracy"] for r in rows],
            "wall_s": [r["wall_s"] for r in rows],
            "params": rows[0]["params"],
        }


def teacher_overrides(runs: Runs) -> tuple[list[str], dict]:
    """Train the teacher once (a plain supervised run of the teacher network), return how students load it."""
    a = runs.args
    spec = ["student.args.channels=[32,64,128]", f"train.epochs={a.teacher_epochs}"]
    row = runs.get("teacher", "student_alone", spec, seed=0)
    ckpt = runs.root / row["run_dir"] / "student" / "model.safetensors"
    return [f"teachers.0.model.checkpoint={ckpt}", "teacher_signals=precomputed"], row


def kd_over(temperature: float, alpha: float) -> list[str]:
    return [f"objective.0.args.temperature={temperature}", f"objective.0.weight={alpha}",
            f"objective.1.weight={round(1 - alpha, 6)}"]  # fmt: skip


def best(entries: dict[str, dict]) -> str:
    """The entry with the highest mean validation accuracy."""
    return max(entries, key=lambda k: mean_std(entries[k]["val"])[0])


def accuracy_runs(args: argparse.Namespace, root: Path) -> dict:
    runs = Runs(root, args)
    teacher, teacher_row = teacher_overrides(runs)
    out: dict = {"teacher": teacher_row, "methods": {}, "sweeps": {}}
    m = out["methods"]
    m["student_alone"] = runs.seeds("student_alone", "student_alone", [])
    hinton = {f"T={t:g} alpha={a:g}": (f"hinton-T{t:g}-a{a:g}", teacher + kd_over(t, a))
              for t in TEMPERATURES for a in ALPHAS}  # fmt: skip
    # attention transfer's weight: chosen on seed 0's validation accuracy, then the chosen one on every seed
    at = {f"weight={w:g}": (f"attention-w{w:g}", teacher + [f"objective.{i}.weight={w}" for i in (1, 2, 3)])
          for w in AT_WEIGHTS}  # fmt: skip
    # what needs no choice first, so that processes sharing the work never wait for each other long
    runs.prefetch([j for n, o in hinton.values() for j in runs.jobs(n, "hinton", o)]
                  + [j for n, o in at.values() for j in runs.jobs(n, "attention", o, seeds=1)])  # fmt: skip
    sweep = {k: runs.seeds(n, "hinton", o) for k, (n, o) in hinton.items()}
    out["sweeps"]["hinton"] = sweep
    chosen = best(sweep)
    m[f"hinton ({chosen}, chosen on validation)"] = sweep[chosen]
    t_best, a_best = (float(x.split("=")[1]) for x in chosen.split())
    at_seed0 = {k: runs.seeds(n, "attention", o, seeds=1) for k, (n, o) in at.items()}
    out["sweeps"]["attention (seed 0)"] = at_seed0
    chosen_at = best(at_seed0)
    two = teacher + [f"objective.1.args.temperature={t_best}", f"objective.1.weight={a_best}",
                     f"objective.2.weight={round(1 - a_best, 6)}", f"hint_stage.epochs={args.hint_epochs}",
                     "hint_stage.progress=false"]  # fmt: skip
    at_name, at_over = at[chosen_at]
    two_name = f"fitnets (two stages: hints {args.hint_epochs} epochs, then KD {chosen})"
    later = runs.jobs(at_name, "attention", at_over) + runs.jobs("fitnets_two_stage", "fitnets_two_stage", two)
    # has the student alone converged? every method row again at a longer budget, the student alone longer still
    check: dict[str, tuple] = {}
    if args.check_epochs:
        e, longer = args.check_epochs, [f"train.epochs={args.check_epochs}"]
        check = {"student_alone": (f"student_alone-{e}ep", "student_alone", longer),
                 f"hinton ({chosen})": (f"hinton-{e}ep", "hinton", teacher + kd_over(t_best, a_best) + longer),
                 f"attention ({chosen_at})": (f"{at_name}-{e}ep", "attention", at_over + longer),
                 two_name: (f"fitnets_two_stage-{e}ep", "fitnets_two_stage", two + longer)}  # fmt: skip
        later = [j for job in check.values() for j in runs.jobs(*job, seeds=args.check_seeds)] + later
    converge = (f"student_alone-{args.converge_epochs}ep", "student_alone", [f"train.epochs={args.converge_epochs}"])
    if args.converge_epochs:
        later += runs.jobs(*converge, seeds=args.converge_seeds)
    runs.prefetch(later)
    if check:
        out["longer"] = {"epochs": args.check_epochs,
                         **{k: runs.seeds(*job, seeds=args.check_seeds) for k, job in check.items()}}  # fmt: skip
    if args.converge_epochs:
        out["converge"] = {"epochs": args.converge_epochs,
                           "student_alone": runs.seeds(*converge, seeds=args.converge_seeds)}  # fmt: skip
    m[f"attention ({chosen_at}, chosen on validation)"] = runs.seeds(at_name, "attention", at_over)
    m[two_name] = runs.seeds("fitnets_two_stage", "fitnets_two_stage", two)
    if "fitnets" not in args.skip:
        m["fitnets (joint, hint + CE)"] = runs.seeds("fitnets", "fitnets", teacher)
    out["chosen"] = {"hinton": {"temperature": t_best, "alpha": a_best}, "attention": chosen_at}
    out["runs_wall_s"] = round(sum(r["wall_s"] for r in runs.done.values()))
    return out


def reproduction_runs(args: argparse.Namespace, root: Path, committed: dict) -> dict:
    """`--methods`: only these rows, at the committed results' chosen settings (no sweep: the choice on the
    validation split was made when they were measured), to check that a change reproduces them."""
    runs = Runs(root, args)
    teacher, teacher_row = teacher_overrides(runs)
    chosen = committed["accuracy"]["chosen"]
    t, a = chosen["hinton"]["temperature"], chosen["hinton"]["alpha"]
    known = {"student_alone": ("student_alone", "student_alone", []),
             "hinton": (f"hinton-T{t:g}-a{a:g}", "hinton", teacher + kd_over(t, a))}  # fmt: skip
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise SystemExit(f"--methods {unknown}: reproducible here are {sorted(known)}")
    runs.prefetch([j for m in methods for j in runs.jobs(*known[m])])
    reference = {m.split(" (")[0]: e for m, e in committed["accuracy"]["methods"].items()}
    out = {"teacher": teacher_row, "methods": {}, "sweeps": {}, "chosen": chosen, "reference": {}}
    for m in methods:
        out["methods"][m] = runs.seeds(*known[m])
        out["reference"][m] = {"test": reference[m]["test"], "val": reference[m]["val"]}
    out["reference_teacher"] = committed["accuracy"]["teacher"]["test_accuracy"]
    out["runs_wall_s"] = round(sum(r["wall_s"] for r in runs.done.values()))
    return out


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


def significance(a: list[float], b: list[float]) -> tuple[float, float]:
    """Difference of the means (a - b) and that difference over its standard error (Welch's t)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    return ma - mb, (ma - mb) / se if se > 0 else float("nan")


def verdict(t: float) -> str:
    if math.isnan(t):
        return "no spread (one seed)"
    return "better" if t > 2 else ("worse" if t < -2 else "within noise")


def comparison(e: dict, base: dict) -> list[str]:
    """The table cells comparing a row's test accuracy with the baseline's: difference, t, verdict."""
    if e is base:
        return ["", "", ""]
    diff, t = significance(e["test"], base["test"])
    return [f"{100 * diff:+.2f} pts", f"{t:+.1f}", verdict(t)]


def markdown(res: dict) -> str:
    acc, b = res["accuracy"], res["budget"]
    base = acc["methods"]["student_alone"]
    t = acc["teacher"]
    lines = [
        "# Classic KD on Fashion-MNIST",
        "",
        f"Budget: teacher {b['teacher_epochs']} epochs (seed 0, trained once, its checkpoint serves every student); "
        f"students {b['epochs']} epochs each (AdamW lr 2e-3, cosine, batch 128), {b['seeds']} seeds per row; "
        f"{'QUICK subset' if b['quick'] else '55k train / 5k validation (the last 5,000 training images) / 10k test'}."
        " Teacher signals cached (`teacher_signals=precomputed`). Every choice was made on the validation split; the "
        "test column is only reported.",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}. "
        f"The runs' wall times add up to {acc['runs_wall_s'] / 3600:.1f} h (several invocations, resumed from the runs "
        "kept in --dir; part of them two processes of one thread each in parallel).",
        "",
        "| model | params | validation (mean ± std) | test (mean ± std) | test vs student alone | t | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| teacher (ConvNet 32-64-128) | {t['params']:,} | {t['val_accuracy']:.4f} | {t['test_accuracy']:.4f} | | | |",
    ]
    for name, e in acc["methods"].items():
        (vm, vs), (tm, ts) = mean_std(e["val"]), mean_std(e["test"])
        cells = comparison(e, base)
        lines.append(f"| student: {name} | {e['params']:,} | {vm:.4f} ± {vs:.4f} | {tm:.4f} ± {ts:.4f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    if "longer" in acc:
        lo = acc["longer"]
        alone = lo["student_alone"]
        n = len(alone["test"])
        lines += ["", f"### Every row again at {lo['epochs']} epochs per student ({n} seed{'s' if n > 1 else ''}; "
                  "the choices made at the sweep's budget)", "",
                  "| model | validation (mean ± std) | test (mean ± std) | test vs student alone | t | verdict |",
                  "|---|---:|---:|---:|---:|---|"]  # fmt: skip
        for name, e in ((k, v) for k, v in lo.items() if k != "epochs"):
            (vm, vs), (tm, ts) = mean_std(e["val"]), mean_std(e["test"])
            cells = comparison(e, alone)
            lines.append(f"| student: {name} | {vm:.4f} ± {vs:.4f} | {tm:.4f} ± {ts:.4f} | " + " | ".join(cells) + " |")
        if "converge" in acc:  # the student alone longer still: how much did the check's budget leave?
            c, e = acc["converge"], acc["converge"]["student_alone"]
            (vm, vs), (tm, ts) = mean_std(e["val"]), mean_std(e["test"])
            k = len(e["test"])
            if k > 1:
                diff, tc = significance(e["test"], alone["test"])
                vs_check = f"{100 * diff:+.2f} pts over {lo['epochs']} epochs (t {tc:+.1f}, {verdict(tc)})"
            else:  # one seed: against the same seed's shorter run, beside the shorter runs' spread across seeds
                diff = e["test"][0] - alone["test"][0]
                vs_check = (f"{100 * diff:+.2f} pts over seed 0 at {lo['epochs']} epochs (the {lo['epochs']}-epoch "
                            f"seeds' std: {100 * mean_std(alone['test'])[1]:.2f} pts)")  # fmt: skip
            lines += ["", f"The student alone at {c['epochs']} epochs ({k} seed{'s' if k > 1 else ''}): validation "
                      f"{vm:.4f} ± {vs:.4f}, test {tm:.4f} ± {ts:.4f}, {vs_check}."]  # fmt: skip
    for sweep, entries in acc["sweeps"].items():
        n = len(next(iter(entries.values()))["val"])
        lines += ["", f"### Sweep: {sweep}, {n} seed{'s' if n > 1 else ''} each", "",
                  "| setting | validation (mean ± std) | test (mean ± std) |", "|---|---:|---:|"]  # fmt: skip
        for name, e in entries.items():
            (vm, vs), (tm, ts) = mean_std(e["val"]), mean_std(e["test"])
            lines.append(f"| {name} | {vm:.4f} ± {vs:.4f} | {tm:.4f} ± {ts:.4f} |")
    if acc.get("reference"):
        lines += ["", "### Against the committed figures (`kd_fmnist.json`, the same budget and settings)", "",
                  "| model | committed test (mean ± std) | this run's test (mean ± std) | difference | t | verdict |",
                  "|---|---:|---:|---:|---:|---|",
                  f"| teacher (seed 0) | {acc['reference_teacher']:.4f} | {t['test_accuracy']:.4f} | "
                  f"{100 * (t['test_accuracy'] - acc['reference_teacher']):+.2f} pts | | one run |"]  # fmt: skip
        for name, ref in acc["reference"].items():
            e = acc["methods"][name]
            diff, tt = significance(e["test"], ref["test"])
            (rm, rs), (tm, ts) = mean_std(ref["test"]), mean_std(e["test"])
            lines.append(f"| student: {name} | {rm:.4f} ± {rs:.4f} | {tm:.4f} ± {ts:.4f} | {100 * diff:+.2f} pts | "
                         f"{tt:+.1f} | {'reproduced (within noise)' if abs(tt) <= 2 else 'differs'} |")  # fmt: skip
    lines += [
        "",
        f"Student/teacher parameter ratio: 1/{t['params'] / base['params']:.1f}. t = difference over its standard "
        "error (Welch); a difference counts at |t| > 2.",
        "",
        *([f"Note: {res['note']}", ""] if res.get("note") else []),
    ]
    if "overhead" in res:
        o = res["overhead"]
        lines += [
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
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--check-epochs", type=int, default=24, help="every method row again at this budget (0: skip)")
    p.add_argument("--check-seeds", type=int, default=3, help="seeds of the longer budget's runs")
    p.add_argument("--converge-epochs", type=int, default=48, help="the student alone at this budget (0: skip)")
    p.add_argument("--converge-seeds", type=int, default=2)
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--hint-epochs", type=int, default=2)
    p.add_argument("--worker", type=int, default=0, help="1: a helper process sharing --dir (trains, writes nothing)")
    p.add_argument("--skip", default="", help="comma-separated: fitnets (the joint variant, run last)")
    p.add_argument("--overhead-steps", type=int, default=200)
    p.add_argument("--overhead-reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a small subset, to check the script")
    p.add_argument("--methods", help="e.g. student_alone,hinton: only these rows, at kd_fmnist.json's chosen settings, "
                   "compared with its figures (write with --name)")  # fmt: skip
    p.add_argument("--dir", default="runs/kd_fmnist", help="where runs are kept (resumable)")
    p.add_argument("--name", default="kd_fmnist")
    p.add_argument("--note", help="a sentence stored with the results and printed under the table")
    p.add_argument("--part", choices=["all", "accuracy", "overhead", "render"], default="all",
                   help="rerun one part, keeping the other from the committed JSON")  # fmt: skip
    args = p.parse_args()
    t0 = time.perf_counter()
    out = RESULTS / f"{args.name}.json"
    res = json.loads(out.read_text()) if args.part != "all" and out.exists() else {}
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "accuracy"):
        if args.methods:
            acc = reproduction_runs(args, root, json.loads((RESULTS / "kd_fmnist.json").read_text()))
        else:
            acc = accuracy_runs(args, root)
        if args.worker:
            return
        budget = {"seeds": args.seeds, "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
                  "hint_epochs": args.hint_epochs, "validation_images": VAL, "quick": args.quick}  # fmt: skip
        res.update(accuracy=acc, budget=budget, accuracy_wall_s=time.perf_counter() - t0)
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
