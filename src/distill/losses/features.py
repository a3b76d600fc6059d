"""Losses on intermediate features: hints, attention transfer, attention-map KL, affinity, RKD.

Pure functions of tensors. Width mismatches are bridged by `Projection`, a small learned module
that the objective owns and applies to the student's features before calling `hint`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Projection(nn.Module):
    """Maps student features of width `in_dim` to the teacher's `out_dim` (FitNets' regressor).

    Uses a 1x1 convolution for (B, C, H, W) maps and a linear layer on the last dim otherwise.
    """

    def __init__(self, in_dim: int, out_dim: int, conv: bool) -> None:
        super().__init__()
        self.conv = conv
        self.proj = nn.Conv2d(in_dim, out_dim, 1, bias=False) if conv else nn.Linear(in_dim, out_dim, bias=False)

    @classmethod
    def between(cls, student: Tensor, teacher: Tensor) -> Projection | None:
        """A projection if the feature widths differ, else None."""
        conv = student.dim() == 4
        s_dim, t_dim = (student.shape[1], teacher.shape[1]) if conv else (student.shape[-1], teacher.shape[-1])
        return None if s_dim == t_dim else cls(s_dim, t_dim, conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class RoutedProjection(nn.Module):
    """One `Projection` per teacher; each sample goes through the one of its teacher (`domain`), so each map's
    gradient comes from its own teacher's samples only."""

    def __init__(self, projections: list[Projection]) -> None:
        super().__init__()
        self.each = nn.ModuleList(projections)

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        out = torch.stack([p(x) for p in self.each])  # (teachers, batch, ...): small next to the features
        return out[domain.long(), torch.arange(x.shape[0], device=x.device)]


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` (shape of mask, or more leading dims) over positions where mask is true."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    while m.dim() < values.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(values)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def hint(student: Tensor, teacher: Tensor, kind: str = "mse", mask: Tensor | None = None) -> Tensor:
    """FitNets hint: MSE (mean over elements) or cosine distance (1 - cos over the feature dim).

    For sequences (B, T, D) a (B, T) mask drops padded positions; for maps (B, C, H, W) the
    feature dim of the cosine is C.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"hint: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}; add a projection")
    teacher = teacher.detach()
    if kind == "mse":
        return _masked_mean((student.float() - teacher.float()) ** 2, mask)
    if kind == "cosine":
        dim = 1 if student.dim() == 4 else -1
        return _masked_mean(1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=dim), mask)
    raise ValueError(f"hint kind must be 'mse' or 'cosine', got {kind!r}")


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis' spatial attention: mean_c |A_c|^p, flattened and L2-normalised."""
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer(student: Tensor, teacher: Tensor, p: float = 2.0, reduction: str = "sum") -> Tensor:
    """Attention transfer: squared distance between the normalised attention maps, mean over the batch.

    reduction="sum" sums over positions: the distance of two unit vectors, in [0, 4] whatever the map's
    size, so one weight suits every stage and input size. reduction="mean" averages over positions
    instead, the reference code's form, whose scale falls as 1/(H*W): its beta=1e3 was set for 32x32
    CIFAR maps (about weight 1 here). When the spatial sizes differ, the student's map is average-pooled
    to the teacher's size.
    """
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.adaptive_avg_pool2d(student, (teacher.shape[-2], teacher.shape[-1]))
    diff = (attention_map(student, p) - attention_map(teacher.detach(), p)).pow(2)
    if reduction == "sum":
        return diff.sum(1).mean()
    if reduction == "mean":
        return diff.mean()
    raise ValueError(f"attention_transfer reduction must be 'sum' or 'mean', got {reduction!r}")


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """MiniLM's self-attention distribution transfer: KL(teacher_attn || student_attn).

    Inputs are attention probabilities (B, H, T, T) with the same number of heads; the KL is
    taken per head and query row, then averaged over heads and the (B, T) kept query positions.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"attention_kl: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    p, q = teacher.detach().float(), student.float()
    rows = (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1)  # (B, H, T)
    return _masked_mean(rows.transpose(1, 2), mask)  # mask is (B, T) over queries


def attention_relation(
    student: Tensor, teacher: Tensor, heads: int = 1, causal: bool = True, mask: Tensor | None = None
) -> Tensor:
    """MiniLMv2's self-attention relation transfer, for one relation (query-query, key-key or value-value)
    of one layer: KL(teacher relation || student relation).

    Inputs are that layer's query (or key, or value) vectors, (B, T, W_s) and (B, T, W_t), as its q/k/v
    projections output them: before rotary position embedding, as MiniLMv2 takes them. Each is split
    into `heads` relation heads of width W / heads (so teacher and student may differ in width and in
    attention heads); the relation of a head is softmax(x x^T / sqrt(W / heads)) over the positions a
    query may see (earlier ones when `causal`; `mask` (B, T) drops padding as keys and as queries). The
    KL is averaged over relation heads and kept query positions.
    """
    log_q, log_p = _relations(student, heads, causal, mask), _relations(teacher.detach(), heads, causal, mask)
    rows = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, H, T)
    return _masked_mean(rows.transpose(1, 2), mask)


def _relations(x: Tensor, heads: int, causal: bool, mask: Tensor | None) -> Tensor:
    b, t, w = x.shape
    if w % heads:
        raise ValueError(f"attention_relation: {heads} relation heads do not divide a width of {w}")
    x = x.float().view(b, t, heads, w // heads).transpose(1, 2)  # (B, H, T, d)
    scores = x @ x.transpose(-1, -2) / math.sqrt(w // heads)
    hidden = torch.zeros(t, t, dtype=torch.bool, device=x.device)
    if causal:
        hidden = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
    hidden = hidden.expand(b, 1, t, t)
    if mask is not None:
        hidden = hidden | ~mask.bool()[:, None, None, :]
    # a large finite number, not -inf: hidden entries then give exactly 0 * (finite) in the KL, never nan
    return torch.log_softmax(scores.masked_fill(hidden, -1e9), dim=-1)


def _flat(x: Tensor) -> Tensor:
    return x.float().flatten(1)


def affinity(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori): ||norm(S S^T) - norm(T T^T)||_F^2 / B^2.

    Each (B, B) Gram matrix of flattened features is L2-normalised row-wise.
    """
    s, t = _flat(student), _flat(teacher.detach())
    g_s, g_t = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
    return (g_s - g_t).pow(2).sum() / s.shape[0] ** 2


def _pairwise_distances(x: Tensor) -> Tensor:
    sq = x.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(1e-12).sqrt()
    return d * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))  # exact zeros on the diagonal


def rkd_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance (Park et al.): Huber loss between pairwise distances, each set divided by its mean."""
    s, t = _flat(student), _flat(teacher.detach())
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    d_s, d_t = _pairwise_distances(s), _pairwise_distances(t)
    d_s, d_t = d_s / d_s[off].mean(), d_t / d_t[off].mean()
    return F.smooth_l1_loss(d_s, d_t)  # over all B*B entries (zero diagonal), as the reference code


def _angles(x: Tensor) -> Tensor:
    """cos of the angle at j between i and k: <e_ij, e_kj> for unit vectors e_ij = (x_i - x_j)/|.|."""
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2)).flatten()


def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle (Park et al.): Huber loss between the cosines of all triplet angles."""
    return F.smooth_l1_loss(_angles(_flat(student)), _angles(_flat(teacher.detach())))
