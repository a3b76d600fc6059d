"""The teacher-signal cache: sparse KL, capture and its resume, the manifest's refusals, students from a cache,
and memory-mapped token shards."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import kill_when
from distill.cli import main
from distill.data.text import TextData, token_splits
from distill.errors import DistillError
from distill.kd import Distiller, Term
from distill.kd.cache import CacheConfig, TeacherCache, capture, describe, from_cache, open_or_capture, top_k
from distill.losses import kl_div, sparse_kl
from llm_fixtures import char_tokenizer, save_corpus, save_tiny_llama


# --- the loss ------------------------------------------------------------------------------
def test_sparse_kl_golden_value():
    # teacher (0.5, 0.3, 0.2), top-1 kept: grouped (0.5 | 0.5); uniform student grouped (1/3 | 2/3)
    lp = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    ids, top, rest = top_k(lp.view(1, 3), 1)
    assert ids.tolist() == [[0]] and math.isclose(rest.item(), math.log(0.5), rel_tol=1e-6)
    got = sparse_kl(torch.zeros(1, 3), ids, top, rest)
    expected = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))  # = 0.5 ln 1.125
    assert math.isclose(got.item(), expected, rel_tol=1e-5) and math.isclose(expected, 0.5 * math.log(1.125))


def test_sparse_kl_is_the_full_kl_when_k_is_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    t = 2 * torch.randn(2, 5, 11, generator=g)
    mask = torch.rand(2, 5, generator=g) > 0.3
    ids, top, rest = top_k(t, 11)
    assert torch.isinf(rest).all()
    full = kl_div(s, t, mask=mask)
    (g_full,) = torch.autograd.grad(full, s)
    for chunk in (None, 3):
        sparse = sparse_kl(s, ids, top, rest, mask=mask, chunk_size=chunk)
        (g_sparse,) = torch.autograd.grad(sparse, s)
        assert torch.allclose(sparse, full, atol=1e-6) and torch.allclose(g_sparse, g_full, atol=1e-6)
    # fewer tokens: a lower bound that tightens as k grows
    values = [sparse_kl(s, *top_k(t, k)).item() for k in (1, 3, 6, 11)]
    assert values == sorted(values) and values[-1] == pytest.approx(kl_div(s, t).item(), abs=1e-6)


def test_a_cache_serves_only_forward_kl_at_t1():
    kd = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": 8})
    (sparse,) = from_cache([kd])
    assert sparse.loss == "sparse_kl" and sparse.args == {"chunk_size": 8} and sparse.inputs[1] == "batch.topk_ids"
    hot = kd.model_copy(update={"args": {"temperature": 2.0}})
    rkl = Term(name="r", loss="reverse_kl", inputs=["student.logits", "teacher.logits"])
    for bad, message in [(hot, "holds T=1"), (rkl, "needs the live teacher")]:
        with pytest.raises(DistillError, match=message):
            from_cache([bad])


# --- capture and reading --------------------------------------------------------------------
@pytest.fixture
def corpus(tmp_path):
    teacher = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "teacher")).eval()
    data = TextData(source="files", paths=[str(save_corpus(tmp_path / "corpus.txt"))], seq_len=16)
    train, _ = token_splits(data, char_tokenizer())
    return teacher, train


def test_capture_stores_the_teachers_top_k(corpus, tmp_path):
    teacher, train = corpus
    manifest = describe(teacher, char_tokenizer(), train)
    capture(teacher, train, tmp_path / "c", manifest, CacheConfig(k=5, shard_rows=7, batch_size=3), progress=False)
    cache = TeacherCache(tmp_path / "c", manifest)
    assert len(cache) == len(train["input_ids"]) and len(cache.files) == math.ceil(len(cache) / 7)
    rows = torch.tensor([0, 8, len(cache) - 1])
    assert torch.equal(cache["input_ids"][rows], train["input_ids"][rows])
    assert torch.equal(cache["labels"][rows], train["labels"][rows])
    with torch.no_grad():
        lp = torch.log_softmax(teacher(input_ids=train["input_ids"][rows]).logits, -1)
    ids = cache["topk_ids"][rows]
    assert ids.shape == (3, 16, 5) and cache["topk_logprobs"][rows].dtype == torch.float16
    assert torch.equal(ids, lp.topk(5, -1).indices)
    assert torch.allclose(cache["topk_logprobs"][rows].float(), lp.gather(-1, ids), atol=1e-2)
    rest_mass = 1 - lp.gather(-1, ids).exp().sum(-1)
    assert torch.allclose(cache["rest_logprob"][rows].exp(), rest_mass, atol=1e-5)


def test_a_cache_of_another_teacher_tokenizer_or_corpus_is_refused(corpus, tmp_path):
    teacher, train = corpus
    manifest = describe(teacher, char_tokenizer(), train)
    capture(teacher, train, tmp_path / "c", manifest, CacheConfig(k=4, shard_rows=64), progress=False)
    other = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "t2", layers=2))
    vocab = char_tokenizer()
    vocab.add_tokens(["<extra>"])
    fewer = {k: v[:-1] for k, v in train.items()}
    for expected, what in [(describe(other, char_tokenizer(), train), "teacher"), (describe(teacher, vocab, train),
                           "tokenizer"), (describe(teacher, char_tokenizer(), fewer), "corpus")]:  # fmt: skip
        with pytest.raises(DistillError, match=f"captured with another {what} ") as e:
            TeacherCache(tmp_path / "c", expected)
        assert len(str(e.value).splitlines()) == 1
    with pytest.raises(DistillError, match="captured with another k"):  # finishing it with another k
        capture(teacher, train, tmp_path / "c", manifest, CacheConfig(k=8, shard_rows=64), progress=False)


def _captured(corpus, path: Path):
    from accelerate import Accelerator

    teacher, train = corpus
    cfg = CacheConfig(k=4, shard_rows=8)
    make = lambda: open_or_capture(path, teacher, char_tokenizer(), train, cfg, Accelerator(cpu=True))  # noqa: E731
    make()
    return make


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def _broken_json(path: Path) -> None:
    (path / "manifest.json").write_text('{"rows": 3')


def test_an_edited_or_broken_manifest_is_one_line(corpus, tmp_path):
    make = _captured(corpus, tmp_path / "c")
    rows = json.loads((tmp_path / "c" / "manifest.json").read_text())["rows"]
    cases = [(lambda p: _edit_manifest(p, rows=rows // 2), f"captured with another rows ({rows // 2} != {rows})"),
             (lambda p: _edit_manifest(p, k=8), "shard-00000.safetensors disagrees with the manifest (8 rows x 4 "
                                                "top-k, the manifest says 8 x 8); was manifest.json edited?"),
             (_broken_json, "manifest.json is damaged (JSONDecodeError")]  # fmt: skip
    for i, (edit, message) in enumerate(cases):
        path = tmp_path / f"e{i}"
        shutil.copytree(tmp_path / "c", path)
        edit(path)
        with pytest.raises(DistillError, match=re.escape(message)) as e:
            _captured(corpus, path)
        assert len(str(e.value).splitlines()) == 1
    assert make().n == rows


def test_a_damaged_shard_is_found_by_its_checksum_and_recomputed_alone(corpus, tmp_path):
    make = _captured(corpus, tmp_path / "c")
    shards = sorted((tmp_path / "c").glob("shard-*.safetensors"))
    whole = {p.name: p.read_bytes() for p in shards}
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    truncated, flipped = shards[1], shards[2]
    truncated.write_bytes(whole[truncated.name][:-50])
    data = bytearray(whole[flipped.name])
    data[-3] ^= 0xFF  # same size, one byte changed: only the checksum can tell
    flipped.write_bytes(bytes(data))
    with pytest.raises(DistillError, match=r"is not whole \(2 of \d+ shards missing or damaged; shard-00001"):
        TeacherCache(tmp_path / "c")
    cache = make()
    assert cache.captured["tokens"] == 2 * 8 * 16
    for p in shards:
        assert p.read_bytes() == whole[p.name], p.name
        assert (p.stat().st_mtime_ns == stamps[p.name]) == (p not in (truncated, flipped)), p.name


@pytest.mark.slow
def test_two_captures_into_one_cache_compute_each_shard_once(tmp_path):
    model, corpus_file = save_tiny_llama(tmp_path / "teacher"), save_corpus(tmp_path / "corpus.txt")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = lambda name: [sys.executable, "-m", "distill.cli", "capture", f"teacher.path={model}",  # noqa: E731
                        "data.source=files", f"data.paths=[{corpus_file}]", "data.seq_len=8", f"cache={tmp_path / 'c'}",
                        "capture.k=6", "capture.shard_rows=1", "capture.batch_size=1",
                        f"run.output_dir={tmp_path / 'runs'}", f"run.run_name={name}"]  # fmt: skip
    procs = [subprocess.Popen(cmd(n), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in "ab"]
    assert [p.wait(timeout=600) for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    made = [json.loads((tmp_path / "runs" / n / "results.json").read_text())["rows"][0] for n in "ab"]
    cache = TeacherCache(tmp_path / "c")
    assert made[0]["captured_now"] + made[1]["captured_now"] == len(cache) * 8  # no shard twice
    assert min(m["captured_now"] for m in made) > 0, "the two ran one after the other: nothing was tested"


@pytest.mark.slow
def test_capture_resumes_after_a_kill_without_losing_or_redoing_a_shard(tmp_path):
    model, corpus_file = save_tiny_llama(tmp_path / "teacher"), save_corpus(tmp_path / "corpus.txt")
    env = {**os.environ, "TQDM_DISABLE": "1"}

    def cmd(cache: str, name: str) -> list[str]:
        return [sys.executable, "-m", "distill.cli", "capture", f"teacher.path={model}", "data.source=files",
                f"data.paths=[{corpus_file}]", "data.seq_len=8", f"cache={tmp_path / cache}", "capture.k=6",
                "capture.shard_rows=1", "capture.batch_size=1", f"run.output_dir={tmp_path / 'runs'}",
                f"run.run_name={name}"]  # fmt: skip

    subprocess.run(cmd("straight", "a"), check=True, env=env, capture_output=True)
    shards = lambda d: sorted((tmp_path / d).glob("shard-*.safetensors"))  # noqa: E731
    kill_when(cmd("killed", "b"), env, lambda: len(shards("killed")) >= 5, "5 shards")
    before = {p.name: p.stat().st_mtime_ns for p in shards("killed")}
    assert 5 <= len(before) < len(shards("straight"))
    done = subprocess.run(cmd("killed", "c"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in shards("killed")}
    assert {k: after[k] for k in before} == before, "a shard stored before the kill was computed again"
    assert len(after) == len(shards("straight"))
    result = json.loads((tmp_path / "runs" / "c" / "results.json").read_text())["rows"][0]
    assert result["captured_now"] == (len(after) - len(before)) * 8
    a, b = TeacherCache(tmp_path / "straight"), TeacherCache(tmp_path / "killed")
    rows = list(range(len(a)))
    assert all(torch.equal(a.read(c, rows), b.read(c, rows)) for c in a.columns)


# --- students from a cache -------------------------------------------------------------------
def test_a_student_on_a_full_vocabulary_cache_sees_the_live_teachers_loss(corpus, tmp_path):
    teacher, train = corpus
    manifest = describe(teacher, char_tokenizer(), train)
    vocab = teacher.config.vocab_size
    capture(teacher, train, tmp_path / "c", manifest, CacheConfig(k=vocab, shard_rows=16), progress=False)
    cache = TeacherCache(tmp_path / "c", manifest)
    student = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "s", layers=1))
    kd = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"])
    idx = torch.tensor([3, 1, 4, 1])
    live, _ = Distiller(student, [kd], {"teacher": teacher})({k: v[idx] for k, v in train.items()})
    cached, _ = Distiller(student, from_cache([kd]))({k: v[idx] for k, v in cache.items()})
    assert torch.allclose(live, cached, atol=2e-3), (live, cached)  # float16 log-probabilities


def test_minitron_trains_from_a_cache_it_captures_once(tmp_path, capsys):
    model, corpus_file = save_tiny_llama(tmp_path / "teacher"), save_corpus(tmp_path / "corpus.txt")
    base = [f"teacher.path={model}", "data.source=files", f"data.paths=[{corpus_file}]", "data.seq_len=32",
            "calibration=16", "calibration_batch_size=4", "depth_batches=2", "train.max_steps=12",
            "train.batch_size=4", "train.log_every=2", "train.progress=false", "train.lr=3e-3", "samples=[The cat]",
            "sample_tokens=4", "target.params=null", "target.layers=2", f"teacher.cache={tmp_path / 'cache'}",
            "teacher.capture.k=8"]  # fmt: skip
    assert main(["minitron", *base, f"run.output_dir={tmp_path / 'a'}"]) == 0
    (run,) = (tmp_path / "a").glob("minitron-*")
    kd = [r["kd"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "kd" in r]
    assert kd[-1] < kd[0], "the student moves towards the cached teacher"
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    assert main(["minitron", *base, f"run.output_dir={tmp_path / 'b'}", "target.layers=1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == stamp, "captured again"
    capsys.readouterr()
    for extra, message in [(["data.seq_len=16"], "captured with another seq_len"),
                           (["hidden_loss=1.0"], "hidden_loss reads the teacher's hidden states")]:  # fmt: skip
        assert main(["minitron", *base, *extra, f"run.output_dir={tmp_path / 'c'}"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


# --- memory-mapped token shards ----------------------------------------------------------------
def test_token_shards_give_the_in_memory_rows(tmp_path, monkeypatch):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i}: " + "abc " * (i % 7)}) + "\n" for i in range(300)))
    cfg = TextData(source="files", paths=[str(docs)], seq_len=12, val_fraction=0.1)
    mem_train, mem_val = token_splits(cfg, char_tokenizer())
    monkeypatch.setattr("distill.data.shards.SHARD_TOKENS", 1000)  # several shards, rows crossing their borders
    small = cfg.model_copy(update={"shards": str(tmp_path / "shards")})
    disk_train, disk_val = token_splits(small, char_tokenizer())
    assert len(list((tmp_path / "shards").glob("tokens-*.npy"))) > 3
    for mem, disk in [(mem_train, disk_train), (mem_val, disk_val)]:
        assert len(disk["input_ids"]) == len(mem["input_ids"])
        idx = torch.randperm(len(mem["input_ids"]))[:50]
        assert torch.equal(disk["input_ids"][idx], mem["input_ids"][idx])
        assert torch.equal(disk["labels"][:], mem["labels"])
    again, _ = token_splits(small, char_tokenizer())  # written once: reused
    assert len(again) == len(disk_train)
    with pytest.raises(DistillError, match="another corpus or tokenizer"):
        token_splits(small.model_copy(update={"text_field": "other"}), char_tokenizer())


@pytest.mark.parametrize("shards", [False, True])
def test_a_validation_carve_is_the_training_splits_end_and_never_the_held_out(tmp_path, shards):
    docs = tmp_path / "docs.txt"
    docs.write_text(" ".join(f"w{i}" for i in range(2000)))
    cfg = TextData(source="files", paths=[str(docs)], seq_len=9, val_fraction=0.1)
    if shards:
        cfg = cfg.model_copy(update={"shards": str(tmp_path / "shards")})
    train, held_out = token_splits(cfg, char_tokenizer())
    sub, valid = token_splits(cfg.model_copy(update={"evaluate_on": "validation"}), char_tokenizer())
    n, v = len(train["input_ids"]), len(valid["input_ids"])
    assert v == int(n * 0.1) and len(sub["input_ids"]) == n - v  # val_fraction of the training rows
    assert torch.equal(sub["input_ids"][:], train["input_ids"][: n - v])  # the training rows before the carve
    assert torch.equal(valid["input_ids"][:], train["input_ids"][n - v :])  # the carve: the training split's end
    assert torch.equal(valid["labels"][:], train["labels"][n - v :])


def test_a_datasets_directory_streams_into_the_same_shards(tmp_path):
    from datasets import Dataset

    texts = [f"Row {i}: " + "xyz " * (i % 5) for i in range(400)]
    Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    cfg = TextData(source="datasets", paths=[str(tmp_path / "ds")], seq_len=10)
    mem, _ = token_splits(cfg, char_tokenizer())
    disk, _ = token_splits(cfg.model_copy(update={"shards": str(tmp_path / "shards")}), char_tokenizer())
    assert torch.equal(disk["input_ids"][:], mem["input_ids"]) and torch.equal(disk["labels"][:], mem["labels"])


def test_capture_cli_and_its_user_errors(tmp_path, capsys):
    model, corpus_file = save_tiny_llama(tmp_path / "teacher"), save_corpus(tmp_path / "corpus.txt")
    base = ["capture", f"teacher.path={model}", "data.source=files", f"data.paths=[{corpus_file}]", "data.seq_len=16",
            f"run.output_dir={tmp_path / 'runs'}", "capture.k=4"]  # fmt: skip
    assert main([*base, f"cache={tmp_path / 'c'}"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {tmp_path / 'c'}" in out and "| rows |" in out
    assert TeacherCache(tmp_path / "c").k == 4
    cases = [([], "cache"), (["capture.k=0", f"cache={tmp_path / 'd'}"], "capture.k"),
             ([f"cache={tmp_path / 'c'}", "data.seq_len=8"], "captured with another seq_len")]  # fmt: skip
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert len(list((tmp_path / "runs").iterdir())) == 1, "a refused capture made a run directory"


READER = """
import sys, numpy as np, torch
from distill.data.shards import TokenRows, TokenShards

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

rows = TokenRows(TokenShards(sys.argv[1]), 256)
g = torch.Generator().manual_seed(0)
start = anon_kb()
for _ in range(200):  # as the engine reads: random rows, a batch at a time
    batch = rows["input_ids"][torch.randint(len(rows), (8,), generator=g)]
print(anon_kb() - start, anon_kb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_reading_token_shards_takes_no_more_memory_for_a_10x_larger_corpus(tmp_path):
    import numpy as np

    used = []
    for name, tokens in [("small", 2_000_000), ("large", 20_000_000)]:
        d = tmp_path / name
        d.mkdir()
        arr = np.lib.format.open_memmap(d / "tokens-00000.npy", mode="w+", dtype=np.int32, shape=(tokens,))
        arr[:] = np.arange(tokens, dtype=np.int32) % 1000
        arr.flush()
        del arr
        (d / "index.json").write_text(json.dumps({"shards": ["tokens-00000.npy"], "meta": {}}))
        out = subprocess.run([sys.executable, "-c", READER, str(d)], capture_output=True, text=True, check=True)
        used.append([int(v) for v in out.stdout.split()])
    (grew_small, total_small), (grew_large, total_large) = used
    # the large file is 80 MB; anonymous memory may differ by allocator noise only
    assert abs(total_large - total_small) < 8_000 and grew_large < 8_000, used
