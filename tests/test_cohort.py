"""Several models in one fit: a trainable teacher and the students that learn from it as it trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cohort_job import CE, KD, cohort, data, net
from conftest import ROOT, kill_after_checkpoints, steps_logged_since
from distill.errors import ConfigError
from distill.kd import Cohort, Distiller, Member
from distill.meter import SAMPLES, TOKENS

# the checkout under test first (never whatever distill is installed), then the job's own folder
PATH = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])
ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": PATH}
JOB = [sys.executable, str(ROOT / "tests" / "cohort_job.py")]


def test_students_send_no_gradient_into_the_teacher():
    """The teacher's gradient in the cohort equals its gradient from its own loss alone."""
    batch = {k: v[:16] for k, v in data().items()}
    model = cohort().eval()  # no dropout: two forwards give the same numbers
    loss, terms = model(batch)
    loss.backward()
    together = [p.grad.clone() for p in model.members["teacher"].student.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.members["tiny"].student.parameters())
    model.zero_grad()
    own, _ = model.members["teacher"](batch)
    own.backward()
    alone = [p.grad for p in model.members["teacher"].student.parameters()]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b)
    assert {"teacher/ce", "small/kd", "small/ce", "small/hint", "tiny/kd"} == set(terms)


def test_every_member_is_a_parameter_and_in_the_state_dict_each_with_its_lr():
    model = cohort()
    names = set(model.state_dict())
    assert any(n.startswith("members.teacher.student.") for n in names)
    assert any(n.startswith("members.small.objective.projections.hint") for n in names)  # 8 -> 32 projection
    groups = model.param_groups()
    assert [g.get("lr") for g in groups] == [None, 3e-3, None]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_source_must_be_an_earlier_member():
    with pytest.raises(ConfigError, match="learns from \\['teacher'\\], which are not members listed before it"):
        Cohort({"small": Member(net(8, 1), [KD], sources=["teacher"]), "teacher": Member(net(32, 0), [CE])})


def test_a_distiller_reads_given_signals_of_a_source():
    teacher_logits = torch.randn(4, 3)
    d = Distiller(net(8, 1), [KD], sources=["teacher"])
    loss, _ = d({k: v[:4] for k, v in data().items()}, given={"teacher": {"logits": teacher_logits}})
    assert loss.requires_grad and float(loss.detach()) > 0


@pytest.mark.slow
def test_killed_cohort_resumes_to_the_same_weights_for_all_three(tmp_path):
    subprocess.run([*JOB, str(tmp_path / "straight")], check=True, env=ENV, capture_output=True)
    step = kill_after_checkpoints([*JOB, str(tmp_path / "killed")], ENV, tmp_path / "killed/checkpoints/online")
    since = time.time()
    done = subprocess.run([*JOB, str(tmp_path / "killed")], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert min(steps_logged_since(tmp_path / "killed", "online", since)) > step, "the resume started over"
    for member in ("teacher", "small", "tiny"):
        a, b = (load_file(str(tmp_path / r / "online" / f"{member}.safetensors")) for r in ("straight", "killed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), member
    straight, killed = (
        [{k: v for k, v in json.loads(line).items() if k not in ("time", SAMPLES, TOKENS)}
         for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("straight", "killed")
    )  # fmt: skip
    assert straight == killed
    first = load_file(str(tmp_path / "straight" / "online" / "teacher.safetensors"))
    assert not torch.equal(first["0.weight"], net(32, 0)[0].weight.detach()), "the teacher trained"


def _one_step(model: torch.nn.Module, cfg_over: dict) -> None:
    from accelerate import Accelerator

    from distill.engine import TrainConfig, fit

    cfg = TrainConfig(max_steps=1, batch_size=16, progress=False, **cfg_over)
    fit(model, data(), cfg, stage="s", run=None, accelerator=Accelerator(cpu=True), seed=0)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _net(width: int, seed: int) -> torch.nn.Module:
    """`net` without dropout: two runs of one step compare exactly."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))


def test_gradient_clipping_scales_the_step_to_the_norm_by_hand():
    """One SGD step (lr 1, no momentum) with clip 0.05: the update is g * 0.05 / |g| (|g| is larger here)."""
    from distill.engine import epoch_batches, take

    model, probe = Distiller(_net(8, 1), [CE]), Distiller(_net(8, 1), [CE])
    start = _flat(model)
    probe(take(data(), epoch_batches(256, 16, seed=0, epoch=0)[0]))[0].backward()  # the batch fit takes first
    g = torch.cat([p.grad.flatten() for p in probe.parameters()])
    assert g.norm() > 0.05
    _one_step(model, {"optimizer": "sgd", "lr": 1.0, "momentum": 0.0, "clip_grad_norm": 0.05})
    torch.testing.assert_close(start - _flat(model), g * 0.05 / g.norm())


def _two_members(student_weight: float, student_wd: float | None = None) -> Cohort:
    loud = CE.model_copy(update={"weight": student_weight})
    members = {"teacher": Member(_net(32, 0), [CE]), "small": Member(_net(8, 1), [loud], weight_decay=student_wd)}
    return Cohort(members)


def test_clipping_is_per_member_a_students_huge_gradient_leaves_the_teachers_step_alone():
    quiet, loud = _two_members(1.0), _two_members(1e6)
    clip = {"optimizer": "sgd", "lr": 0.5, "momentum": 0.0, "clip_grad_norm": 0.1}
    _one_step(quiet, clip)
    _one_step(loud, clip)
    a, b = (_flat(c.members["teacher"]) for c in (quiet, loud))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    moved = [(_flat(c.members["small"]) - _flat(_net(8, 1))).norm() for c in (quiet, loud)]
    torch.testing.assert_close(moved[1], torch.tensor(0.05), rtol=1e-4, atol=0)  # lr x clip: the full clipped step
    assert moved[0] < moved[1]


def test_weight_decay_is_per_member():
    """AdamW's decoupled decay: a member with weight_decay 0.5 ends lr * 0.5 * w0 below the same member without,
    after one step; the teacher (stage default 0) is the same in both."""
    plain, decayed = _two_members(1.0), _two_members(1.0, student_wd=0.5)
    w0 = _flat(plain.members["small"])
    for c in (plain, decayed):
        _one_step(c, {"lr": 0.01, "weight_decay": 0.0})
    torch.testing.assert_close(_flat(plain.members["small"]) - _flat(decayed.members["small"]), 0.01 * 0.5 * w0)
    torch.testing.assert_close(_flat(plain.members["teacher"]), _flat(decayed.members["teacher"]), rtol=0, atol=0)


def test_a_late_joiners_lr_schedule_runs_over_its_own_steps(monkeypatch):
    """Students joining at step 2 of 8, every 2nd step: the lrs of their 3 steps are those of a 3-step stage
    (warmup 2 / 2 = 1, cosine over 3), not the tail of the teacher's schedule; the teacher keeps its own."""
    from accelerate import Accelerator

    from distill.engine import TrainConfig, fit

    seen: list[list[float]] = []
    step = torch.optim.AdamW.step

    def record(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    members = {"teacher": Member(_net(32, 0), [CE]), "small": Member(_net(8, 1), [KD], sources=["teacher"])}
    cfg = TrainConfig(max_steps=8, batch_size=16, lr=0.1, warmup_steps=2, progress=False)
    fit(Cohort(members, every=2, start=2), data(), cfg, stage="s", run=None, accelerator=Accelerator(cpu=True), seed=0)
    cohort_lrs = seen[:]
    seen.clear()
    alone = cfg.model_copy(update={"max_steps": 3, "warmup_steps": 1})
    fit(Distiller(_net(8, 1), [CE]), data(), alone, stage="a", run=None, accelerator=Accelerator(cpu=True), seed=0)
    assert [lrs[1] for lrs in cohort_lrs[2::2]] == pytest.approx([lrs[0] for lrs in seen])
    assert [lrs[1] for lrs in cohort_lrs[2::2]] == pytest.approx([0.1, 0.1, 0.05])  # warmup 1, then cosine over 2
    assert [lrs[0] for lrs in cohort_lrs[:2]] == pytest.approx([0.05, 0.1])  # the teacher's own warmup of 2
