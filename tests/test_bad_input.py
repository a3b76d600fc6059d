"""Bad input, as a new user gives it: each ends in one line naming the problem, exit code 2, and
nothing half-written. (More of these, per recipe, live beside each recipe's tests.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import tiny_overrides
from distill.cli import main


def _one_line(capsys, code: int, word: str, args: list[str]) -> str:
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert word in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "args, word",
    [
        (["kd", "train.batch_size=true"], "batch_size = true: expected a number, not a boolean"),
        (["kd", "train.epochs=0"], "train.epochs = 0: Input should be greater than 0"),
        (["kd", "run.seed=-1"], "run.seed = -1: Input should be greater than or equal to 0"),
        (["kd", "train.lr=nan"], "train.lr = 'nan': Input should be a finite number"),
        (["kd", "objective.0.args.temperature=1e-8"], "temperature 1e-08 must be a finite number >= 0.01"),
        (["kd", "objective.0.args.temperature=0"], "temperature 0 must be a finite number >= 0.01"),
        (["kd", "objective.0.args.temperature=.inf"], "temperature inf must be a finite number"),
        (["kd", "teachers=[{name: t, train: {lr: -1}}]", "objective=[{name: c, loss: ce, inputs: [student.logits,"
          " labels]}]"], "teachers.0.train.lr = -1"),
        (["weaklabel", "student.thresholds=[0.5, 1.5]"], "agreement thresholds are shares of the votes, in [0, 1]"),
        (["weaklabel", "teacher.kind=server"], "teacher.server.model: Field required"),
        (["kd", "run.precision=bf16"], "run.precision=bf16 needs a GPU"),
        (["kd", "--config", "nosuch"], "config file nosuch does not exist; the named configs of kd: ["),
        (["cp", "kd/nosuch", "x.yaml"], "kd has no named config 'nosuch'"),
        (["ls", "nosuch"], "unknown recipe 'nosuch'"),
    ],
)  # fmt: skip
def test_config_errors_are_one_line(args, word, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line(capsys, 2, word, [*args, f"run.output_dir={tmp_path / 'runs'}"] if args[0] not in ("ls", "cp") else args)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x.yaml").exists()


def test_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n  epochs: [1, 2\n")
    _one_line(capsys, 2, "is not valid YAML at line 4, column 1", ["kd", "--config", str(bad)])


def test_report_of_what_is_not_a_run_creates_nothing(tmp_path, capsys):
    _one_line(capsys, 2, "is not a run directory", ["report", str(tmp_path / "nonexistent")])
    assert not (tmp_path / "nonexistent").exists()
    (tmp_path / "file").write_text("x")
    _one_line(capsys, 2, "is not a run directory", ["report", str(tmp_path / "file")])


def test_an_output_directory_that_is_a_file(tensor_file, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    over = [*tiny_overrides(tensor_file, tmp_path), f"run.output_dir={tmp_path / 'taken'}"]
    _one_line(capsys, 2, "cannot be a run directory: a part of its path is a file", ["kd", *over])
    _one_line(capsys, 2, "is a file, not a run directory", ["kd", *over[:-1], "run.run_name=taken"])
    assert (tmp_path / "taken").read_text() == "x"


def test_a_run_directory_has_one_writer(tensor_file, tmp_path, capsys):
    """A second process resuming a run in use is refused; once the first is gone (even killed), it may."""
    assert main(["kd", *tiny_overrides(tensor_file, tmp_path)]) == 0
    run = tmp_path / "tiny"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from distill.run import RunDir; import time; held = RunDir({str(run)!r}).lock(); "
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        _one_line(capsys, 2, "is in use by another distill process", ["kd", "--resume", str(run)])
    finally:
        holder.kill()  # a kill leaves the lock file behind, but no lock on it
        holder.wait()
    time.sleep(0.1)
    assert main(["kd", "--resume", str(run)]) == 0


def _files_run(recipe: str, path, tmp_path) -> list[str]:
    return [recipe, "data.source=files", f"data.paths=[{path}]", f"run.output_dir={tmp_path / 'runs'}",
            "teacher={kind: server, model: m, url: 'http://127.0.0.1:9'}"]  # fmt: skip


@pytest.mark.parametrize(
    "name, content, word",
    [
        ("bin.txt", b"\x00\x01\x02binary", "is a binary file, not text"),
        ("latin.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"), "is not UTF-8 text (byte 3"),
        ("bad.jsonl", b'{"text": "fine"}\n{"text": broken}\n', "line 2 is not JSON"),
        ("list.jsonl", b'{"text": "fine"}\n[1, 2]\n', "line 2 is not a JSON object"),
        ("field.jsonl", b'{"text": "fine"}\n{"body": "x"}\n', "line 2 has no field 'text'"),
    ],
)
def test_bad_text_files_are_named_with_the_line(name, content, word, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    _one_line(capsys, 2, word, _files_run("label", path, tmp_path))
    assert not (tmp_path / "runs").exists()


def test_a_file_that_is_not_a_tensor_file(tmp_path, capsys):
    fake = tmp_path / "x.pt"
    fake.write_bytes(b"this is not a pickle")
    _one_line(capsys, 2, "is not a tensor file", ["kd", "data.source=tensors", f"data.path={fake}",
                                                  f"run.output_dir={tmp_path / 'runs'}"])  # fmt: skip
    import torch

    torch.save([1, 2, 3], fake)
    _one_line(capsys, 2, "holds a list, not a mapping of named tensors", ["kd", "data.source=tensors",
              f"data.path={fake}", f"run.output_dir={tmp_path / 'runs'}"])  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_a_truncated_gguf_file(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    _one_line(capsys, 2, "cannot be read as a GGUF language model", ["minitron", f"teacher.path={bad}",
              f"run.output_dir={tmp_path / 'runs'}"])  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_checks_before_any_training(tensor_file, tmp_path, capsys):
    """A net that cannot take the images, or a batch larger than the data, fails before a teacher trains."""
    over = tiny_overrides(tensor_file, tmp_path)
    _one_line(capsys, 2, "student (mlp) does not take inputs of shape (1, 12, 12)",
              ["kd", *over, "student.arch=mlp", "student.args={in_features: 784, hidden: [8]}"])  # fmt: skip
    big = ["kd", *over, "train.batch_size=512"]
    _one_line(capsys, 2, "train: 256 samples make no full step of batch_size 512", big)
    assert not (tmp_path / "tiny").exists()


def test_label_resume_of_a_finished_run_needs_no_server(tmp_path, capsys):
    from fake_openai import FakeServer

    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "a good film", "label": "positive"}\n{"text": "a bad film", "label": "negative"}\n')
    with FakeServer() as server:
        args = ["label", "data.source=files", f"data.paths=[{data}]", "data.test_fraction=0", "splits=[pool]",
                f"run.output_dir={tmp_path}", "run.run_name=r", "sampling.samples=2",
                f"teacher={{kind: server, model: fake-teacher, url: '{server.url}'}}"]  # fmt: skip
        assert main(args) == 0
        asked = len(server.requests)
    capsys.readouterr()
    assert main(["label", "--resume", str(tmp_path / "r")]) == 0  # the server is gone: nothing is missing
    assert asked == 4 and "| pool |" in capsys.readouterr().out
