"""Activation importance of every prunable structure, from forward passes only (Minitron section 2.2).

Per structure, activations are aggregated over the sequence by the mean of magnitudes and over
the batch by the L2 norm (the paper's best "(batch L2, sequence mean)" choice):
    embedding channels   outputs of every layer's input and post-attention RMSNorm, summed over layers
    MLP neurons          the input of down_proj
    attention heads      the input of o_proj, L2 over each head's head_dim first
    depth                block importance (1 - cos(layer input, layer output)), and the LM-loss
                         increase when that single layer is skipped
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from distill.run import atomic_write

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class Importance:
    embedding: Tensor  # (hidden,)
    neurons: Tensor  # (layers, ffn)
    heads: Tensor  # (layers, heads)
    block: Tensor  # (layers,) 1 - cos(in, out)
    layer_drop_loss: Tensor  # (layers,) LM loss with that layer skipped, minus the base loss
    base_loss: float
    sequences: int

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: getattr(self, k).contiguous() for k in ("embedding", "neurons", "heads", "block", "layer_drop_loss")
        }
        tmp = d / ".importance.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(d / "importance.safetensors")
        atomic_write(d / "importance.json", json.dumps({"base_loss": self.base_loss, "sequences": self.sequences}))

    @classmethod
    def load(cls, directory: str | Path) -> Importance:
        d = Path(directory)
        meta = json.loads((d / "importance.json").read_text())
        tensors: dict[str, Any] = load_file(str(d / "importance.safetensors"))
        return cls(**tensors, **meta)

    @classmethod
    def exists(cls, directory: str | Path) -> bool:
        return (Path(directory) / "importance.json").is_file()


class _SumSq:
    """Accumulates sum over batch of (mean over sequence of |x|)^2; sqrt gives the L2 over batch."""

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def add(self, per_sample: Tensor) -> None:  # (batch, features)
        v = per_sample.float().pow(2).sum(0)
        self.total = v if self.total is None else self.total + v

    def value(self) -> Tensor:
        if self.total is None:
            raise ValueError("no activations were recorded")
        return self.total.sqrt()


def _decoder_layers(model: PreTrainedModel) -> Any:  # an nn.ModuleList of HF decoder layers
    return model.model.layers


@torch.no_grad()
def compute_importance(
    model: PreTrainedModel, batches: Iterable[Tensor], depth_batches: int = 4, progress: bool = True
) -> Importance:
    """Score every channel, neuron, head and layer of `model` on calibration token batches (B, S)."""
    model.eval()
    layers = _decoder_layers(model)
    emb, neurons, heads = _SumSq(), [_SumSq() for _ in layers], [_SumSq() for _ in layers]
    block_sum = torch.zeros(len(layers))
    head_dim = model.config.head_dim if getattr(model.config, "head_dim", None) else None
    n_heads = model.config.num_attention_heads
    handles = []

    def norm_hook(module, args, out):
        emb.add(out.abs().mean(1))

    def down_hook(i):
        def hook(module, args):
            neurons[i].add(args[0].abs().mean(1))

        return hook

    def o_hook(i):
        def hook(module, args):
            x = args[0]
            per_head = x.view(*x.shape[:-1], n_heads, head_dim or x.shape[-1] // n_heads).norm(dim=-1)
            heads[i].add(per_head.mean(1))

        return hook

    def block_hook(i):
        def hook(module, args, kwargs, out):
            x_in = args[0] if args else kwargs["hidden_states"]
            out = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(x_in.float(), out.float(), dim=-1)
            block_sum[i] += (1 - cos).mean().item() * x_in.shape[0]

        return hook

    for i, layer in enumerate(layers):
        handles += [
            layer.input_layernorm.register_forward_hook(norm_hook),
            layer.post_attention_layernorm.register_forward_hook(norm_hook),
            layer.mlp.down_proj.register_forward_pre_hook(down_hook(i)),
            layer.self_attn.o_proj.register_forward_pre_hook(o_hook(i)),
            layer.register_forward_hook(block_hook(i), with_kwargs=True),
        ]
    batches = list(batches)
    n_seq, base_loss_sum = 0, 0.0
    try:
        for ids in tqdm(batches, desc="importance", disable=not progress):
            out = model(input_ids=ids, labels=ids)
            base_loss_sum += out.loss.item() * len(ids)
            n_seq += len(ids)
    finally:
        for h in handles:
            h.remove()
    if depth_batches:
        depth = batches[:depth_batches]
        base = _mean_loss(model, depth)
        drop = torch.tensor(
            [
                _mean_loss(model, depth, skip=i) - base
                for i in tqdm(range(len(layers)), desc="layer drop", disable=not progress)
            ]
        )
    else:  # not scored (a target that keeps every layer needs no depth ranking): NaN, never read as a score
        drop = torch.full((len(layers),), float("nan"))
    return Importance(
        embedding=emb.value(),
        neurons=torch.stack([n.value() for n in neurons]),
        heads=torch.stack([h.value() for h in heads]),
        block=block_sum / n_seq,
        layer_drop_loss=drop,
        base_loss=base_loss_sum / n_seq,
        sequences=n_seq,
    )


def _mean_loss(model: PreTrainedModel, batches: list[Tensor], skip: int | None = None) -> float:
    """Mean LM loss; with `skip`, that decoder layer passes its input through unchanged."""
    handle = None
    if skip is not None:
        layer = _decoder_layers(model)[skip]
        handle = layer.register_forward_hook(
            lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True
        )
    try:
        losses = [model(input_ids=ids, labels=ids).loss.item() * len(ids) for ids in batches]
    finally:
        if handle is not None:
            handle.remove()
    return sum(losses) / sum(len(b) for b in batches)
