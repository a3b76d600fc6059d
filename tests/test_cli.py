"""`distill` end to end through its command line: a run, the report, bad input, kill + resume, 2 processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, kill_after_checkpoints, kill_when, straight_killed_resumed, tiny_overrides
from distill.cli import main
from distill.context import recipes
from distill.meter import SAMPLES, TOKENS

DISTILL = [sys.executable, "-m", "distill.cli"]
ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def strip(records: list[dict]) -> list[dict]:
    """Metrics without wall-clock fields, for comparing two runs."""
    return [{k: v for k, v in r.items() if k not in ("time", SAMPLES, TOKENS)} for r in records]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_through_the_cli(tensor_file, tmp_path, capsys):
    assert main(["kd", *tiny_overrides(tensor_file, tmp_path), "baseline=true"]) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| student alone |" in out and "| student KD |" in out
    run = tmp_path / "tiny"
    result = json.loads((run / "results.json").read_text())
    teacher = result["rows"][0]
    assert teacher["test_accuracy"] > 0.5  # 4 classes: chance is 0.25
    for rel in [
        "config.yaml",
        "metrics.jsonl",
        "report.md",
        "student/model.safetensors",
        "teacher/model.safetensors",
        "plots/student-loss.png",
        "plots/student-eval.png",
        "plots/student-lr.png",
    ]:
        assert (run / rel).is_file(), rel
    assert list((run / "events").glob("events.out.tfevents.*"))
    stages = {r["stage"] for r in read_metrics(run)}
    assert stages == {"teacher", "student-alone", "student"}
    assert {"kd", "ce", "loss", "lr"} <= set(
        next(r for r in read_metrics(run) if r["stage"] == "student" and "loss" in r)
    )


def test_report_is_rebuilt(tensor_file, tmp_path, capsys):
    assert main(["kd", *tiny_overrides(tensor_file, tmp_path)]) == 0
    run = tmp_path / "tiny"
    (run / "report.md").unlink()
    for png in (run / "plots").glob("*.png"):
        png.unlink()
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "## Results" in text and "student KD" in text and "![student loss per term](plots/student-loss.png)" in text
    assert (run / "plots" / "teacher-eval.png").stat().st_size > 1000


def test_recipe_help_lists_fields_with_defaults(capsys):
    assert main(["kd", "--help"]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "[default: 0.002]" in out and "teachers.N.model.arch" in out


@pytest.mark.parametrize("recipe", sorted(recipes()))
def test_every_recipes_help_lists_its_fields(recipe, capsys):
    """Every recipe's --help (minitron, online and capture once recursed without end through a mixture's parts)."""
    assert main([recipe, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: distill {recipe} ") and "run.seed" in out


def test_help_names_a_section_that_holds_itself_once(capsys):
    assert main(["minitron", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(each item: the fields of data)" in out and "data.parts.N." not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["kd", "train.lrr=0.1"], "unknown field 'train.lrr'"),
        (["kd", "train.lr=-1"], "train.lr = -1: Input should be greater than 0"),
        (["kd", "train.epochs=many"], "train.epochs = 'many': Input should be a valid integer"),
        (
            ["kd", "train.schedule=steps"],
            "train.schedule = 'steps': schedule 'steps' is neither one of ['constant', 'cosine', 'linear', 'step']",
        ),
        (["kd", "objective.0.inputs=[student.logits, 'teacher[x].logits']"], "no teacher named 'x'"),
        (["kd", "objective.0.args.temprature=2"], "loss 'kl' has no argument 'temprature'"),
        (["kd", "objective.5.weight=1"], "'5' is not an index of a list of 2 items"),
        (["kd", "--config", "nope.yaml"], "config file nope.yaml does not exist"),
        (["kd", "trainlr"], "is not of the form key.sub=value"),
        (["kd", "data.source=tensors", "data.path=/nonexistent.pt"], "must be a .pt or .safetensors file"),
        (["kd", "data.path=/nonexistent"], "/nonexistent/train-images-idx3-ubyte.gz is missing"),
        (["kd", "student.arch=nosuch.module:Net"], "student.arch = 'nosuch.module:Net': model arch"),
        (["kd", "--resume", "/nonexistent-run"], "is not a run directory"),
        (["report", "/nonexistent-run"], "is not a run directory"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_and_nonzero(args, message, tmp_path, capsys):
    assert main([*args, f"run.output_dir={tmp_path}"] if args[0] == "kd" and "--resume" not in args else args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir()), "a failed start must leave no run directory behind"


def test_wrong_tap_name_lists_close_matches(tensor_file, tmp_path, capsys):
    over = tiny_overrides(tensor_file, tmp_path)
    over.append("objective=[{name: h, loss: hint, inputs: [student.stage_2, teacher.stage2]}]")
    assert main(["kd", *over]) == 2
    err = capsys.readouterr().err
    assert "student has no submodule 'stage_2'; close matches: stage2" in err


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tensor_file, tmp_path):
    # checkpoints every 7 steps, records every 3: a checkpoint holds a log window in progress
    over = [*tiny_overrides(tensor_file, tmp_path), "train.epochs=30", "train.save_every=7", "train.log_every=3"]
    straight_killed_resumed([*DISTILL, "kd"], over, ENV, tmp_path, "checkpoints/student")
    _same_outcome(tmp_path, "killed")


def _same_outcome(tmp_path: Path, name: str) -> None:
    a, b = (json.loads((tmp_path / n / "results.json").read_text())["rows"] for n in ("straight", name))
    assert a == b
    assert strip(read_metrics(tmp_path / name)) == strip(read_metrics(tmp_path / "straight"))
    # TensorBoard holds each step once, as metrics.jsonl does (a resume once appended the dropped steps again)
    assert tensorboard(tmp_path / name, "student/loss") == tensorboard(tmp_path / "straight", "student/loss")


def tensorboard(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point of `tag` in the run's TensorBoard events, in the order they were written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for f in sorted((run / "events").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        points += [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
    return points


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_or_with_a_corrupt_one(tensor_file, tmp_path):
    """Killed before the student's first checkpoint: the stage starts over, and each step is logged once.
    Killed, then the newest checkpoint truncated: resume falls back to the one before and says so."""
    over = [*tiny_overrides(tensor_file, tmp_path), "train.epochs=30", "train.save_every=8", "train.log_every=2"]
    subprocess.run([*DISTILL, "kd", *over, "run.run_name=straight"], check=True, env=ENV, capture_output=True)

    early = [*over, "run.run_name=early", "train.save_every=100000"]
    log = tmp_path / "early/metrics.jsonl"  # read as text: the kill may land mid-line
    kill_when([*DISTILL, "kd", *early], ENV, lambda: log.exists() and '"stage": "student"' in log.read_text(),
              "the student logged a step")  # fmt: skip
    assert not list((tmp_path / "early/checkpoints/student").glob("step-*.pt"))
    subprocess.run([*DISTILL, "kd", "--resume", str(tmp_path / "early")], env=ENV, check=True, capture_output=True)
    steps = [r["step"] for r in read_metrics(tmp_path / "early") if r["stage"] == "student" and "loss" in r]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)

    kill_after_checkpoints(
        [*DISTILL, "kd", *over, "run.run_name=corrupt"], ENV, tmp_path / "corrupt/checkpoints/student"
    )
    newest = sorted((tmp_path / "corrupt/checkpoints/student").glob("step-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:-100])
    done = subprocess.run([*DISTILL, "kd", "--resume", str(tmp_path / "corrupt")], env=ENV, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    _same_outcome(tmp_path, "corrupt")
    assert f"checkpoint {newest.name} is truncated or corrupt; resuming from step-" in done.stderr


@pytest.mark.slow
def test_two_processes_end_with_equal_weights_that_match_one_process_at_the_same_global_batch(tmp_path):
    """2 processes x batch 16 (gradients averaged by DDP) = 1 process x batch 32: the same samples per step."""
    from safetensors.torch import load_file

    job = str(ROOT / "tests" / "ddp_job.py")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port())]  # fmt: skip
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*launch, job, str(tmp_path), "16"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, job, str(tmp_path), "32"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1, single = (load_file(str(tmp_path / f)) for f in
                      ("rank-0-of-2.safetensors", "rank-1-of-2.safetensors", "rank-0-of-1.safetensors"))  # fmt: skip
    from ddp_job import initial

    start = initial().state_dict()
    saved = load_file(str(tmp_path / "run-2" / "s" / "model.safetensors"))  # the main process's product
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between the ranks"
        torch.testing.assert_close(r0[k], single[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(r0[k], saved[k]) and not torch.equal(r0[k], start[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_only_the_main_one_writes(tensor_file, tmp_path):
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "distill.cli",
    ]
    over = [o for o in tiny_overrides(tensor_file, tmp_path) if not o.startswith("run.run_name")]
    done = subprocess.run(
        [*launch, "kd", *over],
        env={**ENV, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(tmp_path.glob("kd-*"))
    assert len(runs) == 1, runs  # both processes used the main process's run name
    run = runs[0]
    result = json.loads((run / "results.json").read_text())
    assert result["processes"] == 2
    assert result["rows"][0]["test_accuracy"] > 0.5
    records = read_metrics(run)
    keys = [(r["stage"], r["step"], "loss" in r) for r in records]
    assert len(keys) == len(set(keys)), "a record was written twice"
    # 256 samples / (2 processes x 32) = 4 steps per epoch, 2 epochs
    assert max(r["step"] for r in records if r["stage"] == "teacher") == 8
    assert len(list((run / "events").iterdir())) == 1
    assert done.stdout.count("| teacher |") == 1


@pytest.mark.bundled
def test_fashion_mnist_subset_through_the_cli(tmp_path, capsys):
    """The shipped Hinton config on a slice of the real data set, through the CLI."""
    args = ["kd", "--config", str(ROOT / "configs" / "kd" / "hinton.yaml"), f"run.output_dir={tmp_path}",
            "data.train_limit=2000", "data.test_limit=500", "train.progress=false", "teachers.0.train.progress=false",
            "teachers.0.train.epochs=1", "train.epochs=1"]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(next(tmp_path.glob("kd-*/results.json")).read_text())["rows"]
    assert rows[0]["model"] == "teacher" and rows[0]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert rows[1]["params"] * 10 <= rows[0]["params"]


def test_two_teachers_with_routing_by_domain(tmp_path, capsys, monkeypatch):
    """Each sample learns from the teacher of its domain (teacher[routed]), end to end: in every training step the
    logits a sample's KD term reads are its own domain's teacher's (domain 0: `low`, 1: `high`)."""
    import torch

    from distill.kd.objective import Objective

    met = []
    resolve = Objective.resolve

    def recording(self, ref, signals, batch):
        out = resolve(self, ref, signals, batch)
        if ref.startswith("teacher[routed]") and torch.is_grad_enabled():
            met.append((out.detach(), batch["domain"], {n: t["logits"] for n, t in signals["teachers"].items()}))
        return out

    monkeypatch.setattr(Objective, "resolve", recording)

    from conftest import make_images

    x_tr, y_tr = make_images(256, seed=0)
    x_te, y_te = make_images(128, seed=1)
    data = {"train_images": x_tr, "train_labels": y_tr, "test_images": x_te, "test_labels": y_te,
            "train_domains": (y_tr >= 2).long(), "test_domains": (y_te >= 2).long()}  # fmt: skip
    path = tmp_path / "domains.pt"
    torch.save(data, path)
    over = [o for o in tiny_overrides(path, tmp_path) if not o.startswith("teachers.0")]
    over += [
        "teachers=[{name: low, model: {args: {channels: [8, 16, 16]}}, train: {epochs: 2, batch_size: 32}},"
        " {name: high, model: {args: {channels: [8, 8, 8]}}, train: {epochs: 2, batch_size: 32}}]",
        "objective=[{name: kd, loss: kl, inputs: [student.logits, 'teacher[routed].logits']},"
        " {name: ce, loss: ce, inputs: [student.logits, labels]}]",
    ]
    assert main(["kd", *over]) == 0
    assert len(met) == 16  # 2 epochs of 8 student steps
    for got, domain, teachers in met:
        assert set(domain.tolist()) == {0, 1}, "a batch holds both domains"
        own = torch.where(domain[:, None] == 0, teachers["low"], teachers["high"])
        assert torch.equal(got, own) and not torch.equal(teachers["low"], teachers["high"])
    rows = json.loads((tmp_path / "tiny" / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["teacher low", "teacher high", "student KD"]
    assert {"kd", "ce"} <= set(
        next(r for r in read_metrics(tmp_path / "tiny") if r["stage"] == "student" and "kd" in r)
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_names_itself(sig, code, tensor_file, tmp_path):
    """SIGTERM (a scheduler's stop) and Ctrl-C end in one line naming the run to resume, and leave it unlocked."""
    from distill.run import RunDir

    over = [*tiny_overrides(tensor_file, tmp_path), "train.epochs=400", "train.save_every=8"]
    # a shell's background job ignores SIGINT, and a child inherits that: give it the default back
    proc = subprocess.Popen([*DISTILL, "kd", *over], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    run = tmp_path / "tiny"
    deadline = time.time() + 120
    while not list(run.glob("checkpoints/student/step-*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1].strip()
    assert proc.returncode == code and err == f"distill: interrupted; continue with --resume {run}", err
    RunDir.open(run).lock().close()


def test_a_resume_removes_what_an_interrupted_save_left(tensor_file, tmp_path):
    assert main(["kd", *tiny_overrides(tensor_file, tmp_path)]) == 0
    left = [tmp_path / "tiny" / "checkpoints" / "student" / ".step-00000099.pt.x1y2.tmp",
            tmp_path / "tiny" / ".results.json.k3j4.tmp"]  # fmt: skip
    for p in left:
        p.write_bytes(b"half a file")
    assert main(["kd", "--resume", str(tmp_path / "tiny")]) == 0
    assert not any(p.exists() for p in left)
