"""Taps on named submodules, and the objective's references: teachers by name, mean, routed; projections."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from distill.errors import ConfigError, DistillError
from distill.kd.distiller import Distiller
from distill.kd.objective import Objective, Term, parse_ref, read_precomputed
from distill.kd.taps import Taps


def net(width: int = 4, out: int = 3) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, out))


def test_taps_capture_outputs_and_inputs_without_editing_the_model():
    model = net()
    x = torch.randn(2, 5)
    with Taps(model, ["0", "2:input", "1"]) as taps:
        y = model(x)
        torch.testing.assert_close(taps.values["0"], model[0](x))
        torch.testing.assert_close(taps.values["2:input"], torch.relu(model[0](x)))
        torch.testing.assert_close(model[2](taps.values["1"]), y)
    assert not model[0]._forward_hooks  # removed on exit


def test_wrong_tap_lists_close_matches():
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(DistillError, match=r"no submodule 'encoder.1'; close matches: encoder.0, encoder"):
        Taps(model, ["encoder.1"])
    with pytest.raises(DistillError, match="':input' or ':output'"):
        Taps(model, ["encoder:inside"])


def test_refs():
    assert parse_ref("teacher[b].layer2:input").teacher == "b"
    assert parse_ref("labels").owner == "batch"
    assert parse_ref("student.logits").key == "logits"


def test_weighted_sum_logs_every_term():
    terms = [
        Term(name="a", loss="ce", weight=0.25, inputs=["student.logits", "labels"]),
        Term(name="b", loss="kl", weight=2.0, inputs=["student.logits", "teacher.logits"]),
    ]
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    batch = {"labels": torch.tensor([0, 1, 2, 0])}
    total, values = Objective(terms, ["t"])({"student": {"logits": s}, "teachers": {"t": {"logits": t}}}, batch)
    from distill.losses import cross_entropy, kl_div

    assert set(values) == {"a", "b"}
    expected = 0.25 * cross_entropy(s, batch["labels"]) + 2.0 * kl_div(s, t)
    torch.testing.assert_close(total, expected)


def test_a_teacher_no_term_reads_is_not_run():
    """A cross-entropy baseline given a teacher (`distill lm` with kd_weight 0) spends no teacher forwards; a
    term reading teacher[mean] runs every teacher."""
    student, a, b = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)
    batch = {"inputs": torch.randn(4, 3), "labels": torch.tensor([0, 1, 1, 0])}
    ce = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])
    only_ce = Distiller(student, [ce], {"a": a, "b": b})
    only_ce(batch)
    assert [t.forwards for t in only_ce._teachers] == [0, 0]
    kd = Term(name="kd", loss="kl", inputs=["student.logits", "teacher[mean].logits"])
    both = Distiller(student, [ce, kd], {"a": a, "b": b})
    both(batch)
    assert [t.forwards for t in both._teachers] == [1, 1]
    one = Distiller(
        student, [kd.model_copy(update={"inputs": ["student.logits", "teacher[b].logits"]})], {"a": a, "b": b}
    )
    one(batch)
    assert [t.forwards for t in one._teachers] == [0, 1]


def test_mean_and_routed_teachers():
    term = Term(name="k", loss="hint", inputs=["student.logits", "teacher[mean].logits"], project=False)
    obj = Objective([term], ["a", "b"])
    a, b = torch.zeros(3, 2), torch.ones(3, 2) * 4
    sig = {"student": {"logits": torch.zeros(3, 2)}, "teachers": {"a": {"logits": a}, "b": {"logits": b}}}
    torch.testing.assert_close(obj.resolve("teacher[mean].logits", sig, {}), torch.full((3, 2), 2.0))
    routed = obj.resolve("teacher[routed].logits", sig, {"domain": torch.tensor([1, 0, 1])})
    torch.testing.assert_close(routed[:, 0], torch.tensor([4.0, 0.0, 4.0]))
    with pytest.raises(ConfigError, match="no 'domain' field"):
        obj.resolve("teacher[routed].logits", sig, {})


def test_ambiguous_teacher_is_refused():
    term = Term(name="k", loss="kl", inputs=["student.logits", "teacher.logits"])
    with pytest.raises(ConfigError, match="ambiguous with 2 teachers"):
        Objective([term], ["a", "b"])


def test_hint_projection_is_built_and_trained():
    teacher = net(width=8)
    student = net(width=4)
    hint = Term(name="hint", loss="hint", inputs=["student.0", "teacher.0"])
    distiller = Distiller(student, [hint], {"teacher": teacher})
    batch = {"inputs": torch.randn(6, 5)}
    distiller.build(batch)
    proj = distiller.objective.projections["hint"]
    assert proj.proj.weight.shape == (8, 4)
    params = {id(p) for p in distiller.parameters()}
    assert id(proj.proj.weight) in params and not any(id(p) in params for p in teacher.parameters())
    loss, values = distiller(batch)
    loss.backward()
    assert proj.proj.weight.grad is not None and student[0].weight.grad is not None
    assert set(values) == {"hint"}


def _routed_hint(cached: bool) -> tuple[Distiller, dict, list[nn.Module]]:
    """A student (width 4) and two teachers (width 8, unrelated bases), a hint on the routed teacher, live or
    from signals cached in the batch."""
    torch.manual_seed(0)
    student, teachers = net(width=4), {"a": net(width=8), "b": net(width=8)}
    batch = {"inputs": torch.randn(6, 5), "domain": torch.tensor([0, 1, 0, 0, 1, 0])}
    hint = Term(name="hint", loss="hint", inputs=["student.0", "teacher[routed].0"])
    if not cached:
        return Distiller(student, [hint], teachers), batch, list(teachers.values())
    with torch.no_grad():
        feats = torch.stack([m[0](batch["inputs"]) for m in teachers.values()])
    batch["teacher_0"] = feats[batch["domain"], torch.arange(6)]
    return Distiller(student, read_precomputed([hint]), routed=2), batch, list(teachers.values())


@pytest.mark.parametrize("cached", [False, True])
def test_a_projection_per_routed_teacher_each_trained_by_its_own_samples(cached):
    distiller, batch, teachers = _routed_hint(cached)
    distiller.build(batch)
    maps = [p.proj.weight for p in distiller.objective.projections["hint"].each]
    assert len(maps) == 2 and all(m.shape == (8, 4) for m in maps)
    loss, _ = distiller(batch)
    grads = torch.autograd.grad(loss, maps)
    # by hand: each sample through its own teacher's map, against its own teacher's features
    s = distiller.student[0](batch["inputs"])
    with torch.no_grad():
        t = torch.stack([m[0](batch["inputs"]) for m in teachers])[batch["domain"], torch.arange(6)]
    mapped = torch.stack([s[i] @ maps[d].T for i, d in enumerate(batch["domain"].tolist())])
    expected = torch.autograd.grad(((mapped - t) ** 2).mean(), maps)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
    one = {k: v[batch["domain"] == 0] for k, v in batch.items()}  # teacher a's samples only: b's map gets nothing
    g_a, g_b = torch.autograd.grad(distiller(one)[0], maps)
    assert g_a.abs().sum() > 0 and torch.all(g_b == 0)


def test_averaging_features_of_teachers_trained_apart_is_refused():
    hint = Term(name="hint", loss="hint", inputs=["student.0", "teacher[mean].0"])
    with pytest.raises(ConfigError, match="would average the features of 2 teachers"):
        Objective([hint], ["a", "b"])


def test_balanced_term_is_scaled_to_its_reference_each_step():
    terms = [
        Term(name="kd", loss="hint", inputs=["student.logits", "teacher.logits"], project=False),
        Term(name="h", loss="hint", weight=0.5, inputs=["student.a", "teacher.a"], project=False, balance_with="kd"),
    ]
    s = {"logits": torch.full((2, 2), 3.0, requires_grad=True), "a": torch.full((2, 2), 1.0, requires_grad=True)}
    t = {"logits": torch.zeros(2, 2), "a": torch.zeros(2, 2)}
    total, values = Objective(terms, ["t"])({"student": s, "teachers": {"t": t}}, {})
    assert values["kd"].item() == 9.0 and values["h"].item() == 1.0
    assert total.item() == pytest.approx(9.0 + 0.5 * 9.0)  # h is scaled by 9 / 1
    total.backward()  # the ratio is detached: h's gradient is its own, times the ratio
    torch.testing.assert_close(s["a"].grad, torch.full((2, 2), 0.5 * 9.0 * 2 * 1.0 / 4))


def test_balance_with_must_name_another_term():
    from distill.kd.objective import check_terms

    with pytest.raises(ValueError, match="balance_with names no other term"):
        check_terms([Term(name="a", loss="ce", inputs=["student.logits", "labels"], balance_with="b")])


def test_a_loss_by_dotted_path_is_checked_and_used_like_a_built_in_one(tmp_path, monkeypatch):
    """A user's loss in their own module: its inputs and keyword arguments are checked against its signature, and
    the objective calls it."""
    import sys

    (tmp_path / "my_losses.py").write_text(
        "def scaled_l1(student, teacher, scale=1.0):\n    return scale * (student - teacher.detach()).abs().mean()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_losses", None)
    term = Term(name="l1", loss="my_losses:scaled_l1", inputs=["student.logits", "teacher.logits"], args={"scale": 3})
    objective = Objective([term], ["teacher"])
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    total, terms = objective({"student": {"logits": s}, "teachers": {"teacher": {"logits": t}}}, {})
    assert total.item() == pytest.approx(3 * 1.5) and terms["l1"].item() == pytest.approx(4.5)
    for bad, message in [
        ({"args": {"scal": 3}}, "loss 'my_losses:scaled_l1' has no argument 'scal'; it takes ['scale']"),
        ({"inputs": ["student.logits"]}, "loss 'my_losses:scaled_l1' takes 2 inputs, got 1"),
        ({"loss": "my_losses:nope"}, "loss 'my_losses:nope' cannot be imported"),
        ({"loss": "nodots"}, "loss 'nodots' is neither one of ["),
    ]:
        with pytest.raises((ValueError, ConfigError), match=re.escape(message)):
            Term.model_validate({**term.model_dump(), **bad})


def test_a_stage_removes_the_hooks_its_distiller_put_on_student_and_teacher():
    from accelerate import Accelerator

    from distill.engine import TrainConfig, fit

    def hooks(m: nn.Module) -> int:
        return sum(len(x._forward_hooks) for x in m.modules())

    teacher, student = net(width=8), net(width=4)
    data = {"inputs": torch.randn(16, 5), "labels": torch.randint(0, 3, (16,))}
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False)
    before = hooks(student), hooks(teacher)
    # FitNets: a hint stage, then the main stage with a new distiller on the same models
    for terms in ([Term(name="hint", loss="hint", inputs=["student.0", "teacher.0"])],
                  [Term(name="hint", loss="hint", inputs=["student.1", "teacher.1"]),
                   Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"])]):  # fmt: skip
        distiller = Distiller(student, terms, {"teacher": teacher}).build({k: v[:8] for k, v in data.items()})
        assert hooks(student) + hooks(teacher) > sum(before)
        fit(distiller, data, cfg, stage="s", run=None, accelerator=Accelerator(cpu=True), seed=0, product=student)
        assert (hooks(student), hooks(teacher)) == before
