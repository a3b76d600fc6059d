"""`distill minitron` end to end on a tiny random Llama, and its user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from distill.cli import main
from distill.meter import SAMPLES, TOKENS
from llm_fixtures import save_corpus, save_tiny_llama


@pytest.fixture
def tiny(tmp_path):
    model = save_tiny_llama(tmp_path / "teacher")
    corpus = save_corpus(tmp_path / "corpus.txt")
    return [
        f"teacher.path={model}", "data.source=files", f"data.paths=[{corpus}]", "data.seq_len=32",
        "calibration=16", "calibration_batch_size=4", "depth_batches=2", f"run.output_dir={tmp_path / 'runs'}",
        "train.max_steps=12", "train.batch_size=4", "train.eval_every=6", "train.log_every=2",
        "train.progress=false", "train.lr=3e-3", "samples=[The cat]", "sample_tokens=4",
    ]  # fmt: skip


def only_run(tmp_path):
    (run,) = (tmp_path / "runs").glob("minitron-*")
    return run


def test_explicit_shape_end_to_end(tiny, tmp_path, capsys):
    args = [*tiny, "target.params=null", "target.hidden=36", "target.ffn=48", "target.heads=4", "target.layers=2",
            "correction={max_steps: 3, batch_size: 4, progress: false}", "hidden_loss=1.0"]  # fmt: skip
    assert main(["minitron", *args]) == 0
    out = capsys.readouterr().out
    assert "| distilled |" in out and "pruned shape: layers 2, hidden 36, ffn 48, heads 4" in out
    run = only_run(tmp_path)
    result = json.loads((run / "results.json").read_text())
    teacher, pruned, distilled = result["rows"]
    assert pruned["params"] == distilled["params"] < teacher["params"]
    exported = AutoModelForCausalLM.from_pretrained(run / "model")
    assert sum(p.numel() for p in exported.parameters()) == distilled["params"]
    assert exported.config.num_hidden_layers == 2 and exported.config.hidden_size == 36
    kd = [r["kd"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "kd" in r]
    assert kd[-1] < kd[0], "distillation lowers the KL to the teacher"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("hidden0" in r and "hidden1" in r for r in records), "one hidden-state term per kept layer"
    # a language model's throughput is logged in tokens: 4 sequences x 32 positions a step
    speed = [r for r in records if TOKENS in r]
    assert speed and all(r[TOKENS] == pytest.approx(32 * r[SAMPLES]) for r in speed)
    assert (run / "importance" / "importance.safetensors").is_file()
    assert (run / "correction" / "done.json").is_file(), "the teacher was corrected before pruning"
    report = (run / "report.md").read_text()
    assert "The cat" in report and "plots/student-eval.png" in report


def test_no_layer_drop_scores_for_a_target_that_drops_layers_is_refused(tiny, tmp_path, capsys):
    args = [*tiny, "depth_batches=0", "target.params=null", "target.layers=2"]
    assert main(["minitron", *args]) == 2
    assert "depth_batches=0 skips the layer-drop scores" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists(), "refused before the run directory exists"


def test_search_budget_is_given_in_tokens(tmp_path, capsys):
    assert main(["minitron", "search.train.max_steps=20", f"run.output_dir={tmp_path}"]) == 2
    assert "give the search's budget as search.tokens" in capsys.readouterr().err


def test_budget_search_and_importance_reuse(tiny, tmp_path):
    args = [
        *tiny,
        "target.params=0.6",
        "search.candidates=2",
        "search.tokens=200",  # 2 steps of 4 x 32 tokens (rounded up)
        "search.train.progress=false",
        # a hint term's projection is sized by the probe that fit draws, in the search's short stages too
        "objective=[{name: kd, loss: kl, inputs: [student.logits, teacher.logits]}, {name: hint, loss: hint,"
        " weight: 0.1, inputs: [student.model.norm, teacher.model.layers.0.mlp.down_proj:input]}]",  # 48 -> 64 wide
    ]
    assert main(["minitron", *args]) == 0
    first = only_run(tmp_path)
    result = json.loads((first / "results.json").read_text())
    assert {r["tokens"] for r in result["tables"]["search"]} == {256}
    records = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records if r.get("stage") == "search-0") == 2
    assert all("hint" in r for r in records if r.get("stage") == "search-0" and "loss" in r)
    assert result["tables"]["search"] and [r["val_loss"] for r in result["tables"]["search"]] == sorted(
        r["val_loss"] for r in result["tables"]["search"]
    )
    best = result["tables"]["search"][0]
    assert {k: result["info"]["target"][k] for k in ("hidden", "ffn", "heads", "layers")} == {
        k: best[k] for k in ("hidden", "ffn", "heads", "layers")
    }
    budget = 0.6 * result["rows"][0]["params"]
    assert abs(best["params"] - budget) <= 0.05 * budget

    # a second target from the same scores: no calibration pass
    again = [
        *tiny,
        "target.params=null",
        "target.layers=2",
        f"importance_from={first}",
        f"run.output_dir={tmp_path / 'b'}",
    ]
    assert main(["minitron", *again]) == 0
    (second,) = (tmp_path / "b").glob("minitron-*")
    assert not (second / "importance").exists()


@pytest.mark.slow
def test_killed_minitron_resumes_to_the_same_student(tiny, tmp_path):
    import os
    import sys

    from safetensors.torch import load_file

    from conftest import straight_killed_resumed
    from test_cli import strip

    env = {**os.environ, "TQDM_DISABLE": "1"}
    over = [o for o in tiny if not o.startswith("run.run_name")]
    over += ["target.params=null", "target.ffn=32", "target.layers=1", "train.max_steps=60", "train.save_every=10",
             "train.eval_every=20"]  # fmt: skip
    runs = straight_killed_resumed([sys.executable, "-m", "distill.cli", "minitron"], over, env, tmp_path / "runs",
                                   "checkpoints/student")  # fmt: skip
    a, b = (load_file(str(runs / n / "model" / "model.safetensors")) for n in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [[json.loads(line) for line in (runs / n / "metrics.jsonl").read_text().splitlines()]
               for n in ("straight", "killed")]  # fmt: skip
    assert strip(metrics[0]) == strip(metrics[1])


def test_user_errors(tiny, tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=98)).save_pretrained(gpt2)
    from llm_fixtures import char_tokenizer

    char_tokenizer().save_pretrained(gpt2)
    cases = [
        ([f"teacher.path={gpt2}"], "is not supported for pruning; supported: LlamaForCausalLM"),
        (["teacher.path=/nonexistent/model.gguf"], "model /nonexistent/model.gguf does not exist"),
        (["target.params=null", "target.hidden=4096"], "target hidden=4096 must be between 1 and the teacher's 48"),
        (["target.hidden=32"], "give either an explicit shape"),
        (
            ["data.paths=[/nonexistent.txt]", "target.params=null", "target.layers=1"],
            "text file /nonexistent.txt does not exist",
        ),
        (["target.params=0.01"], "no candidate shape lies within 5% of"),  # before calibration
        (["target.params=null", "target.layers=1", "train.batch_size=100000"], "train: "),
    ]
    for extra, message in cases:
        assert main(["minitron", *tiny, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/results.json"))


@pytest.mark.bundled
def test_smollm2_prunes_and_distills(tmp_path, capsys):
    """The bundled teacher (GGUF -> cached HF directory) on a slice of the Austen corpus."""
    args = ["minitron", f"run.output_dir={tmp_path}", "data.seq_len=64", "data.max_sequences=16",
            "data.max_val_sequences=8", "calibration=8",
            "calibration_batch_size=4", "depth_batches=1", "target.params=null", "target.layers=20", "target.ffn=1024",
            "train.max_steps=2", "train.batch_size=2", "train.progress=false", "sample_tokens=2"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(next(tmp_path.glob("minitron-*/results.json")).read_text())
    teacher, pruned, _ = result["rows"]
    assert 130e6 < teacher["params"] < 140e6
    assert teacher["ppl"] < 200 < pruned["ppl"]  # a real model on real English (uniform would be 49,152)
    exported = AutoModelForCausalLM.from_pretrained(Path(result["run_dir"]) / result["products"]["model"])
    assert exported.config.num_hidden_layers == 20 and exported.config.intermediate_size == 1024
    with torch.no_grad():
        assert torch.isfinite(exported(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
