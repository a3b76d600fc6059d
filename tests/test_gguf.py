"""GGUF export through llama.cpp's own converter, checked by reading the file back with llama.cpp."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from distill.cli import main
from distill.models.gguf import export_gguf
from distill.models.llm import LlamaShape, load_tokenizer, new_llama, save_hf

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.bundled  # the bundled tokenizer: a vocabulary llama.cpp's converter knows

TEXT = "It is a truth universally acknowledged, that a single man"


def read_back(gguf, text: str) -> tuple[list[int], np.ndarray]:
    """llama.cpp's tokens of `text` and its logits at every one of them."""
    llm = llama_cpp.Llama(str(gguf), logits_all=True, verbose=False, n_ctx=64, n_threads=1)
    try:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        llm.eval(ids)
        return ids, np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def hf_logits(path, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path).eval()(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A 2-layer Llama with the bundled SmolLM2 tokenizer, random weights, as an HF directory."""
    tok = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    model = new_llama(LlamaShape(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128), tok)
    return save_hf(model, tok, tmp_path_factory.mktemp("hf") / "tiny")


def test_the_gguf_file_reads_in_llama_cpp_as_the_hf_model(tiny_hf, tmp_path):
    out = export_gguf(tiny_hf, tmp_path / "tiny.gguf", "f32")
    ids, got = read_back(out, TEXT)
    assert ids == load_tokenizer(str(tiny_hf))(TEXT, add_special_tokens=False).input_ids
    want = hf_logits(tiny_hf, ids)
    # f32 weights: only llama.cpp's own arithmetic differs (a q8_0 file is ~50x further off)
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()
    assert not list(tmp_path.glob(".*.tmp"))


def test_distill_lm_exports_its_student_for_llama_cpp(tiny_hf, tmp_path, capsys):
    over = [
        f"teacher.path={tiny_hf}",
        "student.shape={layers: 1, hidden: 32, heads: 2, ffn: 64}",
        "data.seq_len=32",
        "data.max_val_sequences=4",
        "train.max_steps=3",
        "train.batch_size=2",
        "train.progress=false",
        "eval_batch_size=2",
        f"run.output_dir={tmp_path}",
        "run.run_name=r",
        "gguf=f32",
    ]
    assert main(["lm", *over]) == 0
    run = tmp_path / "r"
    assert json.loads((run / "results.json").read_text())["products"]["gguf"] == "model.gguf"
    ids, got = read_back(run / "model.gguf", TEXT)
    want = hf_logits(run / "model", ids)  # the GGUF is the trained student, not another model
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()
    assert "for llama.cpp:" in capsys.readouterr().out


def test_no_converter_is_one_line_before_any_run_exists(tiny_hf, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_LLAMA_CPP", str(tmp_path / "nowhere"))
    over = [
        f"teacher.path={tiny_hf}",
        "student.shape={layers: 1, hidden: 32, heads: 2, ffn: 64}",
        "data.seq_len=32",
        f"run.output_dir={tmp_path / 'runs'}",
        "gguf=f16",
    ]
    assert main(["lm", *over]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DISTILL_LLAMA_CPP" in err and "convert_hf_to_gguf.py" in err
    assert not (tmp_path / "runs").exists()
