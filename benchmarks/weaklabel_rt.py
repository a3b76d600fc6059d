"""LLM-labelled data -> small classifier on the Rotten Tomatoes snippets, SmolLM2-135M as the teacher
(served by llama.cpp), all-MiniLM-L6-v2 as the student.

    python benchmarks/weaklabel_rt.py [--pool 1000] [--test 1000] [--samples 8]

At the defaults (issue 13: 1,000 gold test texts put the binomial noise near +-1.5 pts) the teacher writes
about 18,000 CoT answers, some 2 hours of labelling on 2 CPU cores; the label store keeps every answer, so an
interrupted run resumes.

Held-out accuracy / macro-F1 of: the teacher (direct greedy, CoT greedy, CoT self-consistency K=8 at
T=0.5), students trained on its labels (CLS and REG, agreement thresholds), the same student on gold
labels, and the Loughran-McDonald / Harvard IV lexicons. Throughput: texts per second against the
server with 1 vs 4 concurrent requests, and the local backend batched vs one at a time.
Writes benchmarks/results/weaklabel_rt.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402
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

TASK = resolve_task("movie_sentiment")
SETTINGS = {
    "teacher direct, greedy": Sampling(mode="direct", samples=1, temperature=0.0, max_tokens=16),
    "teacher CoT, greedy": Sampling(mode="cot", samples=1, temperature=0.0, max_tokens=64),
}


def teacher_rows(store, spec, test, sc: Sampling) -> list[dict]:
    rows = []
    for name, sampling in {**SETTINGS, f"teacher CoT, self-consistency K={sc.samples}": sc}.items():
        t0 = time.perf_counter()
        done = label(store, ServerClient(spec), spec.name, TASK, test, sampling, desc=name)
        votes = [vote(done.labels[i.id], TASK.values) for i in test]
        s = scores([v.label for v in votes], [i.gold for i in test], TASK.names)
        parsed = sum(x is not None for i in test for x in done.labels[i.id]) / (len(test) * sampling.samples)
        ties = sum(v.label is None and v.parsed > 0 for v in votes)  # no label: counted as wrong by scores()
        rows.append({"model": name, "accuracy": round(s["accuracy"], 4), "f1": round(s["f1"], 4),
                     "parsed": round(parsed, 4), "ties": ties,
                     "accuracy_ties_as_coin_flips": round(s["accuracy"] + 0.5 * ties / len(test), 4),
                     "wall_s": round(time.perf_counter() - t0, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


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
        rows.append({"model": title, "accuracy": round(s["accuracy"], 4), "f1": round(s["f1"], 4)})
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
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--throughput-n", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", default="runs/bench-weaklabel_rt", help="kept: a rerun reuses its label store")
    args = p.parse_args()
    t_start = time.perf_counter()
    data = TextItems(train_limit=args.pool, test_limit=args.test)
    pool, test = load_items(data)
    sc = Sampling(mode="cot", samples=args.samples, temperature=args.temperature, max_tokens=64)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    with llama_cpp_server(resolve("smollm2-135m"), "smollm2", root / "server.log") as url:
        store_path = root / "labels.sqlite"  # answers already stored are not asked again
        spec = ServerTeacher(model="smollm2", url=url, concurrency=1)
        teachers = teacher_rows(LabelStore(store_path), spec, test, sc)
        speed = throughput(url, test, args.throughput_n)
        over = [f"run.output_dir={root}", f"run.run_name=wl-{time.strftime('%H%M%S')}", f"store={store_path}",
                f"data.train_limit={args.pool}", f"data.test_limit={args.test}",
                f"teacher={{kind: server, model: smollm2, url: '{url}', concurrency: 1}}",
                "sampling.mode=cot", f"sampling.samples={args.samples}", f"sampling.temperature={args.temperature}",
                "sampling.max_tokens=64", "student.objectives=[reg, cls]", "student.thresholds=[0.0, 0.75, 1.0]",
                "student.encoder.max_length=64", f"student.train.epochs={args.epochs}",
                "student.train.progress=false"]  # fmt: skip
        result = weaklabel.run(load_config(weaklabel.Config, None, over))
    students = result.rows[1:]
    sc_row = teachers[-1]
    rows = teachers + students + lexicon_rows(pool, test)
    out = {
        "machine": machine(),
        "budget": {**vars(args), "pool_texts": len(pool), "test_texts": len(test)},
        "rows": rows,
        "labelling": result.tables["labelling"],
        "throughput_texts_per_s": speed,
        "self_consistency_beats_single": sc_row["accuracy"] > max(t["accuracy"] for t in teachers[:-1]),
        "best_student_minus_teacher": round(max(s["accuracy"] or 0 for s in students[:-1]) - sc_row["accuracy"], 4),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    write("weaklabel_rt", out, markdown(out))
    print(markdown(out))


def markdown(d: dict) -> str:
    b = d["budget"]
    lines = [
        "# Weak labels from SmolLM2-135M -> all-MiniLM-L6-v2, Rotten Tomatoes snippets",
        "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores. Teacher served by llama.cpp "
        f"(llama-cpp-python 0.3.36, Q4_1 GGUF). {b['pool_texts']} pool texts labelled with K={b['samples']} CoT "
        f"samples at T={b['temperature']}; {b['test_texts']} held-out texts with human labels; students "
        f"{b['epochs']} epochs; 1 seed. Total wall time {d['wall_s'] / 60:.1f} min.",
        "",
        "| model | trained on | accuracy | macro-F1 |",
        "|---|---:|---:|---:|",
    ]
    for r in d["rows"]:
        acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}"
        f1 = "-" if r.get("f1") is None else f"{100 * r['f1']:.1f}"
        lines.append(f"| {r['model']} | {r.get('trained_on', '-')} | {acc} | {f1} |")
    sc = d["rows"][2]
    lines += ["", f"{sc['model']}: the K answers tied on {sc['ties']} of {b['test_texts']} texts; a tie gives no "
              f"label and counts as wrong (as coin flips: {100 * sc['accuracy_ties_as_coin_flips']:.1f}%). "
              f"Students: batch 16, lr 1e-4, {b['epochs']} epochs, 64 tokens; a threshold that keeps fewer texts "
              "than a batch trains nothing (-). Labels come from the store when a rerun finds them there."]  # fmt: skip
    lines += ["", "Throughput (texts/s, direct greedy answers of at most 16 tokens):", ""]
    lines += [f"- {k}: {v}" for k, v in d["throughput_texts_per_s"].items()]
    lines += [
        "",
        f"Self-consistency beats a single answer: {d['self_consistency_beats_single']}. "
        f"Best weak-label student minus the K-sample teacher: {100 * d['best_student_minus_teacher']:+.1f} pts.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
