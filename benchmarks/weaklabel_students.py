"""Weak-label students against supervised ones: does a small model trained on an LLM's labels come within 2 points
of the same model trained on human labels, beat its teacher, and get better with a better teacher?

    python benchmarks/weaklabel_students.py [--seeds 3] [--server-bin PATH] [--quick] [--render]

Texts: the Rotten Tomatoes snippets of `distill weaklabel`, shuffled with seed 0: a pool of 1,000 (labelled by each
teacher, K=8 chain-of-thought samples at T=0.5, the answers kept in the label stores weaklabel_rt.py shares and, once
a run ends, in benchmarks/labels/TEACHER.jsonl.gz, from which a clean clone's stores are filled),
500 validation texts off the pool's end (gold labels; no teacher sees them) and 1,000 test texts. Teachers:
SmolLM2-135M (Q4_1) and Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), both served by llama.cpp. Student: all-MiniLM-L6-v2,
the recipe's training (batch 16, lr 1e-4, linear decay), the same for every variant.

1. select (seed 0, the validation split; the test split unread): per teacher, the objective (the soft score, reg,
   or the majority label, cls) and the agreement threshold (0 or 0.75), with the epoch count, from the validation
   accuracy after each of --max-epochs epochs; the gold-label student's epochs the same way.
2. test (seeds 0..n-1: each seed the student's head and its batch order): each teacher's chosen student and the
   gold-label student at their chosen settings, scored on the test texts.

Claims, paired by seed on the same test texts with 95% t intervals at n-1 degrees of freedom: the best weak-label
student (the teacher whose chosen student reads the validation set better) within 2 points of the gold-label
student; the stronger teacher's student above the weaker one's; and each student against its own teacher (the
teacher scored on the pool's gold labels, other texts: an unpaired normal interval, its binomial and seed
variances added). Each finished run lands in the results JSON and is not run again.
Writes benchmarks/results/weaklabel_students.{json,md}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, finish, paired, reading, write  # noqa: E402

ROOT = Path("runs/bench-weaklabel-students")
KEPT = Path(__file__).parent / "labels"  # the teachers' answers, so that a clean clone need not label again
TEACHERS = ("smollm2", "qwen0.5b")  # weaker, stronger
# the stronger teacher runs first: its student is the likelier best, and the gold-label student reuses its pool
ORDER = TEACHERS[::-1]
CONFIGS = [("reg", 0.0), ("reg", 0.75), ("cls", 0.0), ("cls", 0.75)]
SIZES = {"train_limit": 1000, "val_size": 500, "test_limit": 1000}
QUICK = {"train_limit": 48, "val_size": 32, "test_limit": 32}
RUNS: dict[str, dict] = {}


def store(teacher: str) -> Path:
    """The label store weaklabel_rt.py keeps for the same teacher, pool and sampling: its answers are reused."""
    return Path("runs") / ("bench-weaklabel_rt" + ("" if teacher == "smollm2" else f"_{teacher}")) / "labels.sqlite"


def keep(teacher: str) -> None:
    """The teacher's answers in a committed file, rewritten when the store holds more: labelling a pool takes 1-2
    hours, and an unfinished one continues from what was kept."""
    from distill.labeling.store import LabelStore

    if not store(teacher).is_file():
        return
    s = LabelStore(store(teacher))
    rows = [{k: v for k, v in r.items() if k != "created"} for r in s.responses()]  # no timestamps: stable bytes
    s.close()
    if (path := KEPT / f"{teacher}.jsonl.gz").is_file():
        with gzip.open(path, "rt") as f:
            if sum(1 for _ in f) >= len(rows):
                return
    KEPT.mkdir(exist_ok=True)
    with open(tmp := path.with_suffix(".tmp"), "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
        z.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    tmp.replace(path)


def restore(teacher: str) -> None:
    """A new label store filled from the kept answers (delete benchmarks/labels/ to label the pool again)."""
    from distill.labeling.store import LabelStore, Response

    if store(teacher).is_file() or not (path := KEPT / f"{teacher}.jsonl.gz").is_file():
        return
    s = LabelStore(store(teacher))
    with gzip.open(path, "rt") as f:
        for line in f:
            s.put(Response(**json.loads(line)))
    s.close()


def run_one(teacher: str, url: str, job: tuple[str, float] | None, epochs: int, seed: int, args) -> dict:
    """One `distill weaklabel` run, one student (job None: the gold labels): stored, read back when finished."""
    from distill.config import load_config
    from distill.recipes import weaklabel
    from weaklabel_rt import TEACHERS as SERVED

    what = "gold" if job is None else f"{teacher}-{job[0]}-agree{job[1]:g}"
    name = f"{what}-e{epochs}-s{seed}"
    if name in RUNS:
        return RUNS[name]
    sizes = QUICK if args.quick else SIZES
    over = [f"run.output_dir={ROOT}", f"run.run_name={name}", f"run.seed={seed}", f"store={store(teacher)}",
            *(f"data.{k}={v}" for k, v in sizes.items()), "splits=[pool]",
            f"teacher={{kind: server, model: {SERVED[teacher][2]}, url: '{url}', concurrency: 1}}",
            "sampling.mode=cot", "sampling.samples=8", "sampling.temperature=0.5", "sampling.max_tokens=64",
            "student.encoder.max_length=64", f"student.train.epochs={epochs}", "student.train.progress=false",
            f"student.objectives=[{'' if job is None else job[0]}]", f"student.thresholds=[{0 if job is None else job[1]}]",
            f"student.gold={job is None}"]  # fmt: skip
    run_dir = ROOT / name
    if (run_dir / "results.json").is_file():
        result = json.loads((run_dir / "results.json").read_text())
    else:  # an unfinished run starts again (minutes): its config names the old server's port, so it cannot resume
        shutil.rmtree(run_dir, ignore_errors=True)
        result = weaklabel.run(load_config(weaklabel.Config, None, over)).to_json()
        if not args.quick:
            keep(teacher)
    taught, student = result["rows"]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    RUNS[name] = {"name": name, "teacher": None if job is None else teacher, "objective": job and job[0],
                  "threshold": job and job[1], "epochs": epochs, "seed": seed, "trained_on": student["trained_on"],
                  "accuracy": student["accuracy"], "f1": student["f1"], "val_accuracy": student["val_accuracy"],
                  "val_curve": [r["eval/val_accuracy"] for r in records if "eval/val_accuracy" in r],
                  "teacher_pool_accuracy": taught["accuracy"], "pool": sizes["train_limit"],
                  "test": sizes["test_limit"]}  # fmt: skip
    return RUNS[name]


def choose(runs: list[dict]) -> dict:
    """The (run, epoch count) whose validation accuracy is highest; ties: fewer epochs, then the earlier run.
    Only the validation curves are read."""
    options = [(acc, -e, -i, r) for i, r in enumerate(runs) for e, acc in enumerate(r["val_curve"])]  # [] if untrained
    acc, neg_e, _, best = max(options, key=lambda o: o[:3])
    return {"objective": best["objective"], "threshold": best["threshold"], "epochs": 1 - neg_e, "val_accuracy": acc}


def claims(d: dict) -> dict:
    test = {v: [d["runs"][n] for n in names] for v, names in d.get("test", {}).items()}
    acc = {v: [r["accuracy"] for r in rs] for v, rs in test.items() if len(rs) >= 2}
    out: dict = {}
    if "gold" not in acc:
        return out
    weak = [t for t in TEACHERS if t in acc]
    if weak:  # the best weak-label student: chosen on validation, never on the test texts
        best = max(weak, key=lambda t: d["chosen"][t]["val_accuracy"])
        out["best_vs_gold"] = paired(acc[best], acc["gold"], "lower", "higher", 2) | {"teacher": best}
    if all(t in acc for t in TEACHERS):
        out["stronger_teacher"] = paired(acc[TEACHERS[1]], acc[TEACHERS[0]], "did not hold", "held")
    for t in weak:
        out[f"{t}_student_vs_teacher"] = against_teacher(test[t])
    return out


def against_teacher(runs: list[dict]) -> dict:
    """The student's mean test accuracy against its teacher's on the pool (other texts, so unpaired): a normal
    95% interval whose variance adds the student's test-text and seed variances to the teacher's binomial one."""
    p_s = statistics.fmean(r["accuracy"] for r in runs)
    p_t, n_t, n_s = runs[0]["teacher_pool_accuracy"], runs[0]["pool"], runs[0]["test"]
    seeds = statistics.variance(r["accuracy"] for r in runs) if len(runs) > 1 else 0.0
    var = p_s * (1 - p_s) / n_s + seeds / len(runs) + p_t * (1 - p_t) / n_t
    mean, half = 100 * (p_s - p_t), 100 * 1.96 * math.sqrt(var)
    return {"student": round(100 * p_s, 2), "teacher": round(100 * p_t, 2), "mean": round(mean, 2),
            "ci95": round(half, 2), "verdict": reading(mean, half, "did not hold", "held")}  # fmt: skip


def main() -> None:
    from distill.labeling.llama_server import llama_cpp_server
    from weaklabel_rt import TEACHERS as SERVED

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=8, help="the selection runs' length (the recipe's default)")
    p.add_argument("--server-bin", help="llama.cpp's llama-server (make llama-server; faster than the default)")
    p.add_argument("--quick", action="store_true", help="a few texts and 2 epochs, to check the script")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    args = p.parse_args()
    name = "weaklabel_students" + ("_quick" if args.quick else "")
    if args.render:
        d = json.loads((RESULTS / f"{name}.json").read_text())
        return write(name, d, markdown(d))
    if (RESULTS / f"{name}.json").is_file() and not args.quick:
        # every landed run stays in the results (also those this invocation has not reached) and is not run again
        RUNS.update(json.loads((RESULTS / f"{name}.json").read_text()).get("runs", {}))
    t0, top = time.perf_counter(), 2 if args.quick else args.max_epochs
    d: dict = {"seeds": args.seeds, "max_epochs": top, "sizes": QUICK if args.quick else SIZES, "chosen": {},
               "test": {}, "runs": RUNS}  # fmt: skip
    save = lambda: finish(name, {**d, "claims": claims(d)}, markdown, t0)  # noqa: E731
    for i, teacher in enumerate(ORDER):
        _, gguf, alias, _ = SERVED[teacher]
        store(teacher).parent.mkdir(parents=True, exist_ok=True)
        restore(teacher)
        if not args.quick:
            keep(teacher)  # a store labelled before this file was kept
        with llama_cpp_server(gguf(), alias, store(teacher).parent / "server.log", threads=2, n_ctx=1024,
                              binary=args.server_bin) as url:  # fmt: skip
            variants = [(teacher, CONFIGS)] + ([("gold", [None])] if i == 0 else [])  # gold: any teacher's pool
            for variant, jobs in variants:
                tried = []
                for job in jobs:
                    tried.append(run_one(teacher, url, job, top, 0, args))
                    save()
                d["chosen"][variant] = c = choose(tried)
                job = None if variant == "gold" else (c["objective"], c["threshold"])
                names = d["test"].setdefault(variant, [])
                for seed in range(args.seeds):
                    r = run_one(teacher, url, job, c["epochs"], seed, args)
                    names += [r["name"]] if r["name"] not in names else []
                    save()


def markdown(d: dict) -> str:
    from distill.report import markdown_table

    m, s, runs = d.get("machine", {}), d["sizes"], d["runs"]
    lines = ["# Weak-label students against the gold-label student (Rotten Tomatoes, all-MiniLM-L6-v2)", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}. Wall time of the last invocation "
             f"{d.get('wall_s', 0) / 3600:.2f} h (finished runs are read back, not rerun). Pool {s['train_limit']} texts "
             f"(K=8 CoT answers at T=0.5 per teacher), validation {s['val_size']}, test {s['test_limit']}; {d['seeds']} "
             f"seeds; selection runs {d['max_epochs']} epochs.", "",
             "## Choices on the validation split (seed 0; the test split unread)", ""]  # fmt: skip
    sel = [r for r in runs.values() if r["seed"] == 0 and r["epochs"] == d["max_epochs"]]
    lines += [markdown_table([{"student": r["name"].rsplit("-e", 1)[0], "trained_on": r["trained_on"],
                               "val accuracy by epoch": " ".join(f"{v:.3f}" for v in r["val_curve"])} for r in sel]), ""]  # fmt: skip
    for v, c in d["chosen"].items():
        how = "gold labels" if v == "gold" else f"{c['objective']}, agreement >= {c['threshold']:g}"
        lines.append(f"- {v}: {how}, {c['epochs']} epoch(s) (validation {100 * c['val_accuracy']:.1f}%)")
    rows = [{"student": v, "seed": r["seed"], "trained_on": r["trained_on"], "test accuracy": r["accuracy"],
             "macro-F1": r["f1"], "teacher on the pool": r["teacher_pool_accuracy"] if v != "gold" else "-"}
            for v, names in d["test"].items() for n in names if (r := runs.get(n))]  # fmt: skip
    if rows:
        lines += ["", "## Test accuracy, per seed", "", markdown_table(rows), ""]
    taught = {r["teacher"]: r["teacher_pool_accuracy"] for r in runs.values() if r["teacher"]}
    if taught:  # the premise of 'a stronger teacher makes a stronger student'
        lines += ["Teachers on the pool's gold labels (K=8 self-consistency, ties count as wrong): "
                  + ", ".join(f"{t} {100 * a:.1f}%" for t, a in taught.items()) + ".", ""]  # fmt: skip
    c = d.get("claims") or {}
    if c:
        lines += ["## The claims (points; 95% intervals)", ""]
    if b := c.get("best_vs_gold"):
        lines.append(f"- the best weak-label student ({b['teacher']}'s, chosen on validation) minus the gold-label "
                     f"student: {b['mean']:+.2f} +- {b['ci95']:.2f} (per seed {b['diffs']}): within 2 points "
                     f"**{b['within_2_points']}**")  # fmt: skip
    if st := c.get("stronger_teacher"):
        lines.append(f"- a stronger teacher makes a stronger student ({TEACHERS[1]}'s minus {TEACHERS[0]}'s, paired "
                     f"by seed): {st['mean']:+.2f} +- {st['ci95']:.2f} (per seed {st['diffs']}): **{st['verdict']}**")  # fmt: skip
    for t in TEACHERS:
        if v := c.get(f"{t}_student_vs_teacher"):
            lines.append(f"- {t}'s student ({v['student']:.1f}%, test) beats its teacher ({v['teacher']:.1f}%, pool): "
                         f"{v['mean']:+.2f} +- {v['ci95']:.2f}: **{v['verdict']}**")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
