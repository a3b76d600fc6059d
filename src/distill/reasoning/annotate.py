"""The teacher's decompositions, as in the paper: given a problem and its worked solution, the teacher
writes the sub-question each step answers; given no solution, it writes sub-questions and their answers
itself. Parsing is strict and every rejection has a reason, counted in the report."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from distill.labeling.pipeline import Sampling, ask, prompt_requests
from distill.labeling.store import LabelStore
from distill.labeling.task import Messages
from distill.reasoning.problems import FINAL, Problem, final_answer, fmt, parse_number, same

PAIRED = (
    "You turn the worked solution of a math word problem into sub-questions: for each step of the solution, "
    "write the question that this step answers. Write exactly one line per step, 'Q1: ...', 'Q2: ...' and so "
    "on, and nothing else."
)
SELF = (
    "You break a math word problem into sub-questions and answer each in turn. Write 'Q1: ...' then 'A1: ...' "
    "(one short line of arithmetic), 'Q2: ...', 'A2: ...' and so on, and end with a line '#### <number>', the "
    "final answer."
)
EXEMPLARS = [  # (problem, solution steps, sub-questions): GSM8K's first two training problems
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
        "clips did Natalia sell altogether in April and May?",
        ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips altogether in April and May."],
        ["How many clips did Natalia sell in May?", "How many clips did Natalia sell altogether in April and May?"],
    ),
    (
        "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her "
        "parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How "
        "much more money does Betty need to buy the wallet?",
        [
            "In the beginning, Betty has only 100 / 2 = $50.",
            "Betty's grandparents gave her 15 * 2 = $30.",
            "This means, Betty needs 100 - 50 - 30 - 15 = $5 more.",
        ],
        [
            "How much money does Betty have in the beginning?",
            "How much money did Betty's grandparents give her?",
            "How much more money does Betty need to buy the wallet?",
        ],
    ),
]
EXEMPLAR_ANSWERS = [72, 5]
LINE = re.compile(r"^\s*([QA])(\d+)\s*[:.)]\s*(.*\S)\s*$")
REASONS = ["unparsed", "step count", "not a question", "repeated", "wrong answer"]


@dataclass(frozen=True)
class Decomposition:
    """One worked problem as (sub-question, answer) pairs; the last answer holds the final number."""

    problem: Problem
    pairs: tuple[tuple[str, str], ...]


# --- prompts -------------------------------------------------------------------------------
def _paired_user(question: str, steps: list[str]) -> str:
    lines = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
    return f"Problem: {question}\nSolution ({len(steps)} steps):\n{lines}\nWrite Q1 to Q{len(steps)}."


def messages(problem: Problem) -> Messages:
    """The chat for one problem: paired with its solution's steps when it has one, else self-written."""
    paired = bool(problem.steps)
    chat = [{"role": "system", "content": PAIRED if paired else SELF}]
    for (question, steps, subqs), answer in zip(EXEMPLARS, EXEMPLAR_ANSWERS):
        if paired:
            reply = "\n".join(f"Q{i}: {q}" for i, q in enumerate(subqs, 1))
            chat += [
                {"role": "user", "content": _paired_user(question, steps)},
                {"role": "assistant", "content": reply},
            ]
        else:
            reply = "\n".join(f"Q{i}: {q}\nA{i}: {s}" for i, (q, s) in enumerate(zip(subqs, steps), 1))
            chat += [
                {"role": "user", "content": f"Problem: {question}"},
                {"role": "assistant", "content": f"{reply}\n{FINAL} {answer}"},
            ]
    user = _paired_user(problem.question, problem.steps) if paired else f"Problem: {problem.question}"
    return [*chat, {"role": "user", "content": user}]


# --- parsing -------------------------------------------------------------------------------
def parse(text: str) -> str | None:
    """The reply's numbered lines as JSON {"q": [...], "a": [...], "final": number|null}, or None when any
    non-empty line is something else or the numbering is not 1, 2, 3... (stored with the raw reply)."""
    qs: list[str] = []
    answers: list[str] = []
    for line in text.strip().splitlines():
        if not line.strip() or line.strip().startswith(FINAL):
            continue
        m = LINE.match(line)
        if m is None:
            return None
        kind, n, body = m.group(1), int(m.group(2)), m.group(3)
        seq = qs if kind == "Q" else answers
        if n != len(seq) + 1:
            return None
        seq.append(body)
    if not qs or (answers and len(answers) != len(qs)):
        return None
    final = final_answer(text)
    return json.dumps({"q": qs, "a": answers, "final": final})


def check(problem: Problem, parsed: str | None) -> tuple[Decomposition | None, str | None]:
    """(decomposition, None) when kept, else (None, the reason it is rejected)."""
    if parsed is None:
        return None, "unparsed"
    d = json.loads(parsed)
    qs = d["q"]
    if any(not q.endswith("?") for q in qs):
        return None, "not a question"
    if len({q.lower() for q in qs}) < len(qs):
        return None, "repeated"
    if problem.steps:
        if len(qs) != len(problem.steps):
            return None, "step count"
        answers = problem.steps
    else:
        if not d["a"]:
            return None, "unparsed"
        if not same(d["final"], problem.answer):
            return None, "wrong answer"
        answers = d["a"]
    return Decomposition(problem, tuple(zip(qs, answers))), None


def gold(problem: Problem) -> Decomposition:
    """A problem's own sub-questions paired with its solution's steps (no teacher)."""
    assert problem.subquestions is not None
    return Decomposition(problem, tuple(zip(problem.subquestions, problem.steps)))


def annotate(
    store: LabelStore, client, teacher: str, problems: list[Problem], sampling: Sampling, desc: str = "annotate"
) -> tuple[list[Decomposition], Counter]:
    """Each problem's decomposition (the first of its K samples that passes), and the rejections by reason.

    Problems with gold sub-questions take them and ask nothing. Every answer is stored as it arrives."""
    kept: list[Decomposition] = [gold(p) for p in problems if p.subquestions]
    asked = [p for p in problems if not p.subquestions]
    reasons: Counter = Counter()
    if not asked:
        return kept, reasons
    done = ask(
        store, client, teacher, prompt_requests([(p, messages(p)) for p in asked], sampling), parse, "decompose", desc
    )
    for p in asked:
        for parsed in done.labels[p.id]:
            d, why = check(p, parsed)
            if d is not None:
                kept.append(d)
                break
            reasons[why] += 1
        else:
            reasons["problems without a kept decomposition"] += 1
    return kept, reasons


# --- the teacher's own accuracy ----------------------------------------------------------------
SOLVE = (
    "Solve the math word problem. Reason in a few short lines, then give the final answer on a last line "
    "'#### <number>'."
)


def solve_messages(problem: Problem) -> Messages:
    return [{"role": "system", "content": SOLVE}, {"role": "user", "content": problem.question}]


BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def parse_final(text: str) -> str | None:
    """The teacher's final answer: its '#### N' line, else its last LaTeX \\boxed{N} (the form many chat
    models are trained to write); the number parsed strictly either way."""
    value = final_answer(text)
    if value is None and (boxed := BOXED.findall(text)):
        value = parse_number(boxed[-1])
    return None if value is None else fmt(value)
