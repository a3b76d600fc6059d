"""`distill socratic`: problems and numbers, the teacher's decompositions (strict parsing on tricky
replies), training targets, the QG -> QA loop, end to end through the CLI, a killed run, user errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.errors import DistillError
from distill.labeling.store import LabelStore
from distill.reasoning import solve as solve_module
from distill.reasoning.annotate import Decomposition, check, parse
from distill.reasoning.formats import STOP, encode
from distill.reasoning.problems import (
    Problem,
    ProblemData,
    calculate,
    final_answer,
    load_problems,
    parse_number,
    solution_steps,
)
from distill.reasoning.solve import Lm, lines, solve
from fake_openai import FakeServer, kill_once_stored
from llm_fixtures import char_tokenizer, save_tiny_llama

DISTILL = [sys.executable, "-m", "distill.cli"]


# --- numbers, steps, the calculator ----------------------------------------------------------
def test_numbers_are_parsed_strictly():
    assert parse_number("1,234") == 1234 and parse_number(" -3.5 ") == -3.5 and parse_number("$40") == 40
    assert parse_number("12.") == 12 and parse_number(".5") == 0.5
    for bad in ["12 apples", "about 12", "1,23", "", "twelve", "3/4"]:
        assert parse_number(bad) is None, bad
    assert final_answer("So 3 + 4 = 7\n#### 7\n") == 7
    assert final_answer("#### 7 apples") is None and final_answer("the answer is 7") is None


def test_calculator_recomputes_every_result():
    assert calculate("Natalia sold 48/2 = 25 clips in May.") == "Natalia sold 48/2 = 24 clips in May."
    assert calculate("paid $700000 x 3/100 = $20000 in fees") == "paid $700000 x 3/100 = $21000 in fees"
    assert calculate("so <<48+24=70>>70 clips") == "so <<48+24=72>>70 clips"
    assert calculate("1,000 * 1.5 = 1") == "1,000 * 1.5 = 1500" and calculate("7 / 2 = 3") == "7 / 2 = 3.5"
    assert calculate("He has 48 = 48 clips, 5 / 0 = 1") == "He has 48 = 48 clips, 5 / 0 = 1"  # nothing to compute


def test_solution_steps_join_headings_to_the_step_they_introduce():
    sol = (
        "Let's solve this step by step:\n\n1. Initial amounts:\n   • 35 × 3 = 105 kiwi\n"
        "2. Total: 105 + 35 = 140\n#### 140"
    )
    assert solution_steps(sol) == ["Let's solve this step by step: 1. Initial amounts: 35 × 3 = 105 kiwi",
                                   "2. Total: 105 + 35 = 140"]  # fmt: skip


# --- generated problems with gold decompositions ----------------------------------------------
def test_arith_problems_carry_their_own_decomposition_and_test_holds_unseen_pairs():
    from distill.reasoning.arith import SYMBOL

    cfg = ProblemData(source="arith", size=700, val=100, test=200, steps=(2, 4), held_out=["mul-sub", "div-add"])
    splits = load_problems(cfg)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [400, 100, 200]
    op_of = {v: k for k, v in SYMBOL.items()}
    for split, problems in splits.items():
        for p in problems:
            steps = p.steps
            assert 2 <= len(steps) <= 4 and len(p.subquestions) == len(steps)
            assert all(q.endswith("?") for q in p.subquestions)
            assert all(calculate(s) == s for s in steps), "every step computes its own result"
            results = [parse_number(s.split("=")[1].split()[0]) for s in steps]
            assert results[-1] == p.answer == final_answer(p.solution)
            for prev, s in zip(results, steps[1:]):  # each step starts from the one before
                assert parse_number(s.split("=")[0].split()[-3]) == prev
            ops = [op_of[s.split("=")[0].split()[-2]] for s in steps]
            unseen = {("mul", "sub"), ("div", "add")} & set(zip(ops, ops[1:]))
            assert bool(unseen) == (split == "test"), (split, ops)
    questions = [p.question for ps in splits.values() for p in ps]
    assert len(set(questions)) == len(questions), "no problem in two splits"
    assert [p.question for p in load_problems(cfg)["test"]] == [p.question for p in splits["test"]]
    assert load_problems(cfg.model_copy(update={"seed": 1}))["test"][0].question != splits["test"][0].question
    teacher_writes = load_problems(cfg.model_copy(update={"gold_subquestions": False}))
    assert all(p.subquestions is None for p in teacher_writes["train"]) and teacher_writes["test"][0].subquestions
    with pytest.raises(DistillError, match=r"held-out pair 'mul\+sub'"):
        load_problems(cfg.model_copy(update={"held_out": ["mul+sub"]}))


# --- the teacher's decompositions --------------------------------------------------------------
P = Problem("p", "Ann has 3 bags of 4 apples and eats 2. How many are left?", 10.0,
            "Ann has 3 * 4 = 12 apples.\nShe has 12 - 2 = 10 left.\n#### 10")  # fmt: skip


@pytest.mark.parametrize(("reply", "reason"), [
    ("Q1: How many apples does Ann have?\nQ2: How many are left?", None),
    ("  Q1. How many apples does Ann have?\n\nQ2) How many are left?  ", None),
    ("Sure! Here are the questions:\nQ1: How many apples does Ann have?\nQ2: How many are left?", "unparsed"),
    ("Q1: How many apples does Ann have?\nQ3: How many are left?", "unparsed"),
    ("Q1: How many apples does Ann have?", "step count"),
    ("Q1: How many apples does Ann have?\nQ2: How many are left?\nQ3: Why?", "step count"),
    ("Q1: How many apples does Ann have?\nQ2: The apples left", "not a question"),
    ("Q1: How many are left?\nQ2: how many are left?", "repeated"),
    ("", "unparsed"),
])  # fmt: skip
def test_annotations_are_parsed_strictly(reply, reason):
    d, why = check(P, parse(reply))
    assert why == reason
    if reason is None:
        assert d.pairs == (("How many apples does Ann have?", "Ann has 3 * 4 = 12 apples."),
                           ("How many are left?", "She has 12 - 2 = 10 left."))  # fmt: skip


def test_the_teachers_final_answer_is_its_final_line_or_its_last_box():
    from distill.reasoning.annotate import parse_final

    assert parse_final("3 + 4 = 7\n#### 7") == "7"
    assert parse_final("So \\(\\boxed{12}\\) cats, not \\boxed{1,300}.") == "1300"
    assert parse_final("\\boxed{\\frac{1}{5}}") is None and parse_final("The answer is 7.") is None
    assert parse_final("#### 7\nor \\boxed{8}") == "7"


def test_self_written_decompositions_must_end_in_the_gold_answer():
    bare = Problem("b", P.question, 10.0)
    good = "Q1: How many apples?\nA1: 3 * 4 = 12\nQ2: How many are left?\nA2: 12 - 2 = 10\n#### 10"
    d, why = check(bare, parse(good))
    assert why is None and d.pairs[1] == ("How many are left?", "12 - 2 = 10")
    assert check(bare, parse(good.replace("#### 10", "#### 11")))[1] == "wrong answer"
    assert check(bare, parse(good.replace("\n#### 10", "")))[1] == "wrong answer"  # no final answer
    assert check(bare, parse("Q1: How many apples?\nA1: 12\nQ2: How many are left?"))[1] == "unparsed"


# --- what each student learns ------------------------------------------------------------------
def test_each_variant_learns_its_own_lines():
    tok = char_tokenizer()
    d = Decomposition(Problem("t", "2 and 3?", 5.0), (("Sum?", "2+3=5"),))

    def targets(variant: str) -> str:
        data = encode(tok, [d], variant, 512)
        keep = data["labels"][0] != -100
        return tok.decode(data["labels"][0][keep].tolist())

    assert targets("answer") == "#### 5\n"
    assert targets("cot") == "2+3=5\n#### 5\n"
    assert targets("qg") == f" Sum?\n {STOP}\n"
    assert targets("qa") == " 2+3=5\n #### 5\n"
    assert targets("unified") == f" Sum?\n 2+3=5\n {STOP}\n #### 5\n"
    data = encode(tok, [d], "unified", 512)
    full = tok.decode(data["input_ids"][0].tolist())
    assert full == f"Problem: 2 and 3?\nQ: Sum?\nA: 2+3=5\nQ: {STOP}\nA: #### 5"  # inputs: all but the last token


# --- the loop ---------------------------------------------------------------------------------
def scripted(monkeypatch, replies):
    """Replace generation by a rule on the prompt; record every prompt."""
    prompts = []

    def fake_lines(lm, batch, max_tokens, batch_size, session=None):
        prompts.extend(batch)
        return [(replies(p), 3) for p in batch]

    monkeypatch.setattr(solve_module, "lines", fake_lines)
    return prompts


def test_socratic_loop_stops_at_the_stop_question(monkeypatch):
    def replies(prompt: str) -> str:
        if prompt.endswith("Q:"):
            return f" {STOP}" if prompt.count("\nQ:") > 2 else " How many?"
        return " #### 10" if prompt.rstrip("A:").endswith(STOP + "\n") else " 3 * 4 = 13"

    prompts = scripted(monkeypatch, replies)
    (t,) = solve([P], "socratic", Lm.__new__(Lm), Lm.__new__(Lm), max_steps=8)
    assert t.answer == 10 and t.calls == 6 and t.tokens == 18
    assert "A: 3 * 4 = 12\n" in t.text, "the calculator fixes every generated line"
    assert prompts[-1].endswith(f"Q: {STOP}\nA:")


def test_loops_stop_at_the_step_limit(monkeypatch):
    scripted(monkeypatch, lambda p: " How many?" if p.endswith("Q:") else " 1 + 1 = 2")
    (t,) = solve([P], "socratic", Lm.__new__(Lm), max_steps=3)
    assert t.calls == 6 and t.answer is None and t.text.count("Q:") == 3
    scripted(monkeypatch, lambda p: "1 + 1 = 2")
    (t,) = solve([P], "cot", Lm.__new__(Lm), max_steps=3)
    assert t.calls == 4 and t.answer is None  # 3 steps and the final line's place
    scripted(monkeypatch, lambda p: "#### 10")
    (t,) = solve([P], "answer", Lm.__new__(Lm))
    assert t.calls == 1 and t.answer == 10


def test_batched_lines_stop_at_each_rows_newline(tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny_llama(tmp_path / "m")
    lm = Lm(AutoModelForCausalLM.from_pretrained(path), char_tokenizer())
    prompts = ["Problem: a\nQ:", "Problem: a much longer problem text\nQ:", "x"]
    got = lines(lm, prompts, max_tokens=12, batch_size=2)
    assert lm.tok.padding_side == "left" and len(got) == 3
    for (line, n), prompt in zip(got, prompts):
        assert "\n" not in line and 1 <= n <= 12
        # the same line as an unbatched, unpadded greedy run of that prompt alone
        assert lines(lm, [prompt], max_tokens=12, batch_size=1)[0] == (line, n)
    # an untrained model never asks the stop question: the loop ends at the step limit, for every row
    traces = solve([P, Problem("q", "How many?", 1.0)], "socratic", lm, lm, max_steps=2, max_tokens=5)
    assert [(t.calls, t.done, t.text.count("Q:"), t.text.count("A:")) for t in traces] == [(4, True, 2, 2)] * 2


def test_cached_decoding_reads_the_same_lines_and_fewer_tokens():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                      eos_token_id=1, pad_token_id=1, bos_token_id=None, initializer_range=0.5)  # fmt: skip
    lm = Lm(LlamaForCausalLM(cfg).eval(), tok)  # large weights: varied lines, so a wrong position shows
    read = []
    lm.model.model.embed_tokens.register_forward_hook(lambda m, args, out: read.append(args[0].numel()))
    problems = [Problem(str(i), f"Ann has {i} apples{'!' * (i % 5)}. How many?", 1.0) for i in range(7)]
    for variant in ("socratic", "cot"):
        read.clear()
        cached = solve(problems, variant, lm, lm, max_steps=3, max_tokens=8, batch_size=3, cache=True)
        n_cached = sum(read)
        read.clear()
        fresh = solve(problems, variant, lm, lm, max_steps=3, max_tokens=8, batch_size=3, cache=False)
        assert len({t.text for t in fresh}) > 3, "the model writes different lines for different problems"
        assert [(t.text, t.tokens) for t in cached] == [(t.text, t.tokens) for t in fresh]
        assert n_cached < 0.6 * sum(read), "the cached loop does not read the problem again at every call"


# --- end to end ---------------------------------------------------------------------------------
class Teacher(FakeServer):
    """Decomposes by the rule 'one sub-question per step'; some problems get tricky replies."""

    def answer(self, body: dict) -> str:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system.startswith("Solve"):
            return "I add them.\n#### 7" if "seven" in user else "#### 0"
        n = int(re.search(r"Solution \((\d+) steps\)", user).group(1))
        if "prose" in user:
            return "Here you go:\n" + "\n".join(f"Q{i}: What is step {i}?" for i in range(1, n + 1))
        if "short" in user:
            n -= 1
        return "\n".join(f"Q{i}: What is step {i}?" for i in range(1, n + 1))


def problems_file(path: Path, n: int = 30) -> Path:
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        tag = ["", "", "", "prose", "short", "seven"][i % 6]
        rows.append(
            {
                "question": f"Tom has {a} pens and gets {b} more {tag}. How many pens?",
                "answer": a + b,
                "solution": f"Tom has {a} * 1 = {a} pens.\nHe gets {a} + {b} = {a + b} pens.\n#### {a + b}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_args(tmp_path: Path, url: str) -> list[str]:
    model = save_tiny_llama(tmp_path / "student")
    return ["data.source=jsonl", f"data.path={problems_file(tmp_path / 'p.jsonl')}", "data.val=2", "data.test=6",
            f"teacher={{kind: server, model: fake-teacher, url: '{url}', concurrency: 2}}",
            f"students.model.path={model}", "students.train.epochs=1", "students.train.batch_size=4",
            "students.train.progress=false", "inference.max_steps=3", "inference.max_tokens=6",
            f"run.output_dir={tmp_path / 'runs'}", "run.run_name=r"]  # fmt: skip


def students_reply(prompt: str) -> str:
    """Scripted students: right when Tom starts with an odd number of pens; every first answer holds two equations
    with wrong results (the calculator must mend both); the Socratic pair asks 2 questions."""
    a, b = map(int, re.search(r"Tom has (\d+) pens and gets (\d+)", prompt).groups())
    final = f"#### {a + b if a % 2 else 0}"
    if prompt.endswith("Q:"):
        return f" {STOP}" if prompt.count("\nA:") == 1 else " How many in all?"
    if prompt.endswith("A:"):
        return " 2 + 3 = 6 and 6 * 2 = 11" if prompt.count("\nA:") == 1 else f" {final}"
    return final


def test_end_to_end_through_the_cli(tmp_path, capsys, monkeypatch):
    students = scripted(monkeypatch, students_reply)  # the students are trained for real; their lines are scripted
    with Teacher() as server:
        assert main(["socratic", *tiny_args(tmp_path, server.url)]) == 0
        asked = len(server.requests)
    run = tmp_path / "runs" / "r"
    result = json.loads((run / "results.json").read_text())
    models = [r["model"] for r in result["rows"]]
    assert models == ["teacher (server:fake-teacher)", "answer-only", "chain of thought", "Socratic QG + QA", "unified"]
    (ann,) = result["tables"]["annotation"]
    # 22 training problems: a sixth get prose around the questions, a sixth one question too few
    problems = [q for q, _ in _split(tmp_path, "train")]
    assert ann["problems"] == 22 and ann["kept"] == 22 - ann["unparsed"] - ann["step count"]
    assert ann["unparsed"] == sum("prose" in q for q in problems) > 0
    assert ann["step count"] == sum("short" in q for q in problems) > 0
    test = _split(tmp_path, "test")
    teacher = result["rows"][0]
    assert teacher["accuracy"] == pytest.approx(sum("seven" in q and a == 7 for q, a in test) / 6)
    odd = sum(int(re.search(r"Tom has (\d+)", q).group(1)) % 2 for q, _ in test) / 6
    assert 0 < odd < 1
    # tokens: 3 a line; answer-only and CoT write one line, the Socratic pair Q, A, Q (the stop question), A
    for row, tokens in zip(result["rows"][1:], [3, 3, 12, 12]):
        assert row["trained_on"] == ann["kept"] and row["tokens_per_problem"] == tokens, row
        assert row["accuracy"] == pytest.approx(round(odd, 4)), row
    solved = json.loads((run / "solutions" / "socratic.json").read_text())["traces"]
    assert all("A: 2 + 3 = 5 and 6 * 2 = 12\n" in t["text"] for t in solved), "the recipe applies the calculator"
    for role in ["answer", "cot", "qg", "qa", "unified"]:
        assert (run / "students" / role / "config.json").is_file()
    assert "## annotation" in (run / "report.md").read_text().lower()
    # a rerun of the finished run asks the teacher nothing new and trains nothing again
    with Teacher() as server:
        assert main(["socratic", "--resume", str(run)]) == 0
        assert len(server.requests) == 0 and asked > 0
    capsys.readouterr()
    # ask solves with the run's inference settings: a student that never stops asks inference.max_steps=3 times
    students.clear()
    monkeypatch.setattr(solve_module, "lines", lambda lm, batch, *a: [(" How many?" if p.endswith("Q:") else
                        " 1 + 1 = 3", 1) for p in students.extend(batch) or batch])  # fmt: skip
    assert main(["socratic", "ask", "Tom has 2 pens and gets 3 more. How many pens?", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Problem: Tom has 2 pens") and "final answer: none" in out
    assert out.count("Q: How many?") == 3 and out.count("A: 1 + 1 = 2") == 3


def _split(tmp_path, name):
    split = load_problems(ProblemData(source="jsonl", path=str(tmp_path / "p.jsonl"), val=2, test=6))
    return [(p.question, p.answer) for p in split[name]]


@pytest.mark.slow
def test_a_killed_annotation_loses_nothing_and_repeats_nothing(tmp_path):
    store = tmp_path / "teacher.sqlite"
    with Teacher(delay_s=0.05) as server:
        args = [*tiny_args(tmp_path, server.url), f"store={store}", "data.val=0", "data.test=2"]
        kill_once_stored([*DISTILL, "socratic", *args], store, 8)
        before = {r["prompt_hash"] for r in LabelStore(store).responses()}
        assert 8 <= len(before) < 28
        asked_before = len(server.requests)
        done = subprocess.run([*DISTILL, "socratic", "--resume", str(tmp_path / "runs" / "r")], capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        again = [b for b in server.requests[asked_before:] if b["messages"][0]["content"].startswith("You turn")]
    after = list(LabelStore(store).responses())
    assert len(after) == 28 + 2  # 28 decompositions, 2 test problems solved by the teacher
    assert len(again) == 28 - len(before), "an annotation saved before the kill was asked for again"
    split = load_problems(ProblemData(source="jsonl", path=str(tmp_path / "p.jsonl"), val=0, test=2))
    question = {p.id: p.question for p in split["train"]}
    done_before = {question[r["item"]] for r in after if r["prompt_hash"] in before and r["item"] in question}
    reasked = {b["messages"][-1]["content"].split("\n")[0].removeprefix("Problem: ") for b in again}
    assert len(done_before) == len(before) and not done_before & reasked


# --- user errors: one line, non-zero exit, nothing half-written ----------------------------------
def test_user_errors(tmp_path, capsys):
    base = tiny_args(tmp_path, "http://127.0.0.1:9")  # nothing listens on port 9
    capsys.readouterr()
    assert main(["socratic", *base]) == 2
    err = capsys.readouterr().err.strip()
    assert "unreachable" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists(), "an unreachable teacher leaves no run directory"
    bad = tmp_path / "bad.jsonl"
    for line, message in [('{"question": "How many?"}', "has no field 'answer'"),
                          ('{"question": "How many?", "answer": "seven"}', "'seven' is not a number"),
                          ('{"answer": 3}', "has no field 'question'"), ("not json", "is not JSON")]:  # fmt: skip
        bad.write_text('{"question": "Two?", "answer": 2}\n' + line + "\n")
        assert main(["socratic", *base, f"data.path={bad}"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "line 2" in err and len(err.splitlines()) == 1, err
    assert main(["socratic", *base, "data.val=0", "data.evaluate_on=validation"]) == 2
    assert "needs validation problems" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DistillError, match="does not exist"):
        load_problems(ProblemData(source="jsonl", path=str(tmp_path / "none.jsonl")))
    assert main(["socratic", "ask", "How many?"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--run" in err and len(err.splitlines()) == 1, err
    assert main(["socratic", "ask", "How many?", "--run", str(tmp_path)]) == 2
    assert "no trained qg student" in capsys.readouterr().err
    assert main(["socratic", "--help"]) == 0 and "distill socratic ask" in capsys.readouterr().out


def test_target_lm_is_cross_entropy_on_the_target_tokens_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.models.llm import TargetLM

    model = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "m"))
    d = Decomposition(Problem("t", "2 and 3?", 5.0), (("Sum?", "2+3=5"),))
    short = Decomposition(Problem("s", "1?", 1.0), (("One?", "1=1"),))
    batch = encode(char_tokenizer(), [d, short], "unified", 512)
    loss, terms = TargetLM(model)(batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and terms["ce"] == loss.detach()


class Rambler(FakeServer):
    """A teacher that never writes a parseable decomposition."""

    def answer(self, body: dict) -> str:
        return "Sure! Let me think about this problem step by step."


def test_no_kept_decomposition_is_one_line_and_leaves_no_run(tmp_path, capsys):
    with Rambler() as server:
        args = tiny_args(tmp_path, server.url)
        capsys.readouterr()
        assert main(["socratic", *args, "teacher_accuracy=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the annotation's progress bar
    store = tmp_path / "runs" / "r" / "teacher.sqlite"
    assert err == f"distill: error: no decomposition was kept (22 rejected: unparsed: 22); see the teacher's " \
                  f"replies in {store}"  # fmt: skip
    assert LabelStore(store).count() == 22, "the teacher's replies are kept"


def test_the_benchmarks_choice_reads_only_the_validation_split(monkeypatch):
    from conftest import load_benchmark

    bench = load_benchmark("socratic_arith")
    # validation prefers lr 3e-4 then a second epoch; the test split would prefer lr 1e-4 at one epoch
    scores = {("validation", 1e-4, 1): 0.50, ("validation", 3e-4, 1): 0.60, ("validation", 3e-4, 2): 0.70}
    calls = []

    def fake_run(variant, lr, epochs, split, seed, extra=(), tag=""):
        calls.append(split)
        return {"lr": lr, "epochs": epochs, "accuracy": scores.get((split, lr, epochs), 1.0)}

    monkeypatch.setattr(bench, "run_one", fake_run)
    chosen, tried = bench.select("cot", lambda: None)
    assert calls == ["validation"] * 3 and (chosen["lr"], chosen["epochs"]) == (3e-4, 2)
    # the runs it asks for are scored on the validation problems, not the test ones
    over = bench.overrides("cot", 3e-4, 1, "validation", 0, "x")
    assert 'evaluate_on: "validation"' in over[0]


def test_the_benchmarks_claims_pair_problems_and_read_a_lower_is_better_score():
    from conftest import load_benchmark

    claims = load_benchmark("socratic_arith").claims
    test = [{"name": f"{v}-s{s}", "variant": v, "seed": s} for v in ("a", "b") for s in (0, 1)]
    # a is right on the first 30 of 40 problems, b on the first 20: +25 points, every resample above 0
    runs = {f"a-s{s}": {"correct": "1" * 30 + "0" * 10, "nll": [0.1] * 40} for s in (0, 1)}
    runs |= {f"b-s{s}": {"correct": "1" * 20 + "0" * 20, "nll": [0.3] * 39 + [0.1]} for s in (0, 1)}
    (acc,) = claims(test, runs, [("a", "b", "a beats b")])
    assert (acc["diff_pts"], acc["seeds"], acc["problems"], acc["verdict"]) == (25.0, 2, 40, "held")
    lower = lambda r: [-x for x in r["nll"]]  # noqa: E731
    (nll,) = claims(test, runs, [("a", "b", "a beats b")], lower, "nats")
    assert nll["diff_nats"] == pytest.approx(0.2 * 39 / 40) and nll["verdict"] == "held"
    (back,) = claims(test, runs, [("b", "a", "b beats a")], lower, "nats")
    assert back["diff_nats"] == pytest.approx(-0.195) and back["verdict"] == "did not hold (lower)"
