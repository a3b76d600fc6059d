"""`distill online` (ERNIE 3.0 Titan's online distillation) on a tiny teacher built in the test."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, load_model
from transformers import AutoModelForCausalLM

from conftest import batches_by_stage, straight_killed_resumed
from distill.cli import main
from distill.kd import Cohort, Member, Term
from distill.kd.auxiliary import OnlineStudent
from distill.models.llm import LlamaShape, new_llama
from llm_fixtures import char_tokenizer, save_corpus, save_tiny_llama
from test_cli import read_metrics, strip

CE = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])
KL = Term(name="kl", loss="kl", inputs=["student.logits", "teacher.logits"])
STUDENT = "{layers: 1, hidden: 16, heads: 2, ffn: 32}"


@pytest.fixture
def tiny(tmp_path):
    teacher = save_tiny_llama(tmp_path / "teacher")
    corpus = save_corpus(tmp_path / "corpus.txt")
    return [
        f"teacher.path={teacher}", "data.source=files", f"data.paths=[{corpus}]", "data.seq_len=24",
        f"run.output_dir={tmp_path / 'runs'}", "run.run_name=r", "relation.weight=1.0", "relation.heads=2",
        f"students=[{{name: small, shape: {STUDENT}}}, {{name: aux, shape: {STUDENT}, auxiliary_layer: true}}]",
        "train.max_steps=6", "train.batch_size=4", "train.eval_every=3", "train.log_every=1", "train.progress=false",
        "eval_batch_size=4",
    ]  # fmt: skip


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 60, (n, 9), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}


def test_students_reuse_the_teachers_forward_every_k_steps():
    """6 steps, distil every 2: 6 teacher forwards, 3 per student; a student left out of a step stays put."""
    from accelerate import Accelerator

    from distill.engine import TrainConfig, fit

    tok = char_tokenizer()
    torch.manual_seed(0)
    teacher = new_llama(LlamaShape(layers=2, hidden=32, heads=2, ffn=64), tok)
    students = {n: new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok) for n in ("a", "b")}
    members = {"teacher": Member(teacher, [CE]), **{n: Member(m, [KL], ["teacher"]) for n, m in students.items()}}
    cohort = Cohort(members, every=2)
    seen = []
    cohort.members["a"].student.register_forward_hook(lambda *_: seen.append(int(cohort.steps)))
    data = {k: v.repeat(4, 1) for k, v in batch().items()}
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, schedule="constant", progress=False)
    fit(cohort, data, cfg, stage="s", run=None, accelerator=Accelerator(cpu=True), seed=0)
    assert cohort.forward_counts() == {"teacher": 6, "a": 3, "b": 3}
    assert seen == [1, 3, 5]  # steps 0, 2, 4 (the counter has moved on when the member runs)


@pytest.mark.parametrize("every, steps", [(2, [0, 2, 4]), (3, [0, 3])])
def test_with_accumulation_students_take_whole_optimizer_steps(every, steps):
    """grad_accum 2: a student takes part in both micro-batches of every `every`-th optimizer step (it once counted
    micro-batches, and so stepped on half a batch in every step)."""
    from accelerate import Accelerator

    from distill.engine import TrainConfig, fit

    tok = char_tokenizer()
    torch.manual_seed(0)
    teacher = new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok)
    student = new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok)
    cohort = Cohort({"teacher": Member(teacher, [CE]), "s": Member(student, [KL], ["teacher"])}, every, grad_accum=2)
    seen = []
    cohort.members["s"].student.register_forward_hook(lambda *_: seen.append(int(cohort.steps) - 1))
    data = {k: v.repeat(6, 1) for k, v in batch(4).items()}
    cfg = TrainConfig(max_steps=6, batch_size=2, grad_accum=2, lr=1e-2, progress=False)
    fit(cohort, data, cfg, stage="s", run=None, accelerator=Accelerator(cpu=True), seed=0)
    assert seen == [m for step in steps for m in (2 * step, 2 * step + 1)]  # the micro-batches of those steps
    assert cohort.forward_counts() == {"teacher": 12, "s": 2 * len(steps)}


def test_a_student_joining_late_takes_no_step_before_it():
    """students_from_step 2, every 2, 6 steps: the student runs in steps 2 and 4 only, and its forwards count from
    there."""
    from accelerate import Accelerator

    from distill.engine import TrainConfig, fit

    tok = char_tokenizer()
    torch.manual_seed(0)
    teacher, student = (new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok) for _ in range(2))
    start = {k: v.clone() for k, v in student.state_dict().items()}
    moved = []
    cohort = Cohort({"teacher": Member(teacher, [CE]), "s": Member(student, [KL], ["teacher"])}, 2, 1, start=2)
    seen = []
    cohort.members["s"].student.register_forward_hook(lambda *_: seen.append(int(cohort.steps) - 1))
    on_step = lambda product, step: moved.append(  # noqa: E731
        any(not torch.equal(v, start[k]) for k, v in product["s"].state_dict().items())
    )
    data = {k: v.repeat(6, 1) for k, v in batch(4).items()}
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, progress=False)
    from distill.engine import Callbacks

    fit(cohort, data, cfg, stage="s", run=None, accelerator=Accelerator(cpu=True), seed=0,
        callbacks=Callbacks(on_step=on_step), product=cohort.products)  # fmt: skip
    assert seen == [2, 4] and cohort.forward_counts() == {"teacher": 6, "s": 2}
    assert moved == [False, False, True, True, True, True]  # untouched by the steps before it joined


def test_students_from_step_through_the_recipe_and_the_premise_reported(tiny, tmp_path, capsys, monkeypatch):
    seen = batches_by_stage(monkeypatch)
    over = [*tiny, "students_from_step=2", "distill_every=2", "alone=true"]
    assert main(["online", *over]) == 0
    result = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["small"]["steps"] == rows["small alone"]["steps"] == 2
    online = [b["input_ids"] for b in seen["online"]]
    assert all(torch.equal(a["input_ids"], online[m]) for a, m in zip(seen["alone/small"], [2, 4], strict=True))
    # a random tiny teacher is no better than the students alone: the run completes and says so
    premise = result["info"]["premise"]
    # the premise reads the teacher as the students join it (step 2), measured then, not at the start or the end
    joined = json.loads((tmp_path / "runs" / "r" / "teacher_joined.json").read_text())
    assert joined["step"] == 2 and rows["teacher as the students join"]["steps"] == 2
    assert premise["holds"] is False and premise["teacher"] == round(joined["val_loss"], 4)
    assert len({rows[k]["val_loss"] for k in ("teacher at the start", "teacher as the students join", "teacher")}) == 3
    said = "premise (the teacher the students start from 0.3 nats or more below every student alone): does NOT hold"
    assert said in capsys.readouterr().out
    # the teacher loaded from its weights starts the same in another variant (here: offline)
    assert main(["online", *tiny, "mode=offline", "run.run_name=r2"]) == 0
    again = json.loads((tmp_path / "runs" / "r2" / "teacher_start.json").read_text())
    assert again == json.loads((tmp_path / "runs" / "r" / "teacher_start.json").read_text())
    # and trains to the same weights, bit for bit: its steps do not depend on the students of a variant
    ends = [load_file(str(tmp_path / "runs" / r / "models" / "teacher" / "model.safetensors")) for r in ("r", "r2")]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


def test_online_run_exports_students_without_their_auxiliary_layer(tiny, tmp_path, capsys, monkeypatch):
    import distill.recipes.online

    initial = {}

    class KeepInitial(OnlineStudent):
        def __init__(self, lm, auxiliary=False):
            super().__init__(lm, auxiliary)
            if auxiliary:
                initial.update({f"aux.{k}": v.clone() for k, v in self.aux.state_dict().items()})

    monkeypatch.setattr(distill.recipes.online, "OnlineStudent", KeepInitial)
    assert main(["online", *tiny]) == 0
    run = tmp_path / "runs" / "r"
    result = json.loads((run / "results.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["teacher"]["teacher_forwards"] == 6 and rows["small"]["teacher_forwards"] == 0
    assert result["info"]["teacher_forwards"] == 6  # the students added none
    trained = load_file(str(run / "online" / "aux.safetensors"))
    assert sorted(k for k in trained if k.startswith("aux.")) == sorted(initial)
    for k in ("aux.q_proj.weight", "aux.k_proj.weight", "aux.v_proj.weight"):  # the relation loss trained them
        assert not torch.equal(trained[k], initial[k]), k
    export = AutoModelForCausalLM.from_pretrained(run / "models" / "aux").eval()
    assert export.config.num_hidden_layers == 1 and not any("aux" in k for k in export.state_dict())
    in_memory = OnlineStudent(AutoModelForCausalLM.from_pretrained(run / "models" / "aux"), auxiliary=True)
    load_model(in_memory, str(run / "online" / "aux.safetensors"))  # as it trained, auxiliary layer included
    ids = batch()["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(export(input_ids=ids).logits, in_memory.eval()(ids).logits)
    metrics = read_metrics(run)
    terms = next(r for r in metrics if r["stage"] == "online" and "loss" in r)
    assert {"teacher/ce", "small/kl", "small/rel_qq", "aux/rel_vv"} <= set(terms)
    assert "| small | 1 |" in capsys.readouterr().out


def test_offline_and_alone_baselines(tiny, tmp_path):
    assert main(["online", *tiny, "mode=offline", "alone=true", "distill_every=2"]) == 0
    result = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["small"]["steps"] == rows["small alone"]["steps"] == 3
    assert rows["small"]["teacher_forwards"] == 3  # offline: each student step runs the finished teacher again
    assert result["info"]["teacher_forwards"] == 6 + 3 + 3
    stages = {r["stage"] for r in read_metrics(tmp_path / "runs" / "r")}
    assert stages == {"teacher", "offline/small", "offline/aux", "alone/small", "alone/aux"}


def test_online_offline_and_alone_students_see_the_same_batches(tiny, tmp_path, monkeypatch):
    """distill_every=2: the online students train on the cohort's micro-batches 0, 2, 4; the offline and the alone
    students train on exactly those, in that order (not on the first three)."""
    seen = batches_by_stage(monkeypatch)
    assert main(["online", *tiny, "distill_every=2", "alone=true", "run.run_name=r1"]) == 0
    online = [b["input_ids"] for b in seen["online"]]
    assert len(online) == 6 and not torch.equal(online[1], online[2])
    students = online[::2]
    assert main(["online", *tiny, "distill_every=2", "mode=offline", "run.run_name=r2"]) == 0
    for stage in ("alone/small", "alone/aux", "offline/small", "offline/aux"):
        got = [b["input_ids"] for b in seen[stage]]
        assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, students)), stage
    assert all(torch.equal(a["input_ids"], b) for a, b in zip(seen["teacher"], online))  # offline teacher too
    # accumulating 2 micro-batches of 2: the students' steps 0 and 2 are micro-batches 0, 1, 4, 5 of the cohort
    over = [*tiny, "distill_every=2", "alone=true", "train.batch_size=2", "train.grad_accum=2"]
    assert main(["online", *over, "run.run_name=r3"]) == 0
    online = [b["input_ids"] for b in seen["online"]]
    assert len(online) == 12
    got = [b["input_ids"] for b in seen["alone/small"]]
    assert len(got) == 6 and all(torch.equal(a, online[m]) for a, m in zip(got, [0, 1, 4, 5, 8, 9]))


def test_students_of_different_objectives_in_one_cohort(tiny, tmp_path):
    """Per-student weights: relation-only students beside KL students, on the teacher's one forward a step."""
    students = (f"students=[{{name: rel, shape: {STUDENT}, kl: 0, relation: 2.0, ce: 0.5}}, "
                f"{{name: kl, shape: {STUDENT}, relation: 0}}]")  # fmt: skip
    assert main(["online", *tiny, "relation.weight=0", students]) == 0
    run = tmp_path / "runs" / "r"
    terms = next(r for r in read_metrics(run) if r["stage"] == "online" and "loss" in r)
    assert {"rel/rel_qq", "rel/rel_kk", "rel/rel_vv", "rel/ce", "kl/kl"} <= set(terms)
    assert not {"rel/kl", "kl/rel_qq", "kl/ce"} & set(terms)
    saved = yaml.safe_load((run / "config.yaml").read_text())["students"][0]
    assert (saved["kl"], saved["relation"], saved["ce"]) == (0, 2.0, 0.5)
    result = json.loads((run / "results.json").read_text())
    assert [r["trained"] for r in result["rows"][2:]] == [
        "online from teacher: relations + LM",
        "online from teacher: KL",
    ]
    assert result["info"]["teacher_forwards"] == 6


def test_a_teacher_alone_is_a_run_whose_teacher_later_runs_load(tiny, tmp_path):
    assert main(["online", *tiny, "students=[]", "run.run_name=pre"]) == 0
    pre = tmp_path / "runs" / "pre"
    result = json.loads((pre / "results.json").read_text())
    assert [r["model"] for r in result["rows"]] == ["teacher at the start", "teacher"]
    trained = result["rows"][1]["val_loss"]
    over = [o for o in tiny if not o.startswith("teacher.path")] + [f"teacher.path={pre / 'models' / 'teacher'}"]
    assert main(["online", *over, "run.run_name=next"]) == 0
    start = json.loads((tmp_path / "runs" / "next" / "teacher_start.json").read_text())["val_loss"]
    assert start == pytest.approx(trained, abs=1e-4)  # rows are rounded to 4 places


def test_a_teacher_assistant_chain(tiny, tmp_path):
    chain = (f"students=[{{name: ta, shape: {{layers: 2, hidden: 32, heads: 2, ffn: 32}}}}, "
             f"{{name: small, shape: {STUDENT}, source: ta}}]")  # fmt: skip
    assert main(["online", *tiny, chain]) == 0
    metrics = read_metrics(tmp_path / "runs" / "r")
    assert any("small/kl" in r for r in metrics) and any("ta/kl" in r for r in metrics)
    result = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())
    assert [r["trained"] for r in result["rows"][2:]] == [
        "online from teacher: KL + relations",
        "online from ta: KL + relations",
    ]


@pytest.mark.parametrize(
    "extra, word",
    [
        (["students=[{name: s, source: nobody}]"], "learns from 'nobody', which is neither 'teacher' nor a student"),
        (["relation.heads=3"], "relation.heads=3 does not divide teacher's k_proj width 16"),
        ([f"students=[{{name: s, shape: {STUDENT}, kl: 0, relation: 0}}]"], "student 's' learns nothing"),
        (["kl.weight=0", "relation.weight=0"], "student 'small' learns nothing"),
    ],
)
def test_config_errors_before_training(tiny, tmp_path, capsys, extra, word):
    assert main(["online", *tiny, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert word in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_student_with_another_tokenizer_is_refused(tiny, tmp_path, capsys):
    other = tmp_path / "other"
    model = save_tiny_llama(other)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(model)
    vocab = {t: (i + 1) % len(tok) for t, i in tok.get_vocab().items()}  # the same tokens, other ids
    from tokenizers import Tokenizer, models

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                            unk_token="<unk>").save_pretrained(other)  # fmt: skip
    capsys.readouterr()  # what saving the models printed
    assert main(["online", *tiny, f"students=[{{name: s, path: '{other}'}}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"distill: error: s ({other}) has another tokenizer"), err
    assert "has another tokenizer than the run's" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_killed_online_run_resumes_to_the_same_teacher_and_students(tiny, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    over = [o for o in tiny if not o.startswith(("run.run_name", "train.max_steps", "train.eval_every"))]
    over += ["train.max_steps=40", "train.save_every=5", "train.eval_every=20"]
    runs = straight_killed_resumed([sys.executable, "-m", "distill.cli", "online"], over, env, tmp_path / "runs",
                                   "checkpoints/online")  # fmt: skip
    for member in ("teacher", "small", "aux"):
        a, b = (load_file(str(runs / n / "online" / f"{member}.safetensors")) for n in ("straight", "killed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), member
    assert strip(read_metrics(runs / "killed")) == strip(read_metrics(runs / "straight"))


def test_a_vocabulary_larger_than_the_corpus_yields_is_said_and_reported(tiny, tmp_path, capsys):
    over = [o for o in tiny if not o.startswith("teacher.path")]
    over += ["tokenizer_vocab=100000", f"teacher.shape={STUDENT}", "relation.weight=0"]
    over += [f"students=[{{name: s, shape: {STUDENT}}}]"]
    capsys.readouterr()
    assert main(["online", *over]) == 0
    vocabulary = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["info"]["vocabulary"]
    assert 256 < vocabulary < 1000  # a tiny corpus: the byte alphabet and a few hundred merges
    err = capsys.readouterr().err
    assert f"the corpus yields {vocabulary:,} tokens, fewer than tokenizer_vocab=100,000; the models use" in err
