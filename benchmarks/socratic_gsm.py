"""Socratic CoT on GSM8K-style problems (reasoning-gym's gsm_symbolic), Qwen2.5-Coder-0.5B-Instruct as the
teacher (served by llama.cpp), the bundled SmolLM2-135M as every student.

    python benchmarks/socratic_gsm.py [--note TEXT]

One `distill socratic` run with configs/socratic/gsm.yaml: the teacher decomposes the training problems
(one sub-question per solution step) and solves the test problems itself; answer-only, chain-of-thought,
Socratic QG + QA and unified students train on the kept problems with the same budget, and each solves
the same 100 test problems with the same calculator and step limit. Accuracies with 95% Wilson intervals,
and paired differences between variants (same problems) with 95% bootstrap intervals.
A rerun resumes the run (runs/bench-socratic/run) and reuses the teacher's stored answers.
Writes benchmarks/results/socratic_gsm.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.labeling.llama_server import llama_cpp_server  # noqa: E402
from distill.labeling.store import LabelStore  # noqa: E402
from distill.recipes import socratic  # noqa: E402
from qwen_teacher import ALIAS, teacher_gguf  # noqa: E402

ROOT = Path("runs/bench-socratic")
PAIRS = [("socratic", "cot"), ("cot", "answer"), ("socratic", "answer"), ("unified", "cot"), ("socratic", "unified")]


def paired(correct: dict[str, list[bool]], a: str, b: str, draws: int = 10000) -> dict:
    """a - b in accuracy points on the same problems, with a 95% bootstrap interval over problems."""
    diff = [int(x) - int(y) for x, y in zip(correct[a], correct[b])]
    rng, n = random.Random(0), len(diff)
    means = sorted(sum(rng.choice(diff) for _ in range(n)) / n for _ in range(draws))
    return {"pair": f"{a} - {b}", "diff_pts": round(100 * sum(diff) / n, 1),
            "ci95_pts": f"{100 * means[int(0.025 * draws)]:.1f} to {100 * means[int(0.975 * draws)]:.1f}",
            "only_a": diff.count(1), "only_b": diff.count(-1)}  # fmt: skip


def teacher_speed(path: Path) -> list[dict]:
    """Per kind of request: how many, mean seconds each, completion tokens per second (from the store)."""
    rows = []
    for mode in ("decompose", "solve"):
        rs = list(LabelStore(path).responses(mode=mode))
        if rs:
            secs, toks = sum(r["latency_s"] for r in rs), sum(r["completion_tokens"] or 0 for r in rs)
            rows.append({"requests": mode, "n": len(rs), "s_each": round(secs / len(rs), 2),
                         "completion_tokens_each": round(toks / len(rs), 1), "completion_tokens_s": round(toks / secs, 1)})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--note", default="", help="a remark kept with the results")
    p.add_argument("--train", type=int, default=240, help="training problems offered to the teacher")
    args = p.parse_args()
    t0 = time.perf_counter()
    gguf = teacher_gguf()
    run_dir = ROOT / "run"
    with llama_cpp_server(gguf, ALIAS, ROOT / "server.log", n_ctx=2048, threads=2, port=8765) as url:
        over = [f"teacher={{kind: server, url: '{url}', model: {ALIAS}, concurrency: 1}}",
                f"store={ROOT / 'teacher.sqlite'}", f"run.output_dir={ROOT}", "run.run_name=run",
                f"data.max_train={args.train}"]  # fmt: skip
        resume = run_dir if (run_dir / "config.yaml").exists() else None
        cfg = load_config(socratic.Config, "gsm", over, recipe="socratic") if resume is None else None
        cfg = cfg or load_config(socratic.Config, run_dir / "config.yaml")
        result = socratic.run(cfg, resume=resume).to_json()
    traces = [json.loads(line) for line in (run_dir / "traces.jsonl").read_text().splitlines()]
    correct: dict[str, list[bool]] = {}
    for t in traces:
        correct.setdefault(t["variant"], []).append(t["correct"])
    diffs = [paired(correct, a, b) for a, b in PAIRS if a in correct and b in correct]
    s = cfg.students
    budget = {"train_problems_offered": result["info"]["train_problems"], "test_problems": result["info"]["test_problems"],
              "epochs": s.train.epochs, "batch_size": s.train.batch_size, "lr": s.train.lr, "max_length": s.max_length,
              "max_steps": cfg.inference.max_steps, "calculator": cfg.inference.calculator, "seeds": 1}  # fmt: skip
    data = {"machine": machine(), "teacher": f"{ALIAS} (Q4_K_M GGUF, llama.cpp, 2 threads, greedy)",
            "student": "SmolLM2-135M-Instruct (bundled GGUF, fp32)", "budget": budget, "rows": result["rows"],
            "annotation": result["tables"]["annotation"], "by_steps": result["tables"]["accuracy by solution steps"],
            "paired": diffs, "examples": result["tables"]["example solutions"],
            "wall_min": round((time.perf_counter() - t0) / 60, 1), "note": args.note}  # fmt: skip
    data["teacher_speed"] = teacher_speed(ROOT / "teacher.sqlite")
    write("socratic_gsm", data, markdown(data))
    print(markdown(data))


def verdict(paired: list[dict]) -> str:
    """Whether the paper's ordering, Socratic > CoT > answer-only, held: each step's interval above 0."""
    by = {p["pair"]: p for p in paired}
    steps = [by[k] for k in ("socratic - cot", "cot - answer") if k in by]
    held = [float(p["ci95_pts"].split(" to ")[0]) > 0 for p in steps]
    said = "; ".join(f"{p['pair']}: {p['diff_pts']:+.1f} pts ({p['ci95_pts']})" for p in steps)
    return (
        f"The paper's ordering (Socratic > CoT > answer-only) {'held' if held and all(held) else 'did not hold'} "
        f"here: {said}. A step holds only if its interval lies above 0."
    )


def markdown(d: dict) -> str:
    from distill.report import markdown_table

    b = d["budget"]
    lines = [
        "# Socratic CoT on gsm_symbolic: Qwen2.5-Coder-0.5B teacher -> SmolLM2-135M students", "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, torch {d['machine']['torch']}. "
        f"Teacher: {d['teacher']}. Students: {d['student']}, each fine-tuned from the same weights on the same "
        f"kept problems: {b['epochs']} epochs, batch {b['batch_size']}, lr {b['lr']}, linear decay; inference "
        f"greedy, line by line, calculator {'on' if b['calculator'] else 'off'}, at most {b['max_steps']} steps. "
        f"{b['train_problems_offered']} training problems offered to the teacher, {b['test_problems']} test problems, "
        f"{b['seeds']} seed; hyperparameters fixed before the run, none tuned. Wall time {d['wall_min']} min "
        "(teacher answers already in the store are read, not asked again).", "",
        "## Accuracy on the test problems", "", markdown_table(d["rows"]), "",
        "## Paired differences (same test problems; 95% bootstrap interval)", "", markdown_table(d["paired"]), "",
        "## Teacher annotation", "", markdown_table(d["annotation"]), "",
        "Teacher requests (latency includes prompt processing; llama.cpp reuses the shared prompt prefix):", "",
        markdown_table(d["teacher_speed"]), "",
        "## Accuracy by number of solution steps", "", markdown_table(d["by_steps"]), "",
    ]  # fmt: skip
    lines += [verdict(d["paired"]), ""]
    if d["note"]:
        lines += [d["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
