"""Weak labelling: strict parsing, task files, aggregation by hand, the durable store (with a real
kill), the OpenAI-compatible client against a local HTTP server, and the labelling recipe's errors."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time

import pytest

from distill.cli import main
from distill.data.labeled_text import Item
from distill.errors import DistillError
from distill.labeling import coverage_precision, load_task, scores, vote
from distill.labeling.clients import Request, ServerClient, ServerTeacher
from distill.labeling.lexicon import polarity
from distill.labeling.pipeline import Sampling, label, request_seed
from distill.labeling.stages import resolve_task
from distill.labeling.store import LabelStore, Response
from fake_openai import FakeServer, kill_once_stored
from test_cli import DISTILL, ENV

TASK = resolve_task("movie_sentiment")


# --- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Answer: positive", "positive"),
        ("ANSWER:NEGATIVE.", "negative"),
        ("answer - Positive!", "positive"),
        ("The critic hated it.\nAnswer: negative", "negative"),
        ("It sounds positive at first.\nAnswer: negative", "negative"),  # the last Answer: line decides
        ("Answer: positive\nAnswer: negative", "negative"),
        ("Answer: fresh", "positive"),  # an alias
        ("negative", "negative"),  # no marker: the whole reply, one label
        ("positive and negative", None),  # several labels: unparseable, not guessed
        ("Answer: positive or negative", None),
        ("Answer: neutral", None),  # not a label of this task
        ("positively charming", None),  # whole words only
        ("Answer: non-negative", None),
        ("", None),
    ],
)
def test_parsing_is_strict(answer, expected):
    assert TASK.parse(answer) == expected


def test_prompts_carry_instruction_exemplars_and_mode():
    direct, cot = TASK.messages("Great fun.", "direct"), TASK.messages("Great fun.", "cot")
    assert direct[0]["role"] == "system" and "positive, negative" in direct[0]["content"]
    assert len(direct) == 2 + 2 * len(TASK.exemplars) and direct[-1] == {
        "role": "user",
        "content": "Review: Great fun.",
    }
    assert direct[2]["content"] == "Answer: positive"  # the first exemplar's answer, no rationale
    assert cot[2]["content"].startswith("The critic calls it") and cot[2]["content"].endswith("Answer: positive")
    assert "step by step" in cot[0]["content"] and "step by step" not in direct[0]["content"]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "does not exist"),
        ("name: [unclosed", "is not valid YAML"),
        ("- a list", "must hold a mapping"),
        ("name: t\ninstruction: i\nlabels: [{name: a}]", "List should have at least 2 items"),
        ("name: t\ninstruction: i\nlabels: [{name: a}, {name: b, aliases: [A]}]", "'A' names both 'a' and 'b'"),
        (
            "name: t\ninstruction: i\nlabels: [{name: a}, {name: b}]\nexemplars: [{text: x, label: c}]",
            "exemplar label 'c'",
        ),  # noqa: E501
        ("name: t\ninstruction: i\nlabels: [{name: a}, {name: b, colour: red}]", "unknown field 'labels.1.colour'"),
    ],
)
def test_bad_task_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "task.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DistillError, match="task file") as e:
        load_task(path)
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


# --- aggregation, by hand ------------------------------------------------------------------------
def test_vote_by_hand():
    v = vote(["a", "a", "b", None], {"a": 1.0, "b": -1.0})
    assert (v.label, v.agreement, v.parsed, v.samples) == ("a", 0.5, 3, 4)
    assert v.soft == pytest.approx((1 + 1 - 1) / 3)
    tie = vote(["a", "b", "a", "b"], {"a": 1.0, "b": -1.0})  # no majority label; the soft score is halfway
    assert (tie.label, tie.agreement, tie.soft) == (None, 0.5, 0.0)
    none = vote([None, None], {"a": 1.0})
    assert (none.label, none.agreement, none.soft, none.parsed) == (None, 0.0, None, 0)


def test_coverage_precision_and_scores_by_hand():
    vals = {"a": 1.0, "b": -1.0}
    votes = [
        vote(["a"] * 4, vals),
        vote(["a", "a", "a", "b"], vals),
        vote(["b", "b", "a", "a"], vals),
        vote(["b"] * 4, vals),
    ]
    gold = ["a", "b", "a", "b"]
    rows = coverage_precision(votes, gold, [0.5, 0.75, 1.0])
    # 0.5: the tie is dropped -> 3 kept, 2 right; 0.75: same 3; 1.0: two unanimous, both right
    assert [(r["kept"], r["coverage"], r["precision"]) for r in rows] == [
        (3, 0.75, 2 / 3),
        (3, 0.75, 2 / 3),
        (2, 0.5, 1.0),
    ]
    s = scores(["a", "a", None, "b"], ["a", "b", "a", "b"], ["a", "b"])
    # a: tp 1, fp 1, fn 1 -> 0.5; b: tp 1, fp 0, fn 1 -> 2/3
    assert s["accuracy"] == 0.5 and s["f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_lexicon_polarity_by_hand():
    pos, neg = frozenset({"good", "great"}), frozenset({"bad"})
    assert polarity("Good, great... and bad!", pos, neg) == pytest.approx(1 / 3, abs=1e-5)
    assert polarity("nothing here", pos, neg) == 0.0


# --- the store -----------------------------------------------------------------------------------
def test_store_saves_skips_and_exports(tmp_path):
    store = LabelStore(tmp_path / "s.sqlite")
    r = Response("t", "h1", 0, "item-1", "cot", "Answer: positive", "positive", 0.5, 10, 3, [{"token": "A"}])
    store.put(r)
    store.put(Response("t", "h1", 0, "item-1", "cot", "changed", None))  # already answered: kept as it was
    store.put(Response("t", "h1", 1, "item-1", "cot", "Answer: negative", "negative"))
    assert store.count() == 2
    assert store.done("t", [("h1", 0), ("h1", 1), ("h1", 2), ("h2", 0)]) == {("h1", 0), ("h1", 1)}
    assert store.done("other", [("h1", 0)]) == set()
    rows = list(store.responses("t"))
    assert rows[0]["raw"] == "Answer: positive" and rows[0]["logprobs"] == [{"token": "A"}]
    out = [json.loads(line) for line in store.export(tmp_path / "r.jsonl").read_text().splitlines()]
    assert [o["label"] for o in out] == ["positive", "negative"] and out[0]["latency_s"] == 0.5
    assert sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(DistillError, match="choose jsonl, parquet or datasets"):
        store.export(tmp_path / "r.x", "xml")


def items(n: int) -> list[Item]:
    return [Item(f"i{k}", f"review {k} is {'good' if k % 2 else 'bad'}", "positive" if k % 2 else "negative")
            for k in range(n)]  # fmt: skip


def test_labelling_skips_what_the_store_holds(tmp_path):
    sampling = Sampling(samples=3)
    with FakeServer() as server:
        spec = ServerTeacher(model="fake-teacher", url=server.url)
        store = LabelStore(tmp_path / "s.sqlite")
        first = label(store, ServerClient(spec), spec.name, TASK, items(4), sampling)
        assert first.new == 12 and len(server.requests) == 12
        again = label(store, ServerClient(spec), spec.name, TASK, items(6), sampling)
        assert again.new == 6 and len(server.requests) == 18  # only the two new items were asked
    assert again.labels["i1"] == ["positive"] * 3 and again.labels["i0"] == ["negative"] * 3
    seeds = [b["seed"] for b in server.requests]
    assert len(set(seeds)) == 18 and all(b["temperature"] == 0.5 for b in server.requests)


# --- the OpenAI-compatible client -----------------------------------------------------------------
def request(k: int = 0) -> Request:
    return Request("h", k, TASK.messages("good", "direct"), 0.0, 16, k)


def test_client_retries_with_backoff_then_answers():
    with FakeServer(fail_first=2) as server:
        gen = ServerClient(ServerTeacher(model="fake-teacher", url=server.url)).one(request())
    assert gen.text.endswith("Answer: positive") and gen.completion_tokens == 12 and len(server.requests) == 3


def test_client_gives_up_after_its_retries():
    with FakeServer(fail_first=10) as server:
        spec = ServerTeacher(model="fake-teacher", url=server.url, retries=1)
        with pytest.raises(DistillError, match="answered 500"):
            ServerClient(spec).one(request())
    assert len(server.requests) == 2


def test_a_trickled_reply_times_out_at_the_deadline_and_is_retried():
    """A server that sends its reply a byte at a time never trips the HTTP client's read timeout; each attempt
    still ends after timeout_s, and the give-up line says it timed out."""
    with FakeServer(trickle_s=0.2) as server:
        spec = ServerTeacher(model="fake-teacher", url=server.url, retries=1, timeout_s=1)
        t0 = time.perf_counter()
        with pytest.raises(DistillError, match=r"timed out 2 times \(no whole reply within teacher.timeout_s = 1 s\)"):
            ServerClient(spec).one(request())
        assert time.perf_counter() - t0 < 5  # 2 attempts of 1 s and a 0.5 s backoff
    assert len(server.requests) == 2


def test_a_long_retry_after_is_named_when_the_client_gives_up():
    with FakeServer(fail_first=10, fail_code=429, retry_after=3600) as server:
        spec = ServerTeacher(model="fake-teacher", url=server.url, retries=1)
        with pytest.raises(DistillError, match=r"answered 429: .*\(it asked to retry after 3600 s"):
            ServerClient(spec).one(request())


def test_malformed_replies_are_retried_then_named():
    with FakeServer(garbage_first=2) as server:
        gen = ServerClient(ServerTeacher(model="fake-teacher", url=server.url, retries=2)).one(request())
    assert gen.text.endswith("Answer: positive") and len(server.requests) == 3
    with FakeServer(garbage_first=10) as server:
        spec = ServerTeacher(model="fake-teacher", url=server.url, retries=1)
        with pytest.raises(DistillError, match="sent a malformed reply 2 times \\(a str body, not a completion"):
            ServerClient(spec).one(request())
    assert len(server.requests) == 2


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrent_requests_in_flight(concurrency):
    with FakeServer(delay_s=0.05) as server:
        spec = ServerTeacher(model="fake-teacher", url=server.url, concurrency=concurrency)
        answers = list(ServerClient(spec).generate([request(k) for k in range(8)]))
    assert len(answers) == 8 and sorted(r.sample for r, _ in answers) == list(range(8))
    assert server.max_in_flight == concurrency


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_and_unknown_model_are_one_line(tmp_path, capsys):
    data = tmp_path / "in.txt"
    data.write_text("a good film\n")
    common = ["label", "data.source=files", f"data.paths=[{data}]", f"run.output_dir={tmp_path / 'runs'}"]
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main([*common, f"teacher={{kind: server, model: m, url: '{url}'}}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"teacher server {url} is unreachable" in err and len(err.splitlines()) == 1
    with FakeServer() as server:
        assert main([*common, f"teacher={{kind: server, model: gpt-9, url: '{server.url}'}}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no model 'gpt-9'; it serves ['fake-teacher']" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists(), "nothing may start before the teacher answers"


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("", [], "holds no texts"),
        ('{"body": "x"}\n', [], "line 1 has no field 'text' (it has ['body'])"),
        ('{"text": "x"\n', [], "line 1 is not JSON"),
        ('{"text": "x", "label": "meh"}\n', [], "gold labels ['meh'] are not labels of task"),
        ('{"text": "x"}\n', ["task=/nonexistent.yaml"], "task file /nonexistent.yaml does not exist"),
        ('{"text": "x"}\n', ["sampling.samples=4", "sampling.temperature=0"], "samples > 1 needs temperature > 0"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, capsys, content, extra, message):
    data = tmp_path / "in.jsonl"
    data.write_text(content)
    with FakeServer() as server:
        args = ["label", "data.source=files", f"data.paths=[{data}]", f"run.output_dir={tmp_path / 'runs'}",
                f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}", *extra]  # fmt: skip
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_label_recipe_end_to_end(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": i.text, "label": i.gold}) + "\n" for i in items(10)))
    with FakeServer() as server:
        args = ["label", "data.source=files", f"data.paths=[{data}]", f"run.output_dir={tmp_path}",
                "run.run_name=r", f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}",
                "sampling.samples=2"]  # fmt: skip
        assert main(args) == 0
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    pool, test = result["rows"]
    assert (pool["texts"], test["texts"], pool["answers"]) == (8, 2, 16)
    assert pool["teacher_accuracy"] == 1.0 and pool["parsed"] == 1.0
    exported = (tmp_path / "r" / "responses.jsonl").read_text().splitlines()
    assert len(exported) == 20 and json.loads(exported[0])["teacher"] == "server:fake-teacher"
    assert "## Coverage precision" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("moved", [False, True])
def test_a_killed_labelling_run_loses_nothing_and_repeats_nothing(moved, tmp_path):
    """Killed mid-labelling, then resumed: against the same server, or (moved) against one restarted on another
    port, with the new URL, timeout and concurrency written into config.yaml (where the teacher is may change;
    what it is may not)."""
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": i.text}) + "\n" for i in items(30)))
    store = tmp_path / "labels.sqlite"
    with FakeServer(delay_s=0.02) as first, FakeServer(delay_s=0.02) as second:
        args = ["label", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0", f"store={store}",
                f"run.output_dir={tmp_path}", "run.run_name=k", "sampling.samples=4",
                f"teacher={{kind: server, model: fake-teacher, url: '{first.url}', concurrency: 2}}"]  # fmt: skip
        kill_once_stored([*DISTILL, *args], store, 40, env=ENV)
        before = {(r["prompt_hash"], r["sample"]) for r in LabelStore(store).responses()}
        assert 40 <= len(before) < 120
        server = second if moved else first
        if moved:
            config = tmp_path / "k" / "config.yaml"
            assert all(f in config.read_text() for f in (first.url, "timeout_s: 120.0", "concurrency: 2"))
            edited = config.read_text().replace(first.url, second.url).replace("timeout_s: 120.0", "timeout_s: 60.0")
            config.write_text(edited.replace("concurrency: 2", "concurrency: 3"))
        asked_before = len(server.requests)
        done = subprocess.run([*DISTILL, "label", "--resume", str(tmp_path / "k")], env=ENV, capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        resumed_seeds = {b["seed"] for b in server.requests[asked_before:]}
        assert server.max_in_flight == (3 if moved else 2)
    after = list(LabelStore(store).responses())
    assert len(after) == 120 and {(r["prompt_hash"], r["sample"]) for r in after} >= before
    answered_seeds = {request_seed(h, k, 0) for h, k in before}
    assert not resumed_seeds & answered_seeds, "an answer saved before the kill was asked for again"
    assert len(server.requests) - asked_before == 120 - len(before)
    if moved:  # the teacher itself may not change: the answers in the store are its
        config.write_text(config.read_text().replace("model: fake-teacher", "model: other-teacher"))
        refused = subprocess.run([*DISTILL, "label", "--resume", str(tmp_path / "k")], env=ENV, capture_output=True,
                                 text=True)  # fmt: skip
        assert refused.returncode == 2 and "teacher.model: 'fake-teacher' -> 'other-teacher'" in refused.stderr


def test_parquet_export(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    store = LabelStore(tmp_path / "s.sqlite")
    store.put(Response("t", "h", 0, "i", "cot", "Answer: positive", "positive", 0.1, 5, 2, None))
    table = pq.read_table(store.export(tmp_path / "r.parquet", "parquet"))
    assert table.num_rows == 1 and table.column("label").to_pylist() == ["positive"]
