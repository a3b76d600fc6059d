"""Losses on logits: forward KL, reverse KL, generalized JSD, cross-entropy.

Inputs are (..., C) logits; leading dims (batch, positions) are flattened into rows. A mask of
the leading shape excludes padded positions; the loss is the mean over kept rows. With
`chunk_size`, the divergence is computed a chunk of rows at a time and its gradient is formed
chunk by chunk inside the forward pass, so the fp32 softmax of the whole (rows x vocab) batch
never exists at once: only one chunk of it, plus a gradient buffer in the logits' own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

RowLoss = Callable[[Tensor, Any], Tensor]  # (student rows, teacher rows: logits, or a cached top-k tuple)


# --- per-row divergences on fp32 logits already divided by the temperature ----------------
def _forward_kl_rows(s: Tensor, t: Tensor) -> Tensor:
    """KL(p_teacher || q_student) per row (F.kl_div: one fused element-wise kernel)."""
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)


def _reverse_kl_rows(s: Tensor, t: Tensor) -> Tensor:
    """KL(q_student || p_teacher) per row."""
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)


def _jsd_rows(beta: float) -> RowLoss:
    """Generalized JSD (GKD): beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q.

    p is the teacher, q the student; beta=0 gives forward KL(p||q), beta=1 reverse KL(q||p).
    """

    def rows(s: Tensor, t: Tensor) -> Tensor:
        # the endpoints are the limits of JSD(beta)/beta and JSD(beta)/(1-beta), as in TRL's GKD
        if beta <= 0.0:
            return _forward_kl_rows(s, t)
        if beta >= 1.0:
            return _reverse_kl_rows(s, t)
        log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
        kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
        kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
        return beta * kl_pm + (1 - beta) * kl_qm

    return rows


def _rows(t: Tensor | tuple[Tensor, ...], sl: slice, scale: float) -> Tensor | tuple[Tensor, ...]:
    """Rows `sl` of the teacher's side: logits divided by the temperature, or a tuple taken as it is (a cached
    top-k: ids, log-probabilities and the rest's mass)."""
    return tuple(x[sl] for x in t) if isinstance(t, tuple) else t[sl].float() / scale


class _ChunkedRowLoss(torch.autograd.Function):
    """Sum of `row_loss` over rows with weights; gradient computed a chunk at a time in forward."""

    @staticmethod
    def forward(ctx, s: Tensor, t: Any, weights: Tensor, row_loss: RowLoss, scale: float, chunk: int) -> Tensor:
        grad = torch.zeros_like(s) if s.requires_grad else None
        total = s.new_zeros((), dtype=torch.float32)
        for start in range(0, s.shape[0], chunk):
            sl = slice(start, start + chunk)
            w = weights[sl]
            if not bool(w.any()):
                continue
            with torch.enable_grad():
                sc = s[sl].detach().float().requires_grad_(grad is not None)
                value = (row_loss(sc / scale, _rows(t, sl, scale)) * w).sum()
                if grad is not None:
                    (g,) = torch.autograd.grad(value, sc)
                    grad[sl] = g.to(grad.dtype)
            total += value.detach()
        ctx.grad = grad  # not save_for_backward: backward hands this very buffer on (see there)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        # Hand the buffer itself on, scaled in place, and drop ctx's reference so autograd can
        # keep it as `.grad` instead of copying it: a second full-size buffer is what chunking
        # avoids. Hence one backward per forward (no retain_graph reuse).
        grad, ctx.grad = ctx.grad, None
        if grad is not None:
            grad.mul_(grad_out.to(grad.dtype))
        return grad, None, None, None, None, None


def _row_weights(shape: torch.Size, mask: Tensor | None, device: torch.device) -> Tensor:
    """Weights that turn a sum over rows into the mean over kept rows."""
    if mask is None:
        n = math.prod(shape)
        return torch.full((n,), 1.0 / max(n, 1), device=device)
    m = mask.reshape(-1).to(device=device, dtype=torch.float32)
    return m / m.sum().clamp_min(1.0)


def _divergence(
    student: Tensor,
    teacher: Tensor,
    row_loss: RowLoss,
    temperature: float,
    mask: Tensor | None,
    chunk_size: int | None,
    t2_scale: bool,
) -> Tensor:
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    classes = student.shape[-1]
    s, t = student.reshape(-1, classes), teacher.reshape(-1, classes).detach()
    w = _row_weights(student.shape[:-1], mask, s.device)
    if chunk_size:
        loss = _ChunkedRowLoss.apply(s, t, w, row_loss, float(temperature), int(chunk_size))
    else:
        loss = (row_loss(s.float() / temperature, t.float() / temperature) * w).sum()
    return loss * temperature**2 if t2_scale else loss


def _divergence_loss(rows: RowLoss, doc: str) -> Callable[..., Tensor]:
    """A logit divergence as a pure loss function with the signature the objective reads."""

    def loss(
        student: Tensor,
        teacher: Tensor,
        temperature: float = 1.0,
        mask: Tensor | None = None,
        chunk_size: int | None = None,
        t2_scale: bool = True,
    ) -> Tensor:
        return _divergence(student, teacher, rows, temperature, mask, chunk_size, t2_scale)

    loss.__doc__ = doc
    return loss


kl_div = _divergence_loss(
    _forward_kl_rows, "Forward KL(teacher || student) at `temperature` (Hinton et al.), times T^2 when `t2_scale`."
)
reverse_kl = _divergence_loss(_reverse_kl_rows, "Reverse KL(student || teacher): mode-seeking, as in MiniLLM.")


def jsd(
    student: Tensor,
    teacher: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
    t2_scale: bool = True,
) -> Tensor:
    """Generalized Jensen-Shannon divergence with interpolation `beta` in [0, 1] (GKD)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return _divergence(student, teacher, _jsd_rows(beta), temperature, mask, chunk_size, t2_scale)


def _sparse_kl_rows(s: Tensor, t: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Forward KL per row from the teacher's top-k and its remaining mass (see `sparse_kl`)."""
    ids, lp, rest = t
    ids, lp, rest = ids.long(), lp.float(), rest.float()
    norm = torch.logsumexp(s, -1, keepdim=True)
    log_q = s.gather(-1, ids) - norm
    # the student's mass outside the teacher's top-k, in log space without cancellation
    log_q_rest = torch.logsumexp(s.scatter(-1, ids, float("-inf")), -1) - norm.squeeze(-1)
    top = (lp.exp() * (lp - log_q)).sum(-1)
    tail = torch.where(torch.isfinite(rest), rest.exp() * (rest - log_q_rest), torch.zeros_like(rest))
    return top + tail


def sparse_kl(
    student: Tensor,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    rest_logprob: Tensor,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL(teacher || student) at T=1 from a cached teacher: per position its top-k token ids, their
    log-probabilities (over the full vocabulary) and the log of the probability mass outside them.

    The teacher becomes k+1 outcomes (its top-k tokens, and "any other token"), the student is grouped the
    same way, and this is the KL between the two grouped distributions: exact when k is the vocabulary
    (the rest is empty, log-mass -inf), otherwise a lower bound of the full KL that misses only how the
    student spreads the rest over the other tokens (by the chain rule, rest * KL within the rest).
    `student` is (..., V); the cache's tensors are (..., k) and (...).
    """
    if topk_ids.shape != topk_logprobs.shape or topk_ids.shape[:-1] != student.shape[:-1]:
        raise ValueError(
            f"cached top-k {tuple(topk_ids.shape)} / {tuple(topk_logprobs.shape)} do not match student logits "
            f"{tuple(student.shape)}"
        )
    v, k = student.shape[-1], topk_ids.shape[-1]
    s = student.reshape(-1, v)
    t = (topk_ids.reshape(-1, k), topk_logprobs.reshape(-1, k), rest_logprob.reshape(-1))
    w = _row_weights(student.shape[:-1], mask, s.device)
    if chunk_size:
        return _ChunkedRowLoss.apply(s, t, w, _sparse_kl_rows, 1.0, int(chunk_size))
    return (_sparse_kl_rows(s.float(), t) * w).sum()


def cross_entropy(
    student: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy with integer labels; `ignore_index` labels and masked positions are skipped."""
    logits = student.reshape(-1, student.shape[-1]).float()
    target = labels.reshape(-1).long()
    if mask is not None:
        target = target.masked_fill(~mask.reshape(-1).bool(), ignore_index)
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing)
