"""Socratic CoT ("Distilling Reasoning Capabilities into Smaller Language Models", Shridhar et al. 2023).

Stages, in order:
    1. problems   train / validation / test splits (a JSONL file, or gsm_symbolic generated from a seed)
    2. annotate   the teacher writes one sub-question per solution step (or a whole decomposition when a
                  problem has no solution); strict parsing, rejections counted; every answer stored at once
    3. teacher    the teacher's own accuracy on the test split (optional)
    4. students   from the same pretrained weights, on the same problems, batches and budget: answer-only,
                  chain-of-thought, the Socratic question generator and answerer, and the unified model
    5. evaluate   each student solves the test split (the QG -> QA loop for the Socratic pair), same
                  calculator and step limit; accuracy, by number of steps, tokens per problem, traces
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from distill.config import Section, load_config
from distill.context import Result, RuntimeConfig, start
from distill.engine import TrainConfig, check_fits
from distill.errors import DistillError
from distill.labeling.clients import LlmTeacher
from distill.labeling.pipeline import Sampling, prompt_requests
from distill.labeling.pipeline import ask as ask_teacher
from distill.labeling.stages import teacher_client
from distill.labeling.store import LabelStore
from distill.models.llm import LlmSpec, TargetLM, hf_dir, load_causal_lm, save_hf
from distill.reasoning.annotate import REASONS, annotate, parse_final, solve_messages
from distill.reasoning.formats import encode, header
from distill.reasoning.problems import Problem, ProblemData, load_problems, parse_number, same
from distill.reasoning.solve import Lm, Trace, solve
from distill.report import markdown_table

name = "socratic"
Variant = Literal["answer", "cot", "socratic", "unified"]
LABELS = {"answer": "answer-only", "cot": "chain of thought", "socratic": "Socratic QG + QA", "unified": "unified"}
ROLES = {"answer": ["answer"], "cot": ["cot"], "socratic": ["qg", "qa"], "unified": ["unified"]}


class Inference(Section):
    """How students solve a problem."""

    max_steps: int = Field(8, gt=0, description="most lines (CoT) or sub-question/answer pairs (Socratic)")
    max_tokens: int = Field(96, gt=0, description="longest line")
    calculator: bool = Field(True, description="recompute every 'a op b = c' and '<<a op b=c>>' in each line")
    batch_size: int = Field(16, gt=0, description="problems decoded together")
    cache: bool = Field(True, description="keep each model's key/value cache across the calls of a batch")


class Students(Section):
    """The small models and how they train (each variant from the same weights, same budget)."""

    model: LlmSpec = Field(default_factory=LlmSpec, description="any causal LM: an HF directory, .gguf, bundled")
    variants: list[Variant] = Field(["answer", "cot", "socratic", "unified"])
    max_length: int = Field(384, gt=8, description="longest training sequence in tokens (longer ones are cut)")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            epochs=3, batch_size=8, lr=5e-5, weight_decay=0.0, schedule="linear", warmup_steps=5, log_every=10
        )
    )


class Config(Section):
    """`distill socratic`: a teacher's sub-questions -> a small question generator and answerer (Socratic CoT)."""

    run: RuntimeConfig = Field(default_factory=RuntimeConfig, description="run directory, seed")
    data: ProblemData = Field(default_factory=ProblemData, description="the problems")
    teacher: LlmTeacher | None = Field(None, description="teacher.kind: server | local; null: gold sub-questions")
    annotation: Sampling = Field(
        default_factory=lambda: Sampling(mode="cot", samples=1, temperature=0.0, max_tokens=256),
        description="how the teacher is asked for decompositions (samples > 1: the first sample that passes)",
    )
    teacher_accuracy: bool = Field(True, description="also let the teacher solve the test split")
    store: str | None = Field(None, description="SQLite store of the teacher's answers (default: <run>/teacher.sqlite)")
    students: Students = Field(default_factory=Students)
    inference: Inference = Field(default_factory=Inference)
    traces: int = Field(3, ge=0, description="example solutions per variant in the report")


def run(cfg: Config, resume: str | Path | None = None) -> Result:
    # 1. problems, and everything a user can get wrong, before the run directory exists
    splits = load_problems(cfg.data)
    train, test = splits["train"], splits["test" if cfg.data.evaluate_on == "test" else "val"]
    if not test:
        raise DistillError("data.evaluate_on=validation needs validation problems (data.val > 0)")
    if cfg.teacher is None and not all(p.subquestions for p in train):
        raise DistillError("teacher is null, so every training problem needs gold subquestions; set teacher")
    check_fits(len(train), cfg.students.train, "students.train")
    hf_dir(cfg.students.model.path)  # a missing student model fails now, not after the teacher's work
    teacher = None if cfg.teacher is None else teacher_client(cfg.teacher, resume)
    ctx = start(name, cfg, cfg.run, resume)
    store = LabelStore(cfg.store or ctx.run.path / "teacher.sqlite")

    # 2. the teacher's decompositions
    t0 = time.perf_counter()
    decomps, reasons = annotate(store, teacher, cfg.teacher.name if cfg.teacher else "gold", train, cfg.annotation)
    yield_row = {
        "problems": len(train),
        "kept": len(decomps),
        "yield": round(len(decomps) / len(train), 4),
        **{r: reasons.get(r, 0) for r in REASONS},
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    if not decomps:
        why = ", ".join(f"{r}: {reasons[r]}" for r in REASONS if reasons.get(r))
        raise DistillError(
            f"no decomposition was kept ({len(train)} rejected: {why}); see the teacher's replies in {store.path}"
        )
    check_fits(len(decomps), cfg.students.train, "students.train (the problems kept after annotation)")

    # 3. the teacher's own accuracy
    rows: list[dict[str, Any]] = []
    if cfg.teacher is not None and cfg.teacher_accuracy:
        done = ask_teacher(
            store,
            teacher,
            cfg.teacher.name,
            prompt_requests(
                [(p, solve_messages(p)) for p in test], Sampling(mode="cot", samples=1, temperature=0.0, max_tokens=320)
            ),
            parse_final,
            "solve",
            "teacher solves",
        )
        answers = [parse_number(done.labels[p.id][0] or "") for p in test]
        rows.append(_row(f"teacher ({cfg.teacher.name})", "-", [same(a, p.answer) for a, p in zip(answers, test)]))
    store.close()

    # 4-5. students, each then scored on the test split
    by_steps: dict[int, dict[str, Any]] = defaultdict(dict)
    examples, per_problem = [], []
    for variant in cfg.students.variants:
        traces, seconds = train_and_solve(ctx, cfg, variant, decomps, test)
        correct = [same(t.answer, t.problem.answer) for t in traces]
        rows.append(_row(LABELS[variant], len(decomps), correct, traces, seconds))
        for n, ok in _by_steps(traces, correct).items():
            by_steps[n][LABELS[variant]] = ok
        examples += [_example(LABELS[variant], t) for t in traces[: cfg.traces]]
        per_problem += [{"variant": variant, **_record(t), "correct": ok} for t, ok in zip(traces, correct)]
    ctx.run.write_text("traces.jsonl", "".join(json.dumps(r) + "\n" for r in per_problem))
    steps_table = [{"solution steps": n, **v} for n, v in sorted(by_steps.items())]
    products = {r: f"students/{r}" for v in cfg.students.variants for r in ROLES[v]}
    return ctx.finish(
        rows,
        products=products,
        tables={
            "annotation": [yield_row],
            "accuracy by solution steps": steps_table,
            "example solutions": examples,
        },
        info={
            "teacher": cfg.teacher.name if cfg.teacher else "gold sub-questions",
            "train_problems": len(train),
            "scored_on": cfg.data.evaluate_on,
            "test_problems": len(test),
        },
    )


def train_and_solve(ctx, cfg: Config, variant: str, decomps, test: list[Problem]) -> tuple[list[Trace], float]:
    """The variant's students (trained, or loaded when their stages are done) solve the scored split; the
    solutions and the time they took are kept in the run, so a resumed run does not solve again."""

    def solutions() -> dict[str, Any]:
        lms = [train_student(ctx, cfg, role, decomps) for role in ROLES[variant]]
        mode = "socratic" if variant in ("socratic", "unified") else variant
        t0 = time.perf_counter()
        with ctx.accelerator.autocast():  # run.precision=bf16 decodes in bf16 too
            traces = solve(test, mode, *lms, **cfg.inference.model_dump(), desc=f"solve ({LABELS[variant]})")
        return {"seconds": time.perf_counter() - t0, "traces": [_record(t) for t in traces]}

    rec, by_id = ctx.once(f"solutions/{variant}", solutions), {p.id: p for p in test}
    traces = [Trace(by_id[r["id"]], r["text"], r["tokens"], r["calls"], True) for r in rec["traces"]]
    return traces, rec["seconds"]


def _record(t: Trace) -> dict[str, Any]:
    return {
        "id": t.problem.id,
        "steps": len(t.problem.steps),
        "gold": t.problem.answer,
        "answer": t.answer,
        "tokens": t.tokens,
        "calls": t.calls,
        "text": t.text,
    }


def train_student(ctx, cfg: Config, role: str, decomps) -> Lm:
    """Fine-tune a fresh copy of the student on `role`'s targets (engine; resumable); saved as an HF directory."""
    s = cfg.students
    ctx.seed_stage(f"{role}/init")
    model, tok = load_causal_lm(s.model)
    data = encode(tok, decomps, role, s.max_length)
    # every student sees the problems in the same order: they differ in targets only
    ctx.fit(TargetLM(model), data, s.train, stage=role, seed_from="students")
    out = ctx.run.path / "students" / role
    if ctx.accelerator.is_main_process and not out.is_dir():
        save_hf(model, tok, out)
    return Lm(model.eval(), tok)


def _row(
    model: str, trained_on: Any, correct: list[bool], traces: list[Trace] | None = None, seconds: float | None = None
) -> dict[str, Any]:
    n, k = len(correct), sum(correct)
    lo, hi = wilson(k, n)
    row = {"model": model, "trained_on": trained_on, "accuracy": round(k / n, 4), "ci95": f"{lo:.3f}-{hi:.3f}"}
    if traces is not None:
        row["tokens_per_problem"] = round(sum(t.tokens for t in traces) / n, 1)
        row["no_final_answer"] = sum(t.answer is None for t in traces)
        row["problems_per_s"] = round(n / seconds, 3) if seconds else None
    return row


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def _by_steps(traces: list[Trace], correct: list[bool]) -> dict[int, str]:
    groups: dict[int, list[bool]] = defaultdict(list)
    for t, ok in zip(traces, correct):
        groups[len(t.problem.steps)].append(ok)
    return {n: f"{sum(v)}/{len(v)}" for n, v in groups.items()}


def _example(variant: str, t: Trace) -> dict[str, Any]:
    text = (header(t.problem) + t.text).strip().replace("\n", " ⏎ ")
    return {"variant": variant, "gold": t.problem.answer, "answer": t.answer, "solution": text}


def table(result: Result) -> str:
    return markdown_table(result.rows)


def ask(run_dir: str, question: str, variant: str = "socratic") -> str:
    """The trained students of the run in `run_dir` solve one problem; its solution, as text."""
    roles = ROLES.get(variant)
    if roles is None:
        raise DistillError(f"variant {variant!r}: choose one of {sorted(ROLES)}")
    lms = []
    for role in roles:
        d = Path(run_dir) / "students" / role
        if not (d / "config.json").is_file():
            raise DistillError(f"{run_dir} has no trained {role} student ({d}); run distill socratic first")
        lms.append(Lm(*load_causal_lm(LlmSpec(path=str(d)))))
    inference = load_config(Config, Path(run_dir) / "config.yaml").inference  # the run's own settings
    p = Problem("ask", " ".join(question.split()), math.nan)
    mode = "socratic" if variant in ("socratic", "unified") else variant
    (t,) = solve([p], mode, *lms, **inference.model_dump(exclude={"batch_size"}), desc="solve")
    return header(p) + t.text + f"\nfinal answer: {'none' if t.answer is None else f'{t.answer:g}'}"


def ask_command(argv: list[str]) -> int:
    """the trained students of a run solve one problem: distill socratic ask QUESTION --run RUN_DIR [--variant V]"""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # one line and exit status 2, as every other user error
            raise DistillError(f"distill socratic ask: {message}; usage: distill socratic ask QUESTION --run RUN_DIR")

    parser = Parser(prog="distill socratic ask")
    parser.add_argument("question")
    parser.add_argument("--run", required=True, help="a finished distill socratic run")
    parser.add_argument("--variant", default="socratic", choices=sorted(ROLES))
    args = parser.parse_args(argv)
    print(ask(args.run, args.question, args.variant))
    return 0


commands = {"ask": ask_command}
