"""Slice a Llama-family model to a smaller shape, keeping the most important structures.

Every tensor is sliced consistently: the residual width (embeddings and a tied or untied head,
every RMSNorm, the inputs of q/k/v and gate/up, the outputs of o and down), MLP neurons per
layer (gate/up rows, down columns), query heads per layer (q rows, o columns; kept evenly within
each grouped-query group, so k/v are untouched), and whole layers. head_dim and rotary are
unchanged. The result is a fresh model built from the new config, so every module agrees with it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.pruning.importance import Importance
from distill.pruning.shape import LlmShape, check_supported

DepthMetric = Literal["lm_loss", "block"]
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def top_k_sorted(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores, in ascending index order."""
    return torch.topk(scores.float(), k).indices.sort().values


def head_groups(scores: Tensor, kv_heads: int, keep: int) -> Tensor:
    """Query heads to keep: the `keep // kv_heads` best within each KV group, in original order."""
    per_group = scores.numel() // kv_heads
    k = keep // kv_heads
    kept = [g * per_group + top_k_sorted(scores[g * per_group : (g + 1) * per_group], k) for g in range(kv_heads)]
    return torch.cat(kept)


def layers_to_keep(imp: Importance, keep: int, metric: DepthMetric) -> Tensor:
    scores = imp.layer_drop_loss if metric == "lm_loss" else imp.block
    if keep < len(scores) and scores.isnan().any():
        raise DistillError(
            f"dropping layers by {metric} needs layer-drop scores, which these importance "
            "scores lack (depth_batches=0): set depth_batches > 0 or depth_metric block"
        )
    return top_k_sorted(scores, keep)


def _head_rows(heads: Tensor, head_dim: int) -> Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


@torch.no_grad()
def prune(model: nn.Module, imp: Importance, target: LlmShape, depth_metric: DepthMetric = "lm_loss") -> nn.Module:
    """A new model of shape `target` holding the most important slices of `model`'s weights."""
    check_supported(model.config)
    shape = LlmShape.of(model.config)
    shape.check_prunable_to(target)
    hid = top_k_sorted(imp.embedding, target.hidden)
    kept_layers = layers_to_keep(imp, target.layers, depth_metric).tolist()
    ffn = {i: top_k_sorted(imp.neurons[i], target.ffn) for i in kept_layers}
    qrows = {
        i: _head_rows(head_groups(imp.heads[i], shape.kv_heads, target.heads), shape.head_dim) for i in kept_layers
    }

    new_index = {old: new for new, old in enumerate(kept_layers)}
    state: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        m = _LAYER.match(name)
        if m is None:
            state[name] = _slice_outer(name, t, hid)
            continue
        old = int(m.group(1))
        if old in new_index:
            rest = m.group(2)
            state[f"model.layers.{new_index[old]}.{rest}"] = _slice_layer(rest, t, hid, ffn[old], qrows[old])

    config = target.apply_to(model.config)
    pruned: Any = type(model)(config).to(dtype=next(model.parameters()).dtype)  # an HF causal LM like `model`
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and target.tied)]
    if missing or unexpected:
        raise RuntimeError(f"pruning left tensors unfilled: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if target.tied:
        pruned.tie_weights()
    return pruned.eval()


def _slice_outer(name: str, t: Tensor, hid: Tensor) -> Tensor:
    if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        return t[:, hid].clone()
    if name.endswith("norm.weight"):
        return t[hid].clone()
    return t.clone()  # e.g. rotary buffers


def _slice_layer(rest: str, t: Tensor, hid: Tensor, ffn: Tensor, qrows: Tensor) -> Tensor:
    weight = rest.endswith(".weight")
    if rest.endswith("layernorm.weight"):
        return t[hid].clone()
    if "q_proj" in rest:
        return t[qrows][:, hid].clone() if weight else t[qrows].clone()
    if "k_proj" in rest or "v_proj" in rest:
        return t[:, hid].clone() if weight else t.clone()
    if "o_proj" in rest:
        return t[hid][:, qrows].clone() if weight else t[hid].clone()
    if "gate_proj" in rest or "up_proj" in rest:
        return t[ffn][:, hid].clone() if weight else t[ffn].clone()
    if "down_proj" in rest:
        return t[hid][:, ffn].clone() if weight else t[hid].clone()
    return t.clone()
