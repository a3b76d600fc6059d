"""Model specs: bundled archs, users' classes by dotted path, weights from files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from distill.errors import DistillError
from distill.models import ConvNet, ModelSpec, build_model, count_parameters, load_weights


def test_bundled_arch_gets_shape_defaults():
    model = build_model(ModelSpec(arch="convnet", args={"channels": [4, 8]}), num_classes=7, in_channels=3)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 7)


def test_user_class_by_dotted_path_ignores_defaults_it_does_not_take():
    model = build_model(ModelSpec(arch="torch.nn:Linear", args={"in_features": 3, "out_features": 2}), num_classes=10)
    assert isinstance(model, torch.nn.Linear) and model.out_features == 2
    assert isinstance(build_model(ModelSpec(arch="torch.nn.Identity")), torch.nn.Identity)


def test_default_kd_student_is_under_a_tenth_of_the_teacher():
    """The recipe's own defaults, as `distill kd` builds them."""
    from distill.recipes import kd

    cfg = kd.Config()
    shape = {"num_classes": 10, "in_channels": 1}
    teacher, student = build_model(cfg.teachers[0].model, **shape), build_model(cfg.student, **shape)
    assert count_parameters(student) * 10 <= count_parameters(teacher)
    assert student(torch.zeros(2, 1, 28, 28)).shape == teacher(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_weights_load_and_mismatch_is_clear(tmp_path):
    src = ConvNet(channels=(4, 8))
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save({"model": src.state_dict()}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        dst = build_model(ModelSpec(arch="convnet", args={"channels": [4, 8]}, checkpoint=str(tmp_path / name)))
        torch.testing.assert_close(dst.head.weight, src.head.weight)
    with pytest.raises(DistillError, match="does not fit the model"):
        load_weights(ConvNet(channels=(4, 8, 16)), tmp_path / "w.safetensors")
    with pytest.raises(DistillError, match=r"checkpoint .*nope.safetensors does not exist"):
        load_weights(src, tmp_path / "nope.safetensors")


def test_bad_constructor_arguments():
    with pytest.raises(DistillError, match="rejected its arguments"):
        build_model(ModelSpec(arch="convnet", args={"widths": [4]}))


@pytest.mark.bundled
@pytest.mark.slow
def test_two_processes_converting_one_gguf_both_succeed(tmp_path):
    """The second waits for the first's conversion (they once shared one temporary directory and one deleted the
    other's files); one cache entry, no temporary directory left."""
    import os
    import subprocess
    import sys

    code = "from distill.models.llm import hf_dir; print(hf_dir('smollm2-135m'))"
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path), "TQDM_DISABLE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1000:] for _, err in outs]
    (entry,) = {out.strip() for out, _ in outs}
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == sorted(
        [os.path.basename(entry), os.path.basename(entry) + ".lock"]
    )


def test_a_gguf_of_another_architecture_is_one_line(tmp_path, capsys, monkeypatch):
    """A mamba GGUF: transformers printed a 22-line report before its error; now one line (after the conversion's
    progress bar)."""
    import gguf
    import numpy as np

    import distill.models.llm
    from distill.cli import main

    monkeypatch.setattr(distill.models.llm, "CACHE", tmp_path / "cache")
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    for write in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        write()
    capsys.readouterr()
    assert main(["minitron", f"teacher.path={tmp_path / 'mamba.gguf'}", f"run.output_dir={tmp_path / 'runs'}"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("Converting")]
    assert len(lines) == 1, captured.err
    assert lines[0].endswith("mamba.gguf cannot be read as a GGUF language model (architecture mamba: its weights do "
                             "not fit the model transformers builds for it)"), lines[0]  # fmt: skip
    assert captured.out == "" and not (tmp_path / "runs").exists()


def test_a_causal_lm_cut_to_its_first_layers_computes_as_those_layers_and_reloads_cut(tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.models.llm import LlmSpec, load_causal_lm
    from llm_fixtures import save_tiny_llama

    path = save_tiny_llama(tmp_path / "m", layers=3)
    full, _ = load_causal_lm(LlmSpec(path=str(path)))
    cut, _ = load_causal_lm(LlmSpec(path=str(path), layers=2))
    assert len(cut.model.layers) == cut.config.num_hidden_layers == 2
    ids = torch.tensor([[5, 9, 12, 30]])
    hidden = full(ids, output_hidden_states=True).hidden_states[2]  # after the second of three layers
    want = full.lm_head(full.model.norm(hidden))
    torch.testing.assert_close(cut(ids).logits, want)
    cut.save_pretrained(tmp_path / "cut")
    assert len(AutoModelForCausalLM.from_pretrained(tmp_path / "cut").model.layers) == 2
    with pytest.raises(DistillError, match="has 3 layers"):
        load_causal_lm(LlmSpec(path=str(path), layers=4))


def test_an_hf_export_appears_whole_or_leaves_the_older_one(tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.models.llm import LlamaShape, new_llama, save_hf
    from llm_fixtures import char_tokenizer

    tok = char_tokenizer()
    model = new_llama(LlamaShape(layers=1, hidden=16, heads=2, ffn=32), tok)
    out = save_hf(model, tok, tmp_path / "deep" / "model", card="# card\n")
    assert (out / "README.md").read_text() == "# card\n"
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_hf(new_llama(LlamaShape(layers=2, hidden=16, heads=2, ffn=32), tok), Broken(), out)
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1  # the older export, untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no half-written sibling left
