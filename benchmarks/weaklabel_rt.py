"""LLM-labelled data -> small classifier on the Rotten Tomatoes snippets, SmolLM2-135M as the teacher
(served by llama.cpp), all-MiniLM-L6-v2 as the student.

    python benchmarks/weaklabel_rt.py [--teacher smollm2|qwen0.5b] [--pool 1000] [--test 1000] [--samples 8]
                                      [--threads 2] [--teacher-only] [--server-bin PATH [--parallel N]]

--teacher qwen0.5b: the bigger teacher of ../shared/DATA.md (Qwen2.5-Coder-0.5B-Instruct, assembled by
benchmarks/qwen_teacher.py), results in weaklabel_rt_qwen0.5b.{json,md}; --teacher-only scores the teacher rows
(and the lexicons) without training students, for a pool the teacher cannot label in one sitting, into
weaklabel_rt[_TEACHER]_poolN.{json,md}. Each teacher keeps one label store, so a bigger pool reuses a smaller one's
answers (the pool is a prefix of the same shuffled list). --server-bin: llama.cpp's own llama-server (make
llama-server) serves the teacher instead of llama-cpp-python's server (benchmarks/teacher_servers.md: how much
faster), with --parallel slots.

The teacher labels the pool only (the recipe's splits=[pool]): its own accuracy is measured there, on the
pool's gold labels, which it never sees, and the students are scored on the --test held-out gold texts, which
need no teacher answers (issue 13: 1,000 texts put the binomial noise near +-1.5 pts). At the defaults the
teacher writes 9,000 CoT answers and 1,000 direct ones; the label store keeps every answer, so an interrupted
run resumes.

Accuracy / macro-F1 of: the teacher (direct greedy, CoT greedy, one CoT sample at T=0.5, CoT self-consistency
K=8 at T=0.5), students trained on its labels (REG and CLS, agreement thresholds), the same student on gold
labels, and the Loughran-McDonald / Harvard IV lexicons, with standard errors (paired where two rows score
the same texts). Throughput (--throughput-n > 0): texts per second against the server with 1 vs 4 concurrent
requests, and the local backend batched vs one at a time. Writes benchmarks/results/weaklabel_rt.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finish  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.data.labeled_text import TextItems, load_items  # noqa: E402
from distill.labeling import scores, vote  # noqa: E402
from distill.labeling.clients import LocalClient, LocalTeacher, ServerClient, ServerTeacher  # noqa: E402
from distill.labeling.lexicon import lexicon, polarity  # noqa: E402
from distill.labeling.llama_server import llama_cpp_server  # noqa: E402
from distill.labeling.pipeline import Sampling, label  # noqa: E402
from distill.labeling.stages import resolve_task  # noqa: E402
from distill.labeling.store import LabelStore  # noqa: E402
from distill.models.llm import resolve  # noqa: E402
from distill.recipes import weaklabel  # noqa: E402
from qwen_teacher import ALIAS, teacher_gguf  # noqa: E402

TASK = resolve_task("movie_sentiment")
# --teacher: (title, the GGUF file, its served alias, quantisation)
TEACHERS = {
    "smollm2": ("SmolLM2-135M", lambda: resolve("smollm2-135m"), "smollm2", "Q4_1"),
    "qwen0.5b": ("Qwen2.5-Coder-0.5B-Instruct", teacher_gguf, ALIAS, "Q4_K_M"),
}
SETTINGS = {
    "teacher direct, greedy": Sampling(mode="direct", samples=1, temperature=0.0, max_tokens=16),
    "teacher CoT, greedy": Sampling(mode="cot", samples=1, temperature=0.0, max_tokens=64),
}


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def paired_diff(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Mean of a - b over the same texts and its standard error."""
    d = [int(x) - int(y) for x, y in zip(a, b)]
    return statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))


def teacher_rows(store, spec, items, sc: Sampling) -> tuple[list[dict], dict[str, list[bool]]]:
    """The teacher's accuracy on `items` (gold known, never shown to it), per setting; and who was right."""
    rows, right = [], {}
    single = f"teacher CoT, one sample at T={sc.temperature}"
    settings = {f"teacher CoT, self-consistency K={sc.samples}": sc, **SETTINGS}
    for name, sampling in settings.items():
        t0 = time.perf_counter()
        done = label(store, ServerClient(spec), spec.name, TASK, items, sampling, desc=name)
        answers = {name: [done.labels[i.id] for i in items]}
        if sampling is sc:  # the first of the K samples is a single CoT sample at the same temperature: free
            answers[single] = [done.labels[i.id][:1] for i in items]
        for row_name, labs in answers.items():
            votes = [vote(x, TASK.values) for x in labs]
            s = scores([v.label for v in votes], [i.gold for i in items], TASK.names)
            right[row_name] = [v.label == i.gold for v, i in zip(votes, items)]
            parsed = sum(a is not None for lab in labs for a in lab) / sum(len(lab) for lab in labs)
            ties = sum(v.label is None and v.parsed > 0 for v in votes)  # no label: counted as wrong by scores()
            rows.append({"model": row_name, "scored_on": "pool", "accuracy": round(s["accuracy"], 4),
                         "se": round(stderr(s["accuracy"], len(items)), 4), "f1": round(s["f1"], 4),
                         "parsed": round(parsed, 4), "ties": ties,
                         "accuracy_ties_as_coin_flips": round(s["accuracy"] + 0.5 * ties / len(items), 4),
                         "wall_s": round(time.perf_counter() - t0, 1) if row_name == name else 0.0})  # fmt: skip
            print(rows[-1], flush=True)
    return rows, right


def lexicon_rows(pool, test) -> list[dict]:
    prior = Counter(i.gold for i in pool).most_common(1)[0][0]  # a text with no lexicon word gets the majority class
    rows = []
    for name in ("lm", "hiv4"):
        pos, neg = lexicon(name)
        pred = []
        for i in test:
            p = polarity(i.text, pos, neg)
            pred.append("positive" if p > 0 else "negative" if p < 0 else prior)
        s = scores(pred, [i.gold for i in test], TASK.names)
        title = {"lm": "Loughran-McDonald lexicon", "hiv4": "Harvard IV-4 lexicon"}[name]
        rows.append({"model": title, "scored_on": "test", "accuracy": round(s["accuracy"], 4),
                     "se": round(stderr(s["accuracy"], len(test)), 4), "f1": round(s["f1"], 4)})  # fmt: skip
    return rows


def throughput(url: str, test, n: int) -> dict:
    """Texts per second, direct greedy answers, on fresh stores (nothing skipped)."""
    texts = test[:n]
    sampling = Sampling(mode="direct", samples=1, temperature=0.0, max_tokens=16)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for conc in (1, 4):
            spec = ServerTeacher(model="smollm2", url=url, concurrency=conc)
            t0 = time.perf_counter()
            label(LabelStore(Path(d) / f"c{conc}.sqlite"), ServerClient(spec), spec.name, TASK, texts, sampling)
            out[f"server, {conc} concurrent"] = round(n / (time.perf_counter() - t0), 3)
        local = None
        for batch in (1, 8):
            spec = LocalTeacher(path="smollm2-135m", batch_size=batch)
            local = local or LocalClient(spec)
            local.spec = spec
            t0 = time.perf_counter()
            label(LabelStore(Path(d) / f"b{batch}.sqlite"), local, spec.name, TASK, texts, sampling)
            out[f"local, batch {batch}"] = round(n / (time.perf_counter() - t0), 3)
    print(out, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", choices=TEACHERS, default="smollm2")
    p.add_argument("--teacher-only", action="store_true", help="score the teacher rows only: no students")
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (the students: OMP_NUM_THREADS)")
    p.add_argument("--server-bin", help="a llama-server binary (make llama-server) to serve the teacher")
    p.add_argument("--parallel", type=int, default=1, help="requests in flight, one llama-server slot each")
    p.add_argument("--throughput-n", type=int, default=16, help="0: skip the throughput part (SmolLM2 only)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--objectives", default="reg,cls", help="the students' objectives, comma-separated")
    p.add_argument("--thresholds", default="0,0.75,1", help="agreement thresholds, comma-separated")
    p.add_argument("--out", help="kept: a rerun reuses its label store (default runs/bench-<results name>)")
    p.add_argument("--note")
    args = p.parse_args()
    _, gguf, alias, _ = TEACHERS[args.teacher]
    base = "weaklabel_rt" + ("" if args.teacher == "smollm2" else f"_{args.teacher}")
    partial = f"_pool{args.pool}" if args.teacher_only else ""  # a partial measurement never overwrites a full one
    name = base + partial
    if args.teacher != "smollm2" or args.teacher_only:  # the throughput part measures the bundled teacher
        args.throughput_n = 0
    t_start = time.perf_counter()
    data = TextItems(train_limit=args.pool, test_limit=args.test)
    pool, test = load_items(data)
    sc = Sampling(mode="cot", samples=args.samples, temperature=args.temperature, max_tokens=64)
    root = Path(args.out or f"runs/bench-{base}")  # one label store per teacher, whatever the pool
    root.mkdir(parents=True, exist_ok=True)
    server = dict(threads=args.threads, binary=args.server_bin, parallel=args.parallel, n_ctx=1024)
    with llama_cpp_server(gguf(), alias, root / "server.log", **server) as url:
        store_path = root / "labels.sqlite"  # answers already stored are not asked again
        spec = ServerTeacher(model=alias, url=url, concurrency=args.parallel)
        teachers, right = teacher_rows(LabelStore(store_path), spec, pool, sc)
        speed = throughput(url, test, args.throughput_n) if args.throughput_n else {}
        if args.teacher_only:
            out = report(args, teachers, right, [], pool, test) | {"labelling": [], "throughput_texts_per_s": {}}
            return finish(name, out, markdown, t_start, args.note)
        over = [f"run.output_dir={root}", f"run.run_name=wl-{time.strftime('%H%M%S')}", f"store={store_path}",
                f"data.train_limit={args.pool}", f"data.test_limit={args.test}", "splits=[pool]",
                f"teacher={{kind: server, model: {alias}, url: '{url}', concurrency: {args.parallel}}}",
                "sampling.mode=cot", f"sampling.samples={args.samples}", f"sampling.temperature={args.temperature}",
                "sampling.max_tokens=64", f"student.objectives=[{args.objectives}]",
                f"student.thresholds=[{args.thresholds}]",
                "student.encoder.max_length=64", f"student.train.epochs={args.epochs}",
                "student.train.progress=false"]  # fmt: skip
        result = weaklabel.run(load_config(weaklabel.Config, None, over))
    assert result.rows[0]["accuracy"] == teachers[0]["accuracy"], "the recipe scores the same pool votes"
    students = [{**r, "scored_on": "test", "se": round(stderr(r["accuracy"], len(test)), 4) if r["accuracy"] is not None else None}
                for r in result.rows[1:]]  # fmt: skip
    weak = [r for r in students if r["model"] != "student-gold" and r["accuracy"] is not None]
    best = max(weak, key=lambda r: r["accuracy"])
    gap = best["accuracy"] - teachers[0]["accuracy"]
    out = report(args, teachers, right, students, pool, test)
    out |= {"labelling": result.tables["labelling"], "throughput_texts_per_s": speed}
    out["best_student_minus_teacher"] = {"student": best["model"], "diff": round(gap, 4),
                                         "se": round(math.hypot(best["se"], teachers[0]["se"]), 4)}  # fmt: skip
    finish(name, out, markdown, t_start, args.note)


def report(args, teachers, right, students, pool, test) -> dict:
    """Everything but the students' extras: the rows and the teacher's paired comparisons."""
    sc_name, single = teachers[0]["model"], teachers[1]["model"]
    comparisons = {f"{sc_name} minus {other}": paired_diff(right[sc_name], right[other])
                   for other in (single, *SETTINGS)}  # fmt: skip
    budget = {k: v for k, v in vars(args).items() if k != "note"} | {"pool_texts": len(pool), "test_texts": len(test)}
    budget["server_bin"] = args.server_bin and Path(args.server_bin).name  # not this machine's path
    return {"teacher": TEACHERS[args.teacher][0], "budget": budget,
            "rows": teachers + students + lexicon_rows(pool, test),
            "paired_differences": {k: {"diff": round(m, 4), "se": round(se, 4)} for k, (m, se) in comparisons.items()}}  # fmt: skip


def verdict(diff: float, se: float) -> str:
    return "within noise" if abs(diff) <= 2 * se else ("higher" if diff > 0 else "lower")  # <=: 0 +- 0 ties


def markdown(d: dict) -> str:
    b = d["budget"]
    title, _, _, quant = TEACHERS[b.get("teacher", "smollm2")]
    server = (
        "llama.cpp (llama-cpp-python 0.3.36"
        if not b.get("server_bin")
        else f"llama.cpp's llama-server (as vendored by llama-cpp-python 0.3.36, {b['parallel']} parallel slot(s)"
    )
    students = "No students (--teacher-only)." if b.get("teacher_only") else f"Students {b['epochs']} epochs, 1 seed."
    lines = [
        f"# Weak labels from {title} -> all-MiniLM-L6-v2, Rotten Tomatoes snippets",
        "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores. Teacher served by {server}, {quant} GGUF, "
        f"{b['threads']} thread(s)). {b['pool_texts']} pool texts labelled "
        f"with K={b['samples']} CoT samples at T={b['temperature']}: the teacher rows are scored on the pool's "
        f"gold labels (never shown to the teacher); the students and lexicons on {b['test_texts']} other held-out "
        f"texts with gold labels. {students} Total wall time {d['wall_s'] / 60:.1f} min.",
        "",
        "| model | scored on | trained on | accuracy ± se | macro-F1 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in d["rows"]:
        acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f} ± {100 * r['se']:.1f}"
        f1 = "-" if r.get("f1") is None else f"{100 * r['f1']:.1f}"
        lines.append(f"| {r['model']} | {r['scored_on']} | {r.get('trained_on', '-')} | {acc} | {f1} |")
    sc = d["rows"][0]
    lines += ["", f"se: the binomial standard error of an accuracy. {sc['model']}: the K answers tied on "
              f"{sc['ties']} of {b['pool_texts']} texts; a tie gives no label and counts as wrong (as coin flips: "
              f"{100 * sc['accuracy_ties_as_coin_flips']:.1f}%)."
              + ("" if b.get("teacher_only") else f" Students: batch 16, lr 1e-4, {b['epochs']} epochs, 64 tokens; "
                 "a threshold that keeps fewer texts than a batch trains nothing (-)."), ""]  # fmt: skip
    lines += [
        "Self-consistency against single answers, on the same pool texts (paired difference ± its se; "
        "'within noise' when under 2 se):",
        "",
    ]
    for k, v in d["paired_differences"].items():
        lines.append(f"- {k}: {100 * v['diff']:+.1f} ± {100 * v['se']:.1f} pts, {verdict(v['diff'], v['se'])}")
    if g := d.get("best_student_minus_teacher"):
        lines += ["", f"Best weak-label student ({g['student']}, test texts) minus the K-sample teacher (pool texts): "
                  f"{100 * g['diff']:+.1f} ± {100 * g['se']:.1f} pts, {verdict(g['diff'], g['se'])}."]  # fmt: skip
    lines.append("")
    if d["throughput_texts_per_s"]:
        lines += ["Throughput (texts/s, direct greedy answers of at most 16 tokens):", ""]
        lines += [f"- {k}: {v}" for k, v in d["throughput_texts_per_s"].items()]
        lines.append("")
    if d.get("note"):
        lines += [f"Note: {d['note']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
