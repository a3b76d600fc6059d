"""The student's output projection and a logit divergence in one chunked pass (Liger-style, in plain PyTorch).

`linear_divergence(hidden, weight, teacher)` is `kl_div(hidden @ weight.T, teacher)` (or reverse KL, the
generalized JSD, sparse KL from a cached top-k; optionally plus cross-entropy on the labels), computed a chunk
of positions at a time: the logits of a chunk are projected, compared and differentiated, and only the
gradients with respect to `hidden` (positions x width) and `weight` (vocabulary x width) are kept. Neither the
student's (positions x vocabulary) logits nor their fp32 softmax exist whole, which is most of the memory an LLM
distillation step adds over a plain forward. The teacher's side is its logits, or its hidden states and output
weight (then its logits are formed a chunk at a time too), or a cached (ids, log-probabilities, rest) top-k.
Matmuls run in the inputs' dtype (bf16 under autocast-style inputs), the divergence and its sums in fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.logits import RowLoss, _forward_kl_rows, _jsd_rows, _reverse_kl_rows, _row_weights, _sparse_kl_rows

Teacher = Tensor | tuple[Tensor, Tensor, Tensor]
DIVERGENCES = ("kl", "reverse_kl", "jsd", "sparse_kl")


def _log_softmax_(x: Tensor) -> Tensor:
    """log_softmax over the last dimension, written over `x` on the CPU: there a fresh (rows x vocabulary) buffer
    costs more in page faults than the pass itself (the kernel reads each element before writing it)."""
    return torch._log_softmax(x, -1, False, out=x) if x.device.type == "cpu" else F.log_softmax(x, -1)


def _forward_kl_and_grad(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """KL(p_teacher || q_student) per row and its gradient with respect to `s`: q - p. Consumes `s` and `t` (this
    chunk's own fp32 logits), written over in place where it can."""
    log_q, log_p = _log_softmax_(s), _log_softmax_(t)
    p = log_p.exp()
    rows = log_p.sub_(log_q).mul_(p).sum(-1)  # sum p (log p - log q)
    return rows, log_q.exp_().sub_(p)


def _sparse_kl_and_grad(s: Tensor, t: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """`_sparse_kl_rows` and its gradient with respect to `s`. With p the teacher's top-k probabilities, r its
    remaining mass, q the student's softmax and Q its mass outside the top-k: q (sum p + r) - p on the top-k,
    minus r q / Q outside it."""
    ids, lp = t[0].long(), t[1].float()
    rest = t[2].float()
    log_q = _log_softmax_(s)  # `s` is this chunk's own: written over
    log_q_top = log_q.gather(-1, ids)
    q_top = log_q_top.exp()
    log_q_rest = torch.log1p(-q_top.double().sum(-1).clamp(max=1.0)).float()
    close = log_q_rest < -9  # 1 - sum(top) loses its digits: the rest's mass summed where it is
    if bool(close.any()):
        l_close = log_q[close]
        outside = l_close.scatter(-1, ids[close], float("-inf"))
        log_q_rest[close] = torch.logsumexp(outside, -1) - torch.logsumexp(l_close, -1)
    q = log_q.exp_()
    p, has_rest = lp.exp(), torch.isfinite(rest)
    p_rest = torch.where(has_rest, rest.exp(), torch.zeros_like(rest))
    tail = torch.where(has_rest, p_rest * (rest - log_q_rest), torch.zeros_like(rest))
    rows = (p * (lp - log_q_top)).sum(-1) + tail
    mass = (p.sum(-1) + p_rest)[:, None]
    ratio = torch.where(has_rest, p_rest * torch.exp(-log_q_rest), torch.zeros_like(rest))  # r / Q (0 / 0: none)
    g = q.mul_(mass - ratio[:, None])  # outside the top-k: q (mass - r / Q)
    return rows, g.scatter_(-1, ids, q_top * mass - p)  # written over, not added: r / Q may be huge


ANALYTIC: dict[RowLoss, Callable[[Tensor, Any], tuple[Tensor, Tensor]]] = {
    _forward_kl_rows: _forward_kl_and_grad,
    _sparse_kl_rows: _sparse_kl_and_grad,
}


class _FusedLinearRowLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, teacher_rows, labels, w, row_loss, temperature, ce_weight, chunk, t2):
        needs = [x is not None and x.requires_grad for x in (h, weight, bias)]
        grad_h = torch.zeros_like(h) if needs[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if needs[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if needs[2] else None
        total = h.new_zeros((), dtype=torch.float32)
        scale = temperature**2 if t2 else 1.0
        by_hand = ANALYTIC.get(row_loss) if any(needs) and not ce_weight else None
        for start in range(0, h.shape[0], chunk):
            sl = slice(start, start + chunk)
            rows_w = w[sl]
            if not bool(rows_w.any()):
                continue
            hc = h[sl].detach()
            logits = F.linear(hc, weight.detach(), None if bias is None else bias.detach())
            if by_hand is not None:  # the gradient written out: fewer passes over the chunk than autograd's
                s = logits.float()
                per_row, g = by_hand(s / temperature if temperature != 1 else s, teacher_rows(sl))
                value = (per_row * rows_w).sum() * scale
                coef = (rows_w * (scale / temperature))[:, None].to(h.dtype)  # on the narrow side of each product
            else:
                coef = None
                with torch.enable_grad():
                    s = logits.float().requires_grad_(any(needs))
                    per_row = row_loss(s / temperature, teacher_rows(sl)) * scale
                    if ce_weight:
                        ce = F.cross_entropy(s, labels[sl], ignore_index=-100, reduction="none")
                        per_row = per_row + ce_weight * ce
                    value = (per_row * rows_w).sum()
                    if any(needs):
                        (g,) = torch.autograd.grad(value, s)
            total += value.detach()
            if any(needs):
                g = g.to(h.dtype)
                if grad_h is not None:
                    grad_h[sl] = g @ weight.detach() if coef is None else (g @ weight.detach()).mul_(coef)
                if grad_w is not None:
                    hs = hc if coef is None else hc * coef
                    if grad_w.dtype == g.dtype:  # summed where it lies: no (vocabulary x width) product buffer
                        grad_w.addmm_(g.T, hs)
                    else:
                        grad_w += (g.T @ hs).float()
                if grad_b is not None:
                    grad_b += g.float().sum(0) if coef is None else (coef.float().T @ g.float())[0]
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h, grad_w, grad_b), ctx.grads = ctx.grads, (None, None, None)  # one backward per forward
        w_dtype, b_dtype = ctx.dtypes
        if grad_h is not None:
            grad_h.mul_(grad_out.to(grad_h.dtype))  # the buffer itself: no second (positions x width) copy
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_out).to(w_dtype)
        if grad_b is not None:
            grad_b = grad_b.mul_(grad_out).to(b_dtype)
        return (grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None)


def linear_divergence(
    hidden: Tensor,
    weight: Tensor,
    teacher: Teacher,
    teacher_weight: Tensor | None = None,
    bias: Tensor | None = None,
    divergence: str = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ce_weight: float = 0.0,
    mask: Tensor | None = None,
    chunk_size: int = 1024,
    t2_scale: bool = True,
) -> Tensor:
    """The mean over kept positions of `divergence(student logits / T, teacher logits / T)` (times T^2 when
    `t2_scale`), plus `ce_weight` times the cross-entropy of the student's logits on `labels` (-100: none), where
    the student's logits are `hidden @ weight.T + bias`, formed and differentiated `chunk_size` positions at a
    time. `hidden` is (..., width); `teacher` is the teacher's logits (..., vocabulary), or its hidden states
    (..., its width) when `teacher_weight` is given, or for `sparse_kl` a cached (ids, log-probs, rest) top-k."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    sparse = divergence == "sparse_kl"
    if sparse != isinstance(teacher, tuple):
        raise ValueError("sparse_kl reads a cached (ids, log-probs, rest) top-k, and only it does")
    if sparse and temperature != 1.0:
        raise ValueError("sparse_kl is taken at temperature 1 (the cache holds the teacher's log-probabilities)")
    if ce_weight and labels is None:
        raise ValueError("ce_weight needs the labels")
    w = _row_weights(lead, mask, h.device)
    flat_labels = None if labels is None else labels.reshape(-1).long()
    flat = _flat_teacher(teacher, lead)
    if mask is not None and not bool(w.all()):  # only the kept positions are projected (prompts, padding: none)
        keep = w.nonzero().squeeze(1)
        h, w = h.index_select(0, keep), w[keep]
        flat_labels = None if flat_labels is None else flat_labels[keep]
        flat = (flat[0][keep], flat[1][keep], flat[2][keep]) if isinstance(flat, tuple) else flat[keep]
    rows = _teacher_rows(flat, teacher_weight, temperature)
    losses: dict[str, RowLoss] = {
        "kl": _forward_kl_rows,
        "reverse_kl": _reverse_kl_rows,
        "jsd": _jsd_rows(beta),
        "sparse_kl": _sparse_kl_rows,
    }
    row_loss = losses[divergence]
    args = (rows, flat_labels, w, row_loss, float(temperature), float(ce_weight), int(chunk_size), t2_scale)
    return _FusedLinearRowLoss.apply(h, weight, bias, *args)


def _flat_teacher(teacher: Teacher, lead: torch.Size) -> Teacher:
    """The teacher's side with one row per position: logits or hidden states (rows x width), or the top-k."""
    if isinstance(teacher, tuple):
        ids, lp, rest = teacher
        return ids.reshape(-1, ids.shape[-1]), lp.reshape(-1, lp.shape[-1]), rest.reshape(-1)
    if teacher.shape[:-1] != lead:
        raise ValueError(f"teacher {tuple(teacher.shape)} and student positions {tuple(lead)} differ")
    return teacher.detach().reshape(-1, teacher.shape[-1])


def _teacher_rows(flat: Teacher, weight: Tensor | None, temperature: float) -> Callable:
    """Rows `sl` of the teacher's side, as the row losses read them: logits / T in fp32, a fresh tensor (the
    analytic row losses write over it), or the cached top-k."""
    if isinstance(flat, tuple):
        return lambda sl: tuple(x[sl] for x in flat)
    tw = None if weight is None else weight.detach()

    def rows(sl: slice) -> Tensor:
        t = flat[sl].to(torch.float32, copy=True) if tw is None else F.linear(flat[sl], tw).float()
        return t.div_(temperature) if temperature != 1 else t

    return rows
