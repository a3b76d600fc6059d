"""Bad input, as a new user gives it: one matrix of (input, exit code, a word the message must hold).

Each case ends in one line on stderr (no traceback), the expected exit code, and nothing half-written:
no run directory, no file changed. More cases, per recipe, live beside each recipe's tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides, write_tensor_file
from distill.cli import main
from distill.run import RunDir

KD_CE = "objective=[{name: c, loss: ce, inputs: [student.logits, labels]}]"


def _one_line(capsys, code: int, word: str, args: list[str]) -> str:
    capsys.readouterr()  # what making the input printed
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert word in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _write(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return make


def _texts(name: str, content: bytes) -> Callable[[Path], list[str]]:
    return lambda tmp: ["label", "data.source=files", f"data.paths=[{_write(name, content)(tmp)}]",
                        "teacher={kind: server, model: m, url: 'http://127.0.0.1:9'}"]  # fmt: skip


def _tiny_kd(*extra: str) -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        data = write_tensor_file(tmp / "tiny.pt", 256, 128)
        return ["kd", *[o for o in tiny_overrides(data, tmp) if not o.startswith("run.output_dir")], *extra]

    return args


def _tensors(content: object) -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        path = tmp / "x.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        return ["kd", "data.source=tensors", f"data.path={path}"]

    return args


def _hf(mutate: Callable[[Path], None], recipe: str = "minitron") -> Callable[[Path], list[str]]:
    """minitron (or label, with a local teacher) with a teacher directory: the tiny Llama, then `mutate(directory)`."""

    def args(tmp: Path) -> list[str]:
        from llm_fixtures import save_tiny_llama

        d = save_tiny_llama(tmp / "teacher")
        mutate(d)
        if recipe == "label":
            return [*_texts("in.txt", b"a good film\n")(tmp)[:3], f"teacher={{kind: local, path: '{d}'}}"]
        return ["minitron", f"teacher.path={d}"]

    return args


def _bert_config(d: Path) -> None:
    from transformers import BertConfig

    BertConfig(
        vocab_size=96, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=64
    ).save_pretrained(d)


def _drop_layer(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(d / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k}, str(d / "model.safetensors"))


def _no_tokenizer(d: Path) -> None:
    for f in d.glob("tokenizer*"):
        f.unlink()


def _taken(tmp: Path, *extra: str) -> list[str]:
    (tmp / "taken").write_text("x")
    return [*_tiny_kd(*extra)(tmp)]


CASES = {
    # values: each field checked at config time, before any data is read
    "batch_size=true": (lambda t: ["kd", "train.batch_size=true"], 2, "batch_size = true: expected a number, not a boolean"),
    "epochs=0": (lambda t: ["kd", "train.epochs=0"], 2, "train.epochs = 0: Input should be greater than 0"),
    "negative seed": (lambda t: ["kd", "run.seed=-1"], 2, "run.seed = -1: Input should be greater than or equal to 0"),
    "lr=nan": (lambda t: ["kd", "train.lr=nan"], 2, "train.lr = 'nan': Input should be a finite number"),
    "lr<0": (lambda t: ["kd", "train.lr=-1"], 2, "train.lr = -1: Input should be greater than 0"),
    "temperature=1e-8": (lambda t: ["kd", "objective.0.args.temperature=1e-8"], 2, "temperature 1e-08 must be a finite number >= 0.01"),
    "temperature=0": (lambda t: ["kd", "objective.0.args.temperature=0"], 2, "temperature 0 must be a finite number >= 0.01"),
    "temperature=inf": (lambda t: ["kd", "objective.0.args.temperature=.inf"], 2, "temperature inf must be a finite number"),
    "sampling temperature nan": (lambda t: ["label", "sampling.temperature=.nan"], 2, "sampling.temperature = nan: Input should be a finite number"),
    "partial teacher, bad lr": (lambda t: ["kd", "teachers=[{name: t, train: {lr: -1}}]", KD_CE], 2, "teachers.0.train.lr = -1"),
    "thresholds outside [0, 1]": (lambda t: ["weaklabel", "student.thresholds=[0.5, 1.5]"], 2, "agreement thresholds are shares of the votes, in [0, 1]"),
    "server teacher lacks a model": (lambda t: ["weaklabel", "teacher.kind=server"], 2, "teacher.server.model: Field required"),
    "fp16 on the CPU": (lambda t: ["kd", "run.precision=fp16"], 2, "run.precision=fp16 needs a GPU"),
    "unknown field": (lambda t: ["kd", "train.lrr=0.1"], 2, "unknown field 'train.lrr'"),
    # config files and commands
    "unknown named config": (lambda t: ["kd", "--config", "nosuch"], 2, "config file nosuch does not exist; the named configs of kd: ["),
    "YAML syntax error": (lambda t: ["kd", "--config", str(_write("bad.yaml", "train:\n  lr: 0.1\n  epochs: [1, 2\n")(t))], 2, "is not valid YAML at line 4, column 1"),
    "YAML key given twice": (lambda t: ["kd", "--config", str(_write("twice.yaml", "train:\n  lr: 0.1\ntrain:\n  epochs: 2\n")(t))], 2, "at line 3, column 1: 'train' is given twice in one mapping (the first would be dropped)"),
    "config is binary": (lambda t: ["kd", "--config", str(_write("bin.yaml", b"\xff\xfe\x00")(t))], 2, "is not UTF-8 text"),
    "cp of an unknown config": (lambda t: ["cp", "kd/nosuch", str(t / "x.yaml")], 2, "kd has no named config 'nosuch'"),
    "ls of an unknown recipe": (lambda t: ["ls", "nosuch"], 2, "unknown recipe 'nosuch'"),
    "report of a missing run": (lambda t: ["report", str(t / "nonexistent")], 2, "is not a run directory"),
    "report of a file": (lambda t: ["report", str(_write("file", "x")(t))], 2, "is not a run directory"),
    "resume of a missing run": (lambda t: ["kd", "--resume", str(t / "nonexistent")], 2, "is not a run directory"),
    # users' files
    "binary text file": (_texts("bin.txt", b"\x00\x01\x02binary"), 2, "is a binary file, not text"),
    "latin-1 text file": (_texts("latin.txt", "caf\xe9 cr\xe8me\n".encode("latin-1")), 2, "is not UTF-8 text (byte 3"),
    "JSONL line not JSON": (_texts("bad.jsonl", b'{"text": "fine"}\n{"text": broken}\n'), 2, "line 2 is not JSON"),
    "JSONL line not an object": (_texts("list.jsonl", b'{"text": "fine"}\n[1, 2]\n'), 2, "line 2 is not a JSON object"),
    "JSONL line lacks the field": (_texts("field.jsonl", b'{"text": "fine"}\n{"body": "x"}\n'), 2, "line 2 has no field 'text'"),
    "not a tensor file": (_tensors(b"this is not a pickle"), 2, "is not a tensor file"),
    "a tensor file of a list": (_tensors([1, 2, 3]), 2, "holds a list, not a mapping of named tensors"),
    "tensor file lacks splits": (_tensors({"train_images": torch.zeros(2, 4, 4)}), 2, "lacks ['train_labels'"),
    "random GGUF": (lambda t: ["minitron", f"teacher.path={_write('r.gguf', os.urandom(256))(t)}"], 2, "cannot be read as a GGUF language model"),
    "truncated GGUF": (lambda t: ["minitron", f"teacher.path={_write('t.gguf', b'GGUF' + bytes(24))(t)}"], 2, "cannot be read as a GGUF language model"),
    "HF dir: config of another architecture": (_hf(_bert_config, "label"), 2, "lacks weights the model has (BertLMHeadModel, as its config.json says): bert.embeddings.LayerNorm.bias"),
    "HF dir: a layer's weights missing": (_hf(_drop_layer), 2, "lacks weights the model has (LlamaForCausalLM, as its config.json says): model.layers.1.input_layernorm.weight"),
    "HF dir: corrupt config.json": (_hf(lambda d: (d / "config.json").write_text('{"model_type": "llama",')), 2, "config.json is not a readable JSON config"),
    "HF dir: no tokenizer": (_hf(_no_tokenizer), 2, "has no usable tokenizer"),
    "HF dir: no weights": (_hf(lambda d: (d / "model.safetensors").unlink()), 2, "cannot be loaded as a model"),
    "checkpoint is a text file": (lambda t: _tiny_kd(f"student.checkpoint={_write('w.pt', 'not weights')(t)}")(t), 2, "w.pt is not a weights file"),
    "checkpoint is a directory": (lambda t: _tiny_kd(f"student.checkpoint={t}")(t), 2, "is a directory; give a .safetensors or .pt file"),
    "cache directory is a file": (lambda t: ["minitron", f"teacher.cache={_write('cache', 'x')(t)}"], 2, "must be a directory (with manifest.json in it)"),
    "cp into a missing directory": (lambda t: ["cp", "kd/hinton", str(t / "nonexistent" / "h.yaml")], 2, "nonexistent is not a directory; create it first"),
    "run name too long": (_tiny_kd("run.run_name=" + "x" * 300), 2, "(File name too long: 300 bytes); choose a shorter run.run_name"),
    # checked before training starts
    "MLP on other images": (_tiny_kd("student.arch=mlp", "student.args={in_features: 784, hidden: [8]}"), 2, "student (mlp) does not take inputs of shape (1, 12, 12)"),
    "batch larger than the data": (_tiny_kd("train.batch_size=512"), 2, "train: 256 samples make no full step of batch_size 512"),
    "teacher batch larger than the data": (_tiny_kd("teachers.0.train.batch_size=512"), 2, "teachers.0.train: 256 samples"),
    "output dir is a file": (lambda t: _taken(t, f"run.output_dir={t / 'taken'}"), 2, "cannot be a run directory: a part of its path is a file"),
    "run name is a file": (lambda t: _taken(t, f"run.output_dir={t}", "run.run_name=taken"), 2, "is a file, not a run directory"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_matrix(case, tmp_path, capsys, monkeypatch):
    build, code, word = CASES[case]
    monkeypatch.chdir(tmp_path)
    args = build(tmp_path)
    if args[0] not in ("ls", "cp", "report") and "--resume" not in args and not any("output_dir" in a for a in args):
        args.append(f"run.output_dir={tmp_path / 'runs'}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    _one_line(capsys, code, word, args)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, f"files written or changed: {sorted(set(after) ^ set(before))}"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nonexistent").exists()


def test_a_run_directory_has_one_writer(tensor_file, tmp_path, capsys):
    """While a real `distill` run is training, a second process resuming it is refused; once the first is gone
    (killed: the lock file stays, the lock does not), it may."""
    over = [*tiny_overrides(tensor_file, tmp_path), "train.epochs=400", "train.save_every=8"]
    run = tmp_path / "tiny"
    holder = subprocess.Popen([sys.executable, "-m", "distill.cli", "kd", *over], env={**os.environ},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not list(run.glob("checkpoints/teacher/step-*.pt")) and time.time() < deadline:
            assert holder.poll() is None, "the run ended before the second process could try it"
            time.sleep(0.05)
        _one_line(capsys, 2, "is in use by another distill process", ["kd", "--resume", str(run)])
        assert holder.poll() is None, "the refusal came after the holder had ended"
    finally:
        holder.kill()
        holder.wait()
    RunDir.open(run).lock().close()  # free again


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


@pytest.mark.parametrize(
    "edit, word",
    [
        (("seed: 0", "seed: 1"), "run.seed: 0 -> 1"),
        (
            ("channels:\n    - 4\n    - 8\n    - 8", "channels:\n    - 4\n    - 8\n    - 16"),
            "student.args.channels: [4, 8, 8] -> [4, 8, 16]",
        ),
    ],
)
def test_resume_of_an_edited_config_is_refused(edit, word, tensor_file, tmp_path, capsys):
    """A changed seed would train half the steps on each seed; a changed shape would not fit the checkpoint."""
    assert main(["kd", *tiny_overrides(tensor_file, tmp_path)]) == 0
    config = tmp_path / "tiny" / "config.yaml"
    assert edit[0] in config.read_text()
    config.write_text(config.read_text().replace(*edit))
    before = {p: p.read_bytes() for p in (tmp_path / "tiny").rglob("*") if p.is_file()}
    err = _one_line(capsys, 2, word, ["kd", "--resume", str(tmp_path / "tiny")])
    assert "was edited after the run started" in err
    assert {p: p.read_bytes() for p in (tmp_path / "tiny").rglob("*") if p.is_file()} == before


def test_a_full_disk_is_one_line_and_what_was_saved_resumes(tensor_file, tmp_path, capsys, monkeypatch):
    """The disk fills up while the student saves its second checkpoint: one line naming the path, exit 1; the
    first checkpoint is whole, and once there is room the run resumes from it."""
    import errno

    import distill.checkpoint

    write = distill.checkpoint.atomic_write
    saved = []

    def filling(path, data):
        if len(saved) >= 2:  # the first checkpoint and its checksum went through
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        saved.append(path)
        write(path, data)

    monkeypatch.setattr(distill.checkpoint, "atomic_write", filling)
    over = [*tiny_overrides(tensor_file, tmp_path), "train.save_every=3"]
    err = _one_line(capsys, 1, "No space left on device (", ["kd", *over])
    assert err.endswith(f"; free some space, then continue with --resume {tmp_path / 'tiny'}"), err
    monkeypatch.setattr(distill.checkpoint, "atomic_write", write)
    saved = sorted(str(p.relative_to(tmp_path / "tiny")) for p in (tmp_path / "tiny").rglob("step-*.pt*"))
    assert saved == ["checkpoints/teacher/step-00000008.pt", "checkpoints/teacher/step-00000008.pt.sha256"]
    assert main(["kd", "--resume", str(tmp_path / "tiny")]) == 0


def test_resuming_another_recipes_run_names_its_recipe(tensor_file, tmp_path, capsys):
    assert main(["kd", *tiny_overrides(tensor_file, tmp_path)]) == 0
    run = tmp_path / "tiny"
    err = _one_line(
        capsys, 2, f"is a run of distill kd; resume it with distill kd --resume {run}", ["mtt", "--resume", str(run)]
    )
    assert err == f"distill: error: {run} is a run of distill kd; resume it with distill kd --resume {run}"


def test_a_read_only_output_directory_is_one_line_and_leaves_nothing(tensor_file, tmp_path, capsys, monkeypatch):
    """As root a chmod does not stop writes, so the file system's refusal is simulated where the run directory is
    made: one line, exit 2, and no folder of the path left behind."""
    import errno

    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if "readonly" in str(self):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    out = tmp_path / "readonly" / "runs"
    err = _one_line(capsys, 2, "Read-only file system; choose another run.output_dir",
                    ["kd", *tiny_overrides(tensor_file, out)])  # fmt: skip
    assert err.startswith(f"distill: error: cannot make the run directory {out / 'tiny'}: "), err
    assert not (tmp_path / "readonly").exists()
