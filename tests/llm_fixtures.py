"""A tiny random Llama with a character-level tokenizer, saved as an HF directory, and a small corpus."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()  # characters back to text as they were (no spaces between)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def save_tiny_llama(path: Path, layers: int = 3, tied: bool = True) -> Path:
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                      tie_word_embeddings=tied, eos_token_id=1, pad_token_id=1, bos_token_id=None)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_corpus(path: Path) -> Path:
    lines = [f"The {w} sat by the {v} and spoke of {u}.\n" for w in ("cat", "dog", "lady", "captain")
             for v in ("fire", "window", "door") for u in ("rain", "money", "marriage", "letters")]  # fmt: skip
    path.write_text("".join(lines * 3))
    return path
