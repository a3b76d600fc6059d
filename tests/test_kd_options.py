"""`distill kd`'s protocol options: a validation split, cached teacher signals, FitNets' two stages."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from distill.cli import main
from distill.config import load_config
from distill.data import ImageData, load_images
from distill.kd import Distiller
from distill.models import ModelSpec, build_model
from distill.recipes import kd

FITNETS_TWO_STAGE = "configs/kd/fitnets_two_stage.yaml"


def _run(tensor_file, tmp_path, name, *extra, config=None):
    over = [o for o in tiny_overrides(tensor_file, tmp_path) if not o.startswith("run.run_name")]
    cfg = load_config(kd.Config, config, [*over, f"run.run_name={name}", *extra])
    return kd.run(cfg)


def test_validation_split_is_the_end_of_the_training_split(tensor_file):
    whole = load_images(ImageData(source="tensors", path=str(tensor_file)))
    split = load_images(ImageData(source="tensors", path=str(tensor_file), val_images=56))
    assert len(split.train["labels"]) == 200 and len(split.val["labels"]) == 56
    assert torch.equal(split.val["labels"], whole.train["labels"][200:])
    # normalised with the statistics of what is left to train on, not of the held-out images
    raw = torch.load(tensor_file)["train_images"].float() / 255
    assert torch.allclose(split.mean.flatten(), raw[:200].mean(dim=(0, 2, 3)), atol=1e-5)
    assert whole.val is None


def test_validation_accuracy_is_reported_next_to_the_test_accuracy(tensor_file, tmp_path):
    result = _run(tensor_file, tmp_path, "val", "data.val_images=64")
    data = load_images(ImageData(source="tensors", path=str(tensor_file), val_images=64))
    cfg = load_config(kd.Config, result.run_dir / "config.yaml")
    for row, spec, stage in [(result.rows[0], cfg.teachers[0].model, "teacher"), (result.rows[-1], cfg.student,
                                                                                   "student")]:  # fmt: skip
        model = build_model(spec, num_classes=4, in_channels=1).eval()
        model.load_state_dict(load_file(str(result.run_dir / stage / "model.safetensors")))
        with torch.no_grad():
            for key, split in (("val_accuracy", data.val), ("test_accuracy", data.test)):
                by_hand = (model(split["inputs"]).argmax(-1) == split["labels"]).float().mean().item()
                assert row[key] == round(by_hand, 4), (stage, key)
    assert "val_accuracy |" in (result.run_dir / "report.md").read_text()


def test_precomputed_teacher_signals_train_the_same_student_as_the_live_teacher(tensor_file, tmp_path):
    # the teacher is frozen and the images are not augmented: its signals are the same in every epoch,
    # so reading them from memory must give the same student as running the teacher on every batch
    first = _run(tensor_file, tmp_path, "live")
    ckpt = first.run_dir / "teacher" / "model.safetensors"
    students = {}
    for mode in ("live", "precomputed"):
        r = _run(tensor_file, tmp_path, f"from-ckpt-{mode}", f"teachers.0.model.checkpoint={ckpt}",
                 f"teacher_signals={mode}")  # fmt: skip
        students[mode] = load_file(r.run_dir / "student" / "model.safetensors")
        assert json.loads((r.run_dir / "results.json").read_text())["info"]["teacher_signals"] == mode
    for key, value in students["live"].items():
        torch.testing.assert_close(students["precomputed"][key], value, rtol=1e-4, atol=1e-5)


def test_cached_signals_of_feature_taps(tensor_file, tmp_path):
    # attention transfer reads three feature maps of the teacher: cached as data fields of every image
    cfg = "configs/kd/attention.yaml"
    live = _run(tensor_file, tmp_path, "at-live", config=cfg)
    ckpt = live.run_dir / "teacher" / "model.safetensors"
    cached = _run(tensor_file, tmp_path, "at-cached", f"teachers.0.model.checkpoint={ckpt}",
                  "teacher_signals=precomputed", config=cfg)  # fmt: skip
    again = _run(tensor_file, tmp_path, "at-live-again", f"teachers.0.model.checkpoint={ckpt}", config=cfg)
    assert cached.rows[-1]["test_accuracy"] == pytest.approx(again.rows[-1]["test_accuracy"], abs=1e-6)


def test_cached_signals_take_one_teacher(tmp_path, capsys):
    args = ["kd", "--config", "two_teachers", "teacher_signals=precomputed", f"run.output_dir={tmp_path / 'runs'}"]
    assert main(args) == 2
    assert "teacher_signals=precomputed takes one teacher" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_two_stage_fitnets_trains_hints_first_then_kd(tensor_file, tmp_path, capsys):
    over = [*tiny_overrides(tensor_file, tmp_path), "hint_stage.epochs=1", "hint_stage.batch_size=32",
            "hint_stage.progress=false"]  # fmt: skip
    assert main(["kd", "--config", FITNETS_TWO_STAGE, *over]) == 0
    run = tmp_path / "tiny"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    hints = [r for r in records if r.get("stage") == "student-hints" and "loss" in r]
    kd_log = [r for r in records if r.get("stage") == "student" and "loss" in r]
    assert hints and kd_log
    # stage 1 logs the hint term alone; stage 2 the KD terms and no hint
    assert any("hint" in r for r in hints) and not any("kd" in r or "ce" in r for r in hints)
    assert any("kd" in r for r in kd_log) and not any("hint" in r for r in kd_log)
    assert json.loads((run / "results.json").read_text())["rows"][-1]["model"] == "student KD"


def test_hint_terms_alone_move_only_the_layers_below_the_hint():
    # FitNets' stage 1: the loss reaches the student's stages up to the hinted one, and the regressor
    torch.manual_seed(0)
    student = build_model(ModelSpec(arch="convnet", args={"channels": [4, 8, 8]}), num_classes=4, in_channels=1)
    teacher = build_model(ModelSpec(arch="convnet", args={"channels": [8, 16, 16]}), num_classes=4, in_channels=1)
    hints, rest = kd._split_hints(load_config(kd.Config, FITNETS_TWO_STAGE, []).objective)
    assert [t.name for t in hints] == ["hint"] and [t.name for t in rest] == ["kd", "ce"]
    batch = {"inputs": torch.randn(8, 1, 28, 28), "labels": torch.randint(0, 4, (8,))}
    distiller = Distiller(student, hints, {"teacher": teacher}).build(batch)
    distiller(batch)[0].backward()
    moved = {n.split(".")[1] for n, p in distiller.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    still = {n.split(".")[1] for n, p in distiller.named_parameters() if p.grad is None}
    assert {"stage1", "stage2", "projections"} <= moved and {"stage3", "head"} <= still


def test_hint_stage_without_hint_terms_is_a_one_line_error(tmp_path, capsys):
    assert main(["kd", "--config", "hinton", "hint_stage={epochs: 1}", f"run.output_dir={tmp_path}"]) == 2
    assert "hint_stage needs both hint terms" in capsys.readouterr().err
