"""Several models in one fit: a trainable teacher and the students that learn from it as it trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cohort_job import CE, KD, cohort, data, net
from conftest import ROOT, kill_after_checkpoints
from distill.errors import ConfigError
from distill.kd import Cohort, Distiller, Member

ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT / "tests")}
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
    kill_after_checkpoints([*JOB, str(tmp_path / "killed")], ENV, tmp_path / "killed" / "checkpoints" / "online")
    assert not (tmp_path / "killed" / "online" / "done.json").exists()
    done = subprocess.run([*JOB, str(tmp_path / "killed")], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for member in ("teacher", "small", "tiny"):
        a, b = (load_file(str(tmp_path / r / "online" / f"{member}.safetensors")) for r in ("straight", "killed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), member
    straight, killed = (
        [{k: v for k, v in json.loads(line).items() if k not in ("time", "samples_per_s", "tokens_per_s")}
         for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("straight", "killed")
    )  # fmt: skip
    assert straight == killed
    first = load_file(str(tmp_path / "straight" / "online" / "teacher.safetensors"))
    assert not torch.equal(first["0.weight"], net(32, 0)[0].weight.detach()), "the teacher trained"
