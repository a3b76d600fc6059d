"""`distill lm`: a tiny teacher LLM into a student of the user's choosing, on text or prompts and completions."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from distill.cli import main
from distill.data.sft import PromptData, sft_rows
from distill.kd import Distiller, Term
from distill.recipes.lm import Objective
from llm_fixtures import char_tokenizer, save_corpus, save_tiny_llama

STUDENT = "{layers: 1, hidden: 16, heads: 2, ffn: 32}"
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_loss_is_taken_on_completion_tokens_only_token_by_token(tmp_path):
    tok = char_tokenizer()
    cfg = PromptData(path=str(tmp_path / "x.jsonl"), seq_len=6)
    rows = sft_rows([{"prompt": "ab", "completion": "cd"}], cfg, tok)
    a, b, c, d = (tok.convert_tokens_to_ids(ch) for ch in "abcd")
    eos = tok.eos_token_id
    assert rows["input_ids"][0].tolist() == [a, b, c, d, eos, eos]  # the last two are padding
    assert rows["labels"][0].tolist() == [-100, c, d, eos, -100, -100]  # b is the prompt's; then the padding
    assert rows["loss_mask"][0].tolist() == [False, True, True, True, False, False]


def test_chat_conversations_render_with_the_template_and_learn_the_assistant_turns(tmp_path):
    tok = char_tokenizer()
    tok.chat_template = TEMPLATE
    talk = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "ok?"}, {"role": "assistant", "content": "ok"}]  # fmt: skip
    rows = sft_rows([{"messages": talk}], PromptData(path="x", format="messages", seq_len=48), tok)
    ids, labels = rows["input_ids"][0], rows["labels"][0]
    assert (
        tok.decode(ids[: int((ids != tok.eos_token_id).sum())]) == "user: hi\nassistant: yo\nuser: ok?\nassistant: ok"
    )
    learned = tok.decode(labels[labels != -100])
    assert learned == "yo\nok\n"  # every assistant turn's content and its end, not the headers or the user's


def test_the_divergence_reads_only_the_kept_positions():
    """The KD term's mask: the loss over a batch whose loss_mask keeps one position is that position's KL."""
    torch.manual_seed(0)
    from distill.models.llm import LlamaShape, new_llama

    tok = char_tokenizer()
    student, teacher = (new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok) for _ in range(2))
    ids = torch.randint(2, 60, (1, 8))
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 5] = True
    batch = {"input_ids": ids, "labels": ids, "loss_mask": mask}
    loss, _ = Distiller(student, Objective(temperature=2.0).terms(masked=True), {"teacher": teacher})(batch)
    with torch.no_grad():
        s, t = student(input_ids=ids).logits[0, 5] / 2, teacher(input_ids=ids).logits[0, 5] / 2
    expected = 4 * F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="sum")
    torch.testing.assert_close(loss.detach(), expected)


def peaked_teacher(path):
    """The tiny random LLM with its logits scaled 8x: a teacher far from uniform, worth imitating."""
    save_tiny_llama(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(path)
    return path


@pytest.fixture
def tiny(tmp_path):
    teacher = peaked_teacher(tmp_path / "teacher")
    return [
        f"teacher.path={teacher}", f"student.shape={STUDENT}", f"run.output_dir={tmp_path / 'runs'}",
        "run.run_name=r", "train.max_steps=12", "train.batch_size=4", "train.eval_every=6", "train.lr=1e-2",
        "train.progress=false", "eval_batch_size=4",
    ]  # fmt: skip


def test_prompt_completion_end_to_end_through_the_cli(tiny, tmp_path, capsys):
    records = [{"prompt": f"Q{i}: ", "completion": f"the {w} is {i % 3}"} for i, w in enumerate(["cat", "dog"] * 20)]
    data = write_jsonl(tmp_path / "sft.jsonl", records)
    over = [*tiny, f"prompts={{path: '{data}', seq_len: 24}}", "objective.divergence=jsd", "objective.beta=0.3"]
    assert main(["lm", *over]) == 0
    run = tmp_path / "runs" / "r"
    rows = {r["model"]: r for r in json.loads((run / "results.json").read_text())["rows"]}
    assert rows["student after"]["kl_to_teacher"] < rows["student before"]["kl_to_teacher"] * 0.8
    assert rows["teacher"]["kl_to_teacher"] == 0
    student = AutoModelForCausalLM.from_pretrained(run / "model")
    assert student.config.num_hidden_layers == 1
    card = (run / "model" / "README.md").read_text()
    assert "jsd (beta 0.3)" in card and "loss on completion tokens" in card.replace("the loss", "loss")
    assert f"{rows['student after']['val_loss']:.4f}" in card
    assert "| student after |" in capsys.readouterr().out


def test_plain_text_from_a_teacher_cache(tiny, tmp_path):
    corpus = save_corpus(tmp_path / "corpus.txt")
    text = ["data.source=files", f"data.paths=[{corpus}]", "data.seq_len=24"]
    assert main(["lm", *tiny, *text, f"teacher.cache={tmp_path / 'cache'}", "teacher.capture.k=8"]) == 0
    assert (tmp_path / "cache").is_dir()
    rows = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["rows"]
    assert rows[2]["kl_to_teacher"] < rows[1]["kl_to_teacher"] * 0.8


@pytest.mark.parametrize(
    "extra, records, message",
    [
        ([], [{"text": "no messages"}] * 4, "a chat record needs a 'messages' list"),
        ([], [{"prompt": "a", "completion": "b" * 40}] * 4, "record 1 has 42 tokens, more than prompts.seq_len=24 + 1"),
        (["objective.divergence=reverse_kl", "teacher.cache=CACHE"], None, "needs the live teacher"),
        (["compile=true", "objective.fused=false"], None, "compile=true compiles the fused distillation step"),
    ],
)
def test_bad_input_is_one_line(tiny, tmp_path, capsys, extra, records, message):
    fmt = "messages" if "messages" in message else "prompt_completion"
    data = write_jsonl(tmp_path / "sft.jsonl", records or [{"prompt": "a", "completion": "b"}] * 4)
    extra = [e.replace("CACHE", str(tmp_path / "cache")) for e in extra]
    tok_with_template = [f"prompts={{path: '{data}', seq_len: 24, format: {fmt}}}"]
    assert main(["lm", *tiny, *tok_with_template, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_student_with_another_vocabulary_is_refused(tiny, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(other)  # fmt: skip
    char_tokenizer().save_pretrained(other)
    capsys.readouterr()  # what saving the model printed
    assert main(["lm", *tiny, f"student.path={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "student (" in err and "has 50 output logits, fewer than its 98 tokens" in err, err
    assert len(err.splitlines()) == 1


def test_a_student_with_another_tokenizer_is_refused(tiny, tmp_path, capsys):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = save_tiny_llama(tmp_path / "other")
    vocab = {t: (i + 1) % len(char_tokenizer()) for t, i in char_tokenizer().get_vocab().items()}  # other ids
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(other)
    capsys.readouterr()
    assert main(["lm", *tiny, f"student.path={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "student (" in err and "has another tokenizer than the run's" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


# --- on-policy (GKD) and sequence-level KD ----------------------------------------------------------------------
def _rows_and_student():
    from distill.models.llm import LlamaShape, new_llama

    tok = char_tokenizer()
    torch.manual_seed(0)
    student = new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok)
    recs = [{"prompt": "ab", "completion": "cdef"}, {"prompt": "xyz", "completion": "q"}]
    return tok, student, sft_rows(recs, PromptData(path="x", seq_len=10), tok)


def test_completions_sampled_by_seed_and_masked_on_what_was_generated():
    from distill.kd.onpolicy import complete

    tok, student, rows = _rows_and_student()
    draw = lambda seed, t=1.0: (torch.manual_seed(seed), complete(student, rows, 6, t, tok.eos_token_id, 1))[1]  # noqa: E731
    a, again, other = draw(1), draw(1), draw(2)
    assert torch.equal(a["input_ids"], again["input_ids"]) and not torch.equal(a["input_ids"], other["input_ids"])
    for r, p in enumerate([2, 3]):  # prompt lengths: the prompt stays, the rest is the student's
        assert torch.equal(a["input_ids"][r, :p], rows["input_ids"][r, :p])
        assert a["labels"][r, : p - 1].eq(-100).all() and a["loss_mask"][r, p - 1]
        n = int(a["loss_mask"][r].sum())
        assert 1 <= n <= 6 and a["loss_mask"][r, p - 1 : p - 1 + n].all()
    greedy = [draw(s, 0.0)["input_ids"] for s in (1, 2)]  # temperature 0: the argmax continuation, whatever the seed
    assert torch.equal(*greedy)
    with torch.no_grad():
        first = student(input_ids=rows["input_ids"][:1, :2]).logits[0, -1].argmax()
    assert greedy[0][0, 2] == first


def test_a_draw_is_the_token_whose_cdf_interval_holds_the_uniform():
    from distill.kd.onpolicy import inverse_cdf

    probs = torch.tensor([0.5, 0.0, 0.25, 0.25]).repeat(6, 1)  # cdf 0.5, 0.5, 0.75, 1: token 1 has no interval
    u = torch.tensor([0.0, 0.49, 0.5, 0.74, 0.75, 0.999])
    assert inverse_cdf(probs, u).squeeze(1).tolist() == [0, 0, 2, 2, 3, 3]
    assert torch.equal(inverse_cdf(3 * probs, u), inverse_cdf(probs, u))  # unnormalised rows: the same draws


def test_sampling_draws_from_the_softmax_at_the_temperature():
    from distill.kd.onpolicy import Sample

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    torch.manual_seed(0)
    scores = Sample(2.0)(torch.zeros(1), logits.repeat(40_000, 1))
    assert scores.eq(0).sum(1).eq(1).all() and scores.isneginf().sum(1).eq(4).all()  # one token per row, kept
    freq = scores.eq(0).float().mean(0)
    assert (freq - torch.softmax(logits / 2, -1)).abs().max() < 0.01  # 4 standard errors at 40k draws


def test_completions_of_a_batch_are_those_of_each_row_alone():
    """One left-padded `generate` for the batch writes what each row's prompt alone would have given."""
    from distill.kd.onpolicy import complete

    tok, student, _ = _rows_and_student()
    recs = [{"prompt": "a", "completion": "cdef"}, {"prompt": "vwxyzab", "completion": "q"}]
    rows = sft_rows(recs, PromptData(path="x", seq_len=14), tok)
    torch.manual_seed(3)  # an untied head: the tied one just repeats the last token, whatever it sees before
    student.lm_head = torch.nn.Linear(16, student.config.vocab_size, bias=False)
    with torch.no_grad():  # weights large enough that a pad token seen, or a position shifted, changes the argmax
        for name, w in student.named_parameters():
            if "proj" in name:
                w.normal_(std=0.5)
        student.lm_head.weight[tok.eos_token_id] = 0  # and completions longer than a token or two
    got = complete(student, rows, 6, 0.0, tok.eos_token_id, 1)
    assert len(set(got["input_ids"][0, 1:7].tolist())) > 2
    for r, p in enumerate([1, 7]):  # prompts of different lengths: the shorter one is padded on the left
        with torch.no_grad():
            alone = student.generate(rows["input_ids"][r : r + 1, :p], max_new_tokens=6, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=1)[0]  # fmt: skip
        n = len(alone) - 1
        assert torch.equal(got["input_ids"][r, :n], alone[:-1]) and torch.equal(got["labels"][r, p - 1 : n], alone[p:])
        assert got["labels"][r, n:].eq(-100).all()


def test_on_policy_batches_through_the_cli(tiny, tmp_path):
    records = [{"prompt": f"Q{i}: ", "completion": f"the {w} is {i % 3}"} for i, w in enumerate(["cat", "dog"] * 20)]
    data = write_jsonl(tmp_path / "sft.jsonl", records)
    over = [*tiny, f"prompts={{path: '{data}', seq_len: 24}}", "generation.lam=0.5", "generation.max_new_tokens=8"]
    assert main(["lm", *over, "train.log_every=1"]) == 0
    from test_cli import read_metrics

    flags = [r["on_policy"] for r in read_metrics(tmp_path / "runs" / "r") if "on_policy" in r]
    assert len(flags) == 12 and 0 < sum(flags) < 12  # about half the batches are the student's own
    results = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())
    assert results["info"]["on_policy_batches"] == sum(flags)
    card = (tmp_path / "runs" / "r" / "model" / "README.md").read_text()
    assert "the student's own samples in a share 0.5 of the batches" in card


@pytest.mark.slow
def test_killed_on_policy_run_resumes_exactly(tiny, tmp_path):
    import os
    import sys

    from safetensors.torch import load_file

    from conftest import straight_killed_resumed

    records = [{"prompt": f"Q{i}: ", "completion": f"the {w} is {i % 3}"} for i, w in enumerate(["cat", "dog"] * 20)]
    data = write_jsonl(tmp_path / "sft.jsonl", records)
    over = [o for o in tiny if not o.startswith(("run.run_name", "train.max_steps", "train.eval_every"))]
    over += [f"prompts={{path: '{data}', seq_len: 24}}", "generation.lam=0.5", "train.max_steps=40",
             "train.save_every=5", "train.eval_every=40", "train.log_every=1"]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1"}
    runs = straight_killed_resumed([sys.executable, "-m", "distill.cli", "lm"], over, env, tmp_path / "runs",
                                   "checkpoints/student")  # fmt: skip
    a, b = (load_file(str(runs / n / "student" / "model.safetensors")) for n in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sequence_kd_generates_the_teachers_targets_once(tiny, tmp_path, monkeypatch):
    records = [{"prompt": f"Q{i}: ", "completion": f"the {w} is {i % 3}"} for i, w in enumerate(["cat", "dog"] * 20)]
    data = write_jsonl(tmp_path / "sft.jsonl", records)
    over = [*tiny, f"prompts={{path: '{data}', seq_len: 24}}", "generation.targets=teacher"]
    assert main(["lm", *over]) == 0
    run = tmp_path / "runs" / "r"
    from safetensors.torch import load_file

    targets = load_file(str(run / "teacher_targets.safetensors"))
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher").eval()
    ids = targets["input_ids"][0]
    p = int(targets["loss_mask"][0].nonzero()[0]) + 1
    with torch.no_grad():
        assert ids[p] == teacher(input_ids=ids[None, :p]).logits[0, -1].argmax()  # the teacher's greedy choice
    import distill.kd.onpolicy

    monkeypatch.setattr(distill.kd.onpolicy, "complete", lambda *a, **k: pytest.fail("generated again"))
    monkeypatch.setattr("distill.recipes.lm.complete", lambda *a, **k: pytest.fail("generated again"))
    (run / "results.json").unlink()
    assert main(["lm", "--resume", str(run)]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["generation.lam=0.5"], "generation.lam generates completions of prompts: give prompts="),
        (["generation.targets=teacher", "teacher.cache=C"], "needs the live teacher"),
    ],
)
def test_generation_needs_prompts_and_a_live_teacher(tiny, tmp_path, capsys, extra, message):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}] * 4)
    prompts = [] if "lam" in extra[0] else [f"prompts={{path: '{data}', seq_len: 24}}"]
    assert main(["lm", *tiny, *prompts, *[e.replace("=C", f"={tmp_path / 'c'}") for e in extra]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


# --- bf16 on the CPU ----------------------------------------------------------------------------------------------
def test_bf16_on_a_cpu_without_it_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("distill.context.cpu_has_bf16", lambda: False)
    assert main(["lm", *tiny, "run.precision=bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run.precision=bf16 on the CPU needs AVX-512 BF16 or AMX" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("bf16, amx", [(False, False), (True, False), (True, True)])
def test_precision_auto_is_bf16_only_where_the_cpu_gains_from_it(tmp_path, monkeypatch, bf16, amx):
    from distill.context import RuntimeConfig, start

    monkeypatch.setattr("distill.context.cpu_has_bf16", lambda: bf16)
    monkeypatch.setattr("torch.cpu._is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    ctx = start("t", RuntimeConfig(), RuntimeConfig(output_dir=str(tmp_path), precision="auto"))
    # AVX-512 BF16 without AMX runs bf16 (asked for explicitly) but slower than fp32: auto keeps fp32 there
    assert ctx.accelerator.mixed_precision == ("bf16" if bf16 and amx else "no")


def test_bf16_autocast_on_a_cpu_with_it_keeps_the_divergence_in_fp32(tiny, tmp_path, monkeypatch):
    from distill.context import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16")
    import distill.kd.fused as fused

    seen, inner = [], fused.linear_divergence

    def divergence(*args, **kwargs):
        loss = inner(*args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), loss.dtype))
        return loss

    monkeypatch.setattr(fused, "linear_divergence", divergence)
    records = [{"prompt": f"Q{i}: ", "completion": f"the {w} is {i % 3}"} for i, w in enumerate(["cat", "dog"] * 20)]
    data = write_jsonl(tmp_path / "sft.jsonl", records)
    assert main(["lm", *tiny, f"prompts={{path: '{data}', seq_len: 24}}", "run.precision=bf16"]) == 0
    # the step ran under bf16 autocast, the divergence came out in fp32
    assert seen and all(d == (True, torch.bfloat16, torch.float32) for d in seen), seen[:3]
    rows = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["rows"]
    assert rows[2]["kl_to_teacher"] < rows[1]["kl_to_teacher"] * 0.8


# --- the fused output projection + divergence ---------------------------------------------------------------------
MINITRON_KL = [Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": 3})]


@pytest.mark.parametrize("objective", ["kl", "jsd", "minitron"])
def test_the_shared_llm_stage_trains_fused_with_the_distillers_value_and_gradient(objective):
    """`lm_trainable` maps an objective onto the fused projection + divergence (weights, CE mix, beta, temperature,
    chunk, mask): `distill lm`'s objectives on prompt data, and Minitron's default forward KL on plain text."""
    from distill.kd.fused import FusedLM
    from distill.kd.lm_stage import lm_trainable
    from distill.models.llm import LlamaShape, new_llama

    tok = char_tokenizer()
    torch.manual_seed(0)
    student = new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok)
    teacher = new_llama(LlamaShape(layers=2, hidden=24, heads=2, ffn=32), tok)
    recs = [{"prompt": "ab", "completion": "cdef"}, {"prompt": "xyz", "completion": "qq"}]
    batch = sft_rows(recs, PromptData(path="x", seq_len=10), tok)
    if objective == "minitron":
        terms, batch = MINITRON_KL, {k: batch[k] for k in ("input_ids", "labels")}
    else:
        o = Objective(divergence=objective, beta=0.3, temperature=2.0, ce_weight=0.5, kd_weight=0.8, chunk_size=4)
        terms = o.terms(masked=True)
    plain, _ = Distiller(student, terms, {"teacher": teacher})(batch)
    trainable = lm_trainable(student, teacher, terms)
    assert isinstance(trainable, FusedLM)
    fused, _ = trainable(batch)
    torch.testing.assert_close(fused, plain)
    params = [p for p in student.parameters()]
    for a, e in zip(torch.autograd.grad(fused, params), torch.autograd.grad(plain, params)):
        torch.testing.assert_close(a, e)


def test_objectives_the_fused_stage_does_not_compute_train_through_the_distiller():
    from distill.kd.lm_stage import fusable

    hint = Term(name="hint", loss="hint", inputs=["student.model.layers.0", "teacher.model.layers.1"])
    relation = MINITRON_KL[0].model_copy(update={"inputs": ["student.logits", "teacher[a].logits"]})
    for terms in ([*MINITRON_KL, hint], [relation], [MINITRON_KL[0].model_copy(update={"args": {"other": 1}})]):
        assert fusable(terms) is None, terms
    assert fusable(MINITRON_KL) == (MINITRON_KL[0], None)


# --- torch.compile ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_step_and_sampling_are_the_eager_ones():
    """compile=true runs both decoders and the student's decoding step through torch.compile (graphs are made),
    with the eager step's loss and gradient and the eager greedy completions; an unfused objective is refused."""
    from torch._dynamo.utils import counters

    from distill.errors import DistillError
    from distill.kd.lm_stage import lm_trainable
    from distill.kd.onpolicy import complete
    from distill.models.llm import LlamaShape, new_llama

    tok, student, rows = _rows_and_student()
    teacher = new_llama(LlamaShape(layers=2, hidden=24, heads=2, ffn=32), tok)
    terms = Objective(divergence="jsd", ce_weight=0.5).terms(masked=True)
    params = list(student.parameters())
    out = {}
    for compile in (False, True):
        graphs = counters["stats"]["unique_graphs"]
        loss, _ = lm_trainable(student, teacher, terms, compile=compile)(rows)
        out[compile] = loss, torch.autograd.grad(loss, params)
        assert (counters["stats"]["unique_graphs"] > graphs) == compile  # the student's and the teacher's decoders
    torch.testing.assert_close(out[True], out[False])
    # then a long prompt beside a short one with room for 20 new tokens: the widest left-padded prompt plus the
    # longest completion, the most the static cache must hold
    wide = sft_rows(
        [{"prompt": "a", "completion": "c"}, {"prompt": "abcdefghi", "completion": "q"}],
        PromptData(path="x", seq_len=10),
        tok,
    )
    for batch, new_tokens in ((rows, 6), (wide, 20)):
        graphs = counters["stats"]["unique_graphs"]
        eager, compiled = (complete(student, batch, new_tokens, 0.0, tok.eos_token_id, 1, c) for c in (False, True))
        assert counters["stats"]["unique_graphs"] > graphs or batch is wide  # the decoding step
        for k in eager:
            assert torch.equal(eager[k], compiled[k]), (new_tokens, k)
    assert int(compiled["loss_mask"][0].sum()) == 10  # the short prompt's row was completed to its end
    with pytest.raises(DistillError, match="this objective is not fused"):
        lm_trainable(student, teacher, terms, fused=False, compile=True)
