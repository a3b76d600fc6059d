"""Teacher backends that run here (a local transformers model, a real llama.cpp server) and the
weaklabel pipeline end to end: label -> aggregate -> train students -> evaluate."""

from __future__ import annotations

import importlib.util
import json
import math
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from distill.cli import main
from distill.labeling.clients import LocalClient, LocalTeacher, Request
from distill.labeling.stages import resolve_task
from distill.labeling.store import LabelStore
from fake_openai import FakeServer
from llm_fixtures import char_tokenizer, save_tiny_llama

TASK = resolve_task("movie_sentiment")


def save_tiny_bert(path: Path) -> Path:
    torch.manual_seed(0)
    tok = char_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)  # fmt: skip
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def requests(texts: list[str], temperature: float = 0.0, seed: int = 7) -> list[Request]:
    return [Request(f"h{i}", 0, [{"role": "user", "content": t}], temperature, 8, seed) for i, t in enumerate(texts)]


def test_local_batched_generation_equals_one_at_a_time(tmp_path):
    """Left padding: a short prompt batched with a long one continues exactly as it does alone."""
    teacher = LocalClient(LocalTeacher(path=str(save_tiny_llama(tmp_path / "llm")), batch_size=3))
    texts = ["hi", "a much longer prompt about films", "mid length one"]
    batched = [g.text for _, g in teacher.generate(requests(texts))]
    alone = [teacher.batch([r])[0].text for r in requests(texts)]
    assert batched == alone and all(len(t) > 0 for t in batched)
    gens = teacher.batch(requests(texts))
    assert gens[1].prompt_tokens > gens[0].prompt_tokens and all(g.completion_tokens <= 8 for g in gens)


def test_local_sampling_is_seeded(tmp_path):
    teacher = LocalClient(LocalTeacher(path=str(save_tiny_llama(tmp_path / "llm")), batch_size=2))
    a = [g.text for _, g in teacher.generate(requests(["x", "y"], temperature=1.0))]
    b = [g.text for _, g in teacher.generate(requests(["x", "y"], temperature=1.0))]
    assert a == b
    others = [[g.text for _, g in teacher.generate(requests(["x", "y"], 1.0, seed))] for seed in (8, 9)]
    assert any(o != a for o in others), "another seed must sample something else (greedy would not)"


def test_local_samples_are_seeded_per_prompt_and_sample_not_per_batch(tmp_path):
    """The seed of each (prompt, sample) alone decides its answer: batched with others or alone, the same."""
    teacher = LocalClient(LocalTeacher(path=str(save_tiny_llama(tmp_path / "llm")), batch_size=4))
    reqs = [Request("h0", k, [{"role": "user", "content": "x"}], 1.0, 8, 100 + k) for k in range(4)]
    batched = [g.text for _, g in teacher.generate(reqs)]
    alone = [teacher.batch([r])[0].text for r in reqs]
    reordered = [g.text for _, g in teacher.generate(reqs[::-1])][::-1]
    assert batched == alone == reordered
    assert len(set(batched)) > 1, "the samples of one prompt differ from each other"


def test_label_with_a_local_teacher_through_the_cli(tmp_path, capsys):
    data = tmp_path / "in.txt"
    data.write_text("a good film\na bad film\nfine\n")
    args = ["label", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0", f"run.output_dir={tmp_path}",
            "run.run_name=l", f"teacher={{kind: local, path: '{save_tiny_llama(tmp_path / 'llm')}'}}",
            "sampling.samples=2", "sampling.max_tokens=6", "splits=[pool]"]  # fmt: skip
    assert main(args) == 0
    rows = list(LabelStore(tmp_path / "l" / "labels.sqlite").responses())
    assert len(rows) == 6 and all(r["teacher"].startswith("local:") for r in rows)
    # a random tiny model may draw end-of-text first: counted, as 0 tokens
    assert all(0 <= r["completion_tokens"] <= 6 for r in rows)  # sampling.max_tokens=6: no prompt tokens counted
    assert sum(r["completion_tokens"] for r in rows) > 0


def test_weaklabel_end_to_end(tmp_path, capsys):
    items = [{"text": f"{w} film number {k}", "label": "positive" if w == "good" else "negative"}
             for k in range(30) for w in ("good", "bad")]  # fmt: skip
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    with FakeServer() as server:
        args = ["weaklabel", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0.25",
                f"run.output_dir={tmp_path}", "run.run_name=w", "sampling.samples=3",
                f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}",
                f"student.encoder.path={save_tiny_bert(tmp_path / 'bert')}", "student.encoder.max_length=24",
                "student.objectives=[cls, reg]", "student.thresholds=[0.0, 1.0]", "student.train.epochs=4",
                "student.train.batch_size=8", "student.train.lr=0.003", "student.train.warmup_steps=0"]  # fmt: skip
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "| teacher (cot, K=3) |" in out and "| student-gold |" in out
    result = json.loads((tmp_path / "w" / "results.json").read_text())
    models = [r["model"] for r in result["rows"]]
    assert models == ["teacher (cot, K=3)", "student-cls-agree0", "student-cls-agree1", "student-reg-agree0",
                      "student-reg-agree1", "student-gold"]  # fmt: skip
    assert result["rows"][0]["accuracy"] == 1.0
    students = result["rows"][1:]
    assert all(r["trained_on"] == 45 for r in students)
    assert all(r["accuracy"] >= 0.9 for r in students), students  # 'good' vs 'bad' is learnable in 4 epochs
    for stage in ["student-cls-agree0", "student-reg-agree1", "student-gold"]:
        assert (tmp_path / "w" / stage / "model.safetensors").is_file()


def test_regression_keeps_tied_texts_at_their_halfway_score(tmp_path, capsys):
    # the fake teacher's two samples disagree on every 'split' text: a 1-1 tie, no majority label, soft score 0
    items = [{"text": f"{w} film {k}", "label": "positive" if w == "good" else "negative"}
             for k in range(10) for w in ("good", "bad", "split good", "split bad")]  # fmt: skip
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    with FakeServer() as server:
        args = ["weaklabel", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0.25",
                f"run.output_dir={tmp_path}", "run.run_name=w", "sampling.samples=2", "student.gold=false",
                f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}",
                f"student.encoder.path={save_tiny_bert(tmp_path / 'bert')}", "student.encoder.max_length=24",
                "student.objectives=[cls, reg]", "student.train.epochs=1", "student.train.batch_size=8",
                "student.train.progress=false"]  # fmt: skip
        assert main(args) == 0
    result = json.loads((tmp_path / "w" / "results.json").read_text())
    trained = {r["model"]: r["trained_on"] for r in result["rows"][1:]}
    pool = 30  # 40 texts, a quarter held out for the test
    assert trained["student-reg-agree0"] == pool, "every pool text has a soft score, ties included"
    assert trained["student-cls-agree0"] <= pool - 10, "a tie has no majority label"  # ~15 'split' texts


def test_splits_pool_labels_no_test_text_and_scores_the_teacher_on_the_pool(tmp_path, capsys):
    items = [{"text": f"{w} film {k}", "label": "positive" if w == "good" else "negative"}
             for k in range(8) for w in ("good", "bad")]  # fmt: skip
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    common = ["weaklabel", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0.25",
              f"run.output_dir={tmp_path}", "sampling.samples=2", "student.gold=false", "student.objectives=[reg]",
              f"student.encoder.path={save_tiny_bert(tmp_path / 'bert')}", "student.encoder.max_length=24",
              "student.train.epochs=1", "student.train.batch_size=8", "student.train.progress=false"]  # fmt: skip
    with FakeServer() as server:
        teacher = f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}"
        assert main([*common, teacher, "run.run_name=w", "splits=[pool]"]) == 0
        assert main([*common, teacher, "run.run_name=bad", "splits=[test]"]) == 2
    assert "splits must include pool" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    result = json.loads((tmp_path / "w" / "results.json").read_text())
    assert [r["model"] for r in result["rows"]] == ["teacher (cot, K=2), on the pool", "student-reg-agree0"]
    assert result["rows"][0]["accuracy"] == 1.0
    assert [r["split"] for r in result["tables"]["labelling"]] == ["pool"]
    assert len(list(LabelStore(tmp_path / "w" / "labels.sqlite").responses())) == 12 * 2  # 16 texts, 4 held out


@pytest.mark.bundled
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python[server] is installed by make test"
)  # noqa: E501
def test_against_a_real_llama_cpp_server(tmp_path, capsys):
    """The test set-up builds llama.cpp's server; it serves the bundled SmolLM2 GGUF on a free port."""
    from distill.labeling.llama_server import llama_cpp_server
    from distill.models.llm import resolve

    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "A triumph: funny, moving and beautifully acted.", "label": "positive"}\n'
                    '{"text": "Dull, shapeless and far too long.", "label": "negative"}\n')  # fmt: skip
    with llama_cpp_server(resolve("smollm2-135m"), "smollm2", tmp_path / "server.log") as url:
        models = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=5).read())
        assert [m["id"] for m in models["data"]] == ["smollm2"]
        args = ["label", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0",
                f"run.output_dir={tmp_path}", "run.run_name=s", "splits=[pool]", "sampling.samples=2",
                "sampling.max_tokens=48",
                f"teacher={{kind: server, model: smollm2, url: '{url}', concurrency: 2, logprobs: 2}}"]  # fmt: skip
        assert main(args) == 0
    rows = list(LabelStore(tmp_path / "s" / "labels.sqlite").responses())
    assert len(rows) == 4 and all(r["raw"] and r["completion_tokens"] > 0 for r in rows)
    assert sum(r["label"] is not None for r in rows) >= 1  # the answer format is followed at least once
    assert rows[0]["logprobs"], "llama.cpp offers logprobs: they are stored"


def test_weaklabel_needs_gold_test_labels_before_it_starts(tmp_path, capsys):
    data = tmp_path / "in.txt"
    data.write_text("a good film\na bad film\n")
    with FakeServer() as server:
        args = ["weaklabel", "data.source=files", f"data.paths=[{data}]", f"run.output_dir={tmp_path / 'runs'}",
                f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}"]  # fmt: skip
        assert main(args) == 2
    assert "the test texts need them" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


FAKE_LLAMA_SERVER = """#!{python}
import json, sys, http.server
args = sys.argv[1:]
open({argv!r}, "w").write(json.dumps(args))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"data": [{{"id": args[args.index("--alias") + 1]}}]}}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), H).serve_forever()
"""


def test_llama_server_binary_gets_parallel_slots_and_a_shared_kv_cache(tmp_path):
    """llama.cpp's own server is started with `parallel` slots of n_ctx tokens each, on the threads asked for;
    llama-cpp-python's server cannot take parallel slots, and a missing binary is one clear error."""
    import sys

    from distill.errors import DistillError
    from distill.labeling.llama_server import llama_cpp_server

    fake = tmp_path / "llama-server"
    fake.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable, argv=str(tmp_path / "argv.json")))
    fake.chmod(0o755)
    with llama_cpp_server("m.gguf", "teacher", tmp_path / "log", n_ctx=512, threads=2, binary=fake, parallel=8) as url:
        models = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=5).read())
    assert [m["id"] for m in models["data"]] == ["teacher"]
    argv = json.loads((tmp_path / "argv.json").read_text())
    flags = {a: b for a, b in zip(argv, argv[1:])}  # each flag -> the word after it
    assert flags["--model"] == "m.gguf" and flags["--parallel"] == "8" and flags["--ctx-size"] == str(8 * 512)
    assert flags["--threads"] == flags["--threads-batch"] == "2" and "--kv-unified" in argv
    with pytest.raises(DistillError, match="one request at a time"):
        with llama_cpp_server("m.gguf", "teacher", tmp_path / "log", parallel=8):
            pass
    with pytest.raises(DistillError, match="no llama-server executable"):
        with llama_cpp_server("m.gguf", "teacher", tmp_path / "log", binary=tmp_path / "nope", parallel=8):
            pass


def test_validation_texts_come_off_the_pools_end_unlabelled_and_score_every_epoch(tmp_path, capsys):
    from distill.data.labeled_text import TextItems, load_splits

    items = [{"text": f"{w} film number {k}", "label": "positive" if w == "good" else "negative"}
             for k in range(30) for w in ("good", "bad")]  # fmt: skip
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    cfg = TextItems(source="files", paths=[str(data)], test_fraction=0.25, val_size=10)
    splits = load_splits(cfg)
    plain = load_splits(cfg.model_copy(update={"val_size": 0, "train_limit": 35}))
    assert [len(s) for s in splits.values()] == [35, 10, 15] and splits["pool"] == plain["pool"]
    assert splits["test"] == plain["test"] and plain["val"] == []
    # the shuffle depends on the count only: the validation texts' gold labels flipped, the split stays the same,
    # and a student that learns the words reads the validation set all wrong and the test set right
    val = {int(i.id.rsplit("-", 1)[1]) for i in splits["val"]}
    flip = {"positive": "negative", "negative": "positive"}
    data.write_text("".join(json.dumps({**x, "label": flip[x["label"]]} if n in val else x) + "\n"
                            for n, x in enumerate(items)))  # fmt: skip
    with FakeServer() as server:
        args = ["weaklabel", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0.25",
                "data.val_size=10", f"run.output_dir={tmp_path}", "run.run_name=w", "sampling.samples=3",
                f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}", "splits=[pool]",
                f"student.encoder.path={save_tiny_bert(tmp_path / 'bert')}", "student.encoder.max_length=24",
                "student.objectives=[reg]", "student.gold=false", "student.train.epochs=4",
                "student.train.batch_size=8", "student.train.lr=0.003", "student.train.warmup_steps=0",
                "student.train.progress=false"]  # fmt: skip
        assert main(args) == 0
        too_many = [
            {"data.val_size=10": "data.val_size=46", "run.run_name=w": "run.run_name=x"}.get(a, a) for a in args
        ]
        assert main(too_many) == 2 and not (tmp_path / "x").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("leaves 0 of 45 texts for a pool of at least 1")
    (student,) = json.loads((tmp_path / "w" / "results.json").read_text())["rows"][1:]
    assert student["accuracy"] >= 0.9 and student["val_accuracy"] <= 0.1, student
    records = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    curve = [r["eval/val_accuracy"] for r in records if "eval/val_accuracy" in r]
    assert len(curve) == 4 and curve[-1] == student["val_accuracy"]
    assert len(list(LabelStore(tmp_path / "w" / "labels.sqlite").responses())) == 35 * 3  # no validation text asked


def test_the_students_benchmark_chooses_on_validation_and_decides_by_intervals():
    from conftest import load_benchmark

    bench = load_benchmark("weaklabel_students")
    # by validation: cls at 0.75 after 2 epochs (0.80; the tie at epoch 3 goes to fewer epochs); the test
    # accuracies (never read) would pick reg
    tried = [
        {"objective": "reg", "threshold": 0.0, "val_curve": [0.70, 0.75, 0.78], "accuracy": 0.95},
        {"objective": "cls", "threshold": 0.75, "val_curve": [0.60, 0.80, 0.80], "accuracy": 0.50},
        {"objective": "cls", "threshold": 1.0, "val_curve": [], "accuracy": None},  # too few texts kept to train
    ]
    assert bench.choose(tried) == {"objective": "cls", "threshold": 0.75, "epochs": 2, "val_accuracy": 0.80}

    def runs(v: str, accs: list[float], teacher_acc: float = 0.7) -> dict:
        return {f"{v}-s{s}": {"seed": s, "accuracy": a, "teacher_pool_accuracy": teacher_acc, "pool": 1000,
                              "test": 1000} for s, a in enumerate(accs)}  # fmt: skip

    every = runs("gold", [0.80, 0.81, 0.82]) | runs("smollm2", [0.75, 0.77, 0.76], 0.66)
    every |= runs("qwen0.5b", [0.785, 0.795, 0.815], 0.78)
    d = {"runs": every, "test": {v: [f"{v}-s{s}" for s in range(3)] for v in ("gold", "smollm2", "qwen0.5b")},
         "chosen": {"smollm2": {"val_accuracy": 0.74}, "qwen0.5b": {"val_accuracy": 0.79}}}  # fmt: skip
    # the best weak-label student is the one that reads the validation set better, not the test set
    d["chosen"]["smollm2"]["val_accuracy"] = 0.80
    assert bench.claims(d)["best_vs_gold"] | {"verdict": None} == {
        "teacher": "smollm2", "diffs": [-5.0, -4.0, -6.0], "mean": -5.0, "ci95": 2.48, "verdict": None,
        "within_2_points": "did not hold"}  # fmt: skip
    d["chosen"]["smollm2"]["val_accuracy"] = 0.74
    c = bench.claims(d)
    # qwen - gold per seed: -1.5, -1.5, -0.5 points: mean -1.17, sd 0.577, t(0.975, 2) = 4.303: +- 1.43
    assert c["best_vs_gold"]["teacher"] == "qwen0.5b" and c["best_vs_gold"]["diffs"] == [-1.5, -1.5, -0.5]
    assert c["best_vs_gold"]["ci95"] == 1.43 and c["best_vs_gold"]["within_2_points"] == "did not hold"
    # qwen - smollm2: +3.5, +2.5, +5.5: mean 3.83, sd 1.528: +- 3.79, above 0
    assert c["stronger_teacher"]["ci95"] == 3.79 and c["stronger_teacher"]["verdict"] == "held"
    # smollm2's student 76.0% against its teacher's 66.0%: var .76*.24/1000 + .0001/3 + .66*.34/1000
    half = 100 * 1.96 * math.sqrt(0.76 * 0.24 / 1000 + 0.0001 / 3 + 0.66 * 0.34 / 1000)
    assert c["smollm2_student_vs_teacher"]["mean"] == 10.0 and c["smollm2_student_vs_teacher"]["ci95"] == round(half, 2)
    assert c["smollm2_student_vs_teacher"]["verdict"] == "held"
    assert c["qwen0.5b_student_vs_teacher"]["verdict"] == "a tie (the interval holds 0)"  # 79.8 against 78.0
