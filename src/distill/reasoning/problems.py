"""Math word problems: a JSONL file of the user's, or GSM8K-style problems generated offline by
reasoning-gym's `gsm_symbolic` (never committed: made at run time from a seed); splits by seed; the
steps of a worked solution; strict number parsing and the calculator applied to generated lines."""

from __future__ import annotations

import ast
import operator
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from distill.config import Section
from distill.data.files import read_jsonl
from distill.errors import DistillError

FINAL = "####"  # GSM8K's final-answer marker: every variant ends with a line '#### <number>'
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\d*\.\d+")


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: float
    solution: str | None = None  # GSM8K format: one step per line, then '#### N'
    subquestions: tuple[str, ...] | None = None  # gold decomposition, one per solution step

    @property
    def steps(self) -> list[str]:
        return solution_steps(self.solution) if self.solution else []


class ProblemData(Section):
    """Where the problems come from and how they are split."""

    source: Literal["arith", "gsm_symbolic", "jsonl"] = Field(
        "gsm_symbolic", description="arith (generated, with gold sub-questions), gsm_symbolic, or a JSONL file"
    )
    path: str | None = Field(None, description="JSONL: question, answer, optional solution and subquestions")
    size: int = Field(600, gt=0, description="arith / gsm_symbolic: problems to generate (all splits)")
    steps: tuple[int, int] = Field((2, 4), description="arith: fewest and most steps of a problem")
    held_out: list[str] = Field(
        default_factory=lambda: ["mul-sub", "div-add"],
        description="arith: ordered pairs of consecutive operations that only test problems hold",
    )
    seed: int = Field(0, ge=0, description="generator seed and split seed")
    val: int = Field(50, ge=0, description="validation problems (held out of training)")
    test: int = Field(100, gt=0, description="test problems")
    max_train: int | None = Field(None, gt=0, description="use at most this many training problems")
    gold_subquestions: bool = Field(
        True,
        description="train on the problems' gold sub-questions where they have them (false: the teacher writes them)",
    )
    evaluate_on: Literal["test", "validation"] = Field(
        "test", description="the split students are scored on: validation for choosing settings, the test set unread"
    )

    @model_validator(mode="after")
    def _path(self) -> ProblemData:
        if self.source == "jsonl" and not self.path:
            raise ValueError("data.source=jsonl needs data.path")
        return self


def load_problems(cfg: ProblemData) -> dict[str, list[Problem]]:
    """{"train", "val", "test"}: the problems shuffled by the seed, test first, then validation (arith: test
    problems from the held-out operation pairs, validation from the training distribution)."""
    if cfg.source == "arith":
        from distill.reasoning.arith import generate_splits

        if cfg.size <= cfg.test + cfg.val:
            raise DistillError(
                f"data.size {cfg.size} leaves no training problems after {cfg.test} test and {cfg.val} validation"
            )
        sizes = {"test": cfg.test, "val": cfg.val, "train": cfg.size - cfg.test - cfg.val}
        splits = generate_splits(sizes, cfg.seed, cfg.steps, cfg.held_out)
        return {**splits, "train": _gold(splits["train"][: cfg.max_train], cfg.gold_subquestions)}
    problems = read_problems(Path(cfg.path or "")) if cfg.source == "jsonl" else generate(cfg.size, cfg.seed)
    if len(problems) < cfg.test + cfg.val + 1:
        raise DistillError(
            f"{len(problems)} problems cannot hold {cfg.test} test and {cfg.val} validation "
            "problems and train on any; lower data.test / data.val"
        )
    order = list(problems)
    random.Random(cfg.seed).shuffle(order)
    test, val, train = order[: cfg.test], order[cfg.test : cfg.test + cfg.val], order[cfg.test + cfg.val :]
    return {"train": _gold(train[: cfg.max_train], cfg.gold_subquestions), "val": val, "test": test}


def _gold(problems: list[Problem], keep: bool) -> list[Problem]:
    return problems if keep else [replace(p, subquestions=None) for p in problems]


def generate(size: int, seed: int) -> list[Problem]:
    try:
        import reasoning_gym
    except ImportError:
        raise DistillError("data.source=gsm_symbolic needs reasoning-gym: pip install reasoning-gym") from None
    out = []
    for i, x in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)):
        out.append(
            Problem(
                f"gsm{seed}-{i}",
                " ".join(x["question"].split()),
                _number(str(x["answer"])),
                x["metadata"]["answer_cot"],
            )
        )
    return out


def read_problems(path: Path) -> list[Problem]:
    """Every line a problem; any bad line stops with one message naming the file and the line."""
    if not path.is_file():
        raise DistillError(f"problems file {path} does not exist")
    out = []
    for rec in read_jsonl(path, ("question", "answer"), hint="each problem needs a question and its answer"):
        where = f"{path} line {rec['_line']}"
        answer = parse_number(str(rec["answer"]))
        if answer is None:
            raise DistillError(f"{where}: answer {rec['answer']!r} is not a number")
        solution, subqs = rec.get("solution"), rec.get("subquestions")
        if solution is not None:
            end = final_answer(solution)
            if end is not None and end != answer:
                raise DistillError(f"{where}: the solution ends in {end:g}, the answer is {answer:g}")
        if subqs is not None:
            if not isinstance(subqs, list) or not all(isinstance(q, str) and q.strip() for q in subqs):
                raise DistillError(f"{where}: subquestions must be a list of non-empty strings")
            if solution is None or len(subqs) != len(solution_steps(solution)):
                raise DistillError(f"{where}: subquestions need a solution with one step per sub-question")
        out.append(
            Problem(
                str(rec.get("id", rec["_line"])),
                " ".join(str(rec["question"]).split()),
                answer,
                solution,
                tuple(q.strip() for q in subqs) if subqs else None,
            )
        )
    if not out:
        raise DistillError(f"problems file {path} holds no problems")
    return out


def solution_steps(solution: str) -> list[str]:
    """The steps of a worked solution: its lines before '####', each ending in a computation ('='). A line
    with none (a heading such as '1. Initial amounts:') joins the step after it; a solution that computes
    nowhere has one step per line."""
    body = [" ".join(line.strip().lstrip("•-*").split()) for line in solution.split(FINAL)[0].splitlines()]
    body = [line for line in body if line]
    if not any("=" in line for line in body):
        return body
    steps, pending = [], []
    for line in body:
        pending.append(line)
        if "=" in line:
            steps.append(" ".join(pending))
            pending = []
    if pending:
        steps[-1] += " " + " ".join(pending)
    return steps


# --- numbers ---------------------------------------------------------------------------------
def parse_number(text: str) -> float | None:
    """A number written alone ('1,234', '-3.5', '$40', '12.'), else None: never a guess from a sentence."""
    t = text.strip().rstrip(".").removeprefix("$").removeprefix("€").strip()
    if not re.fullmatch(NUMBER.pattern, t):
        return None
    return float(t.replace(",", ""))


def _number(text: str) -> float:
    """A number a generator wrote (never missing): its parse, or a clear error."""
    value = parse_number(text)
    if value is None:
        raise DistillError(f"a generated problem's answer {text!r} is not a number")
    return value


def final_answer(text: str) -> float | None:
    """The number on the first line that starts with '####', or None (no such line, or not a number)."""
    for line in text.splitlines():
        if line.strip().startswith(FINAL):
            return parse_number(line.strip()[len(FINAL) :])
    return None


def same(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def fmt(x: float) -> str:
    """12.0 -> '12', 0.5 -> '0.5' (the way solutions write numbers)."""
    return str(int(x)) if float(x).is_integer() else f"{x:.4f}".rstrip("0").rstrip(".")


# --- the calculator --------------------------------------------------------------------------
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_NUM = r"[$€]?\d[\d,]*(?:\.\d+)?"
ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]*)>>")
EQUATION = re.compile(rf"(?<![\w.])((?:{_NUM}\s*[-+*/x×÷]\s*)+{_NUM})(\s*=\s*)([$€]?)(-?\d[\d,]*(?:\.\d+)?)")


def evaluate(expr: str) -> float | None:
    """+ - * / and parentheses over numbers ('$', '€' and thousands commas allowed; x, × and ÷ read as * and /)."""
    e = re.sub(r"(?<=\d),(?=\d{3})", "", expr).replace("$", "").replace("€", "")
    e = e.replace("×", "*").replace("x", "*").replace("÷", "/")

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("not arithmetic")

    try:
        return ev(ast.parse(e.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def calculate(line: str) -> str:
    """The line with every result of arithmetic recomputed: '<<48/2=25>>' -> '<<48/2=24>>', and a plain
    '48 / 2 = 25' -> '48 / 2 = 24'. Applied to each generated line of every variant alike."""

    def annotation(m: re.Match) -> str:
        value = evaluate(m.group(1))
        return m.group(0) if value is None else f"<<{m.group(1)}={fmt(value)}>>"

    def equation(m: re.Match) -> str:
        value = evaluate(m.group(1))
        return m.group(0) if value is None else f"{m.group(1)}{m.group(2)}{m.group(3)}{fmt(value)}"

    return EQUATION.sub(equation, ANNOTATION.sub(annotation, line))
