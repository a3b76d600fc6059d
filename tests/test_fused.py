"""The fused, chunked output projection + divergence against the plain one: value and gradient, by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import jsd, kl_div, reverse_kl, sparse_kl
from distill.losses.fused import linear_divergence

PLAIN = {"kl": kl_div, "reverse_kl": reverse_kl, "jsd": lambda s, t, **k: jsd(s, t, beta=0.3, **k)}


def tensors(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 7, 16, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(50, 16, generator=g) / 4).to(dtype).requires_grad_()
    b = (torch.randn(50, generator=g) / 4).to(dtype).requires_grad_()
    teacher = torch.randn(2, 7, 50, generator=g).to(dtype) * 2
    labels = torch.randint(0, 50, (2, 7), generator=g)
    labels[0, :2] = -100
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :3], mask[1, 5:] = False, False  # a prompt and a padded tail: positions dropped at both ends
    return h, w, b, teacher, labels, mask


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("chunk", [3, 1024])
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])  # without CE, forward KL's gradient is the one written by hand
def test_the_fused_loss_and_its_gradient_are_the_plain_ones(divergence, chunk, ce_weight):
    """Positions in chunks of 3 (14 positions: the last chunk is short), a mask, a bias, T = 2, with or without
    a CE mix."""
    h, w, b, teacher, labels, mask = tensors()
    logits = F.linear(h, w, b)
    kept = labels.masked_fill(~mask, -100)
    ce = F.cross_entropy(logits.reshape(-1, 50), kept.reshape(-1), ignore_index=-100, reduction="sum") / mask.sum()
    plain = PLAIN[divergence](logits, teacher, temperature=2.0, mask=mask) + ce_weight * ce
    beta = {"beta": 0.3} if divergence == "jsd" else {}
    fused = linear_divergence(
        h, w, teacher, bias=b, divergence=divergence, temperature=2.0, labels=kept, ce_weight=ce_weight, mask=mask,
        chunk_size=chunk, **beta,
    )  # fmt: skip
    torch.testing.assert_close(fused, plain)
    for a, e in zip(grads(fused, h, w, b), grads(plain, h, w, b)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_teachers_logits_are_read_not_written(temperature):
    """The forward KL's gradient by hand works in place on each chunk's own logits; the caller's stay as they
    were (no mask: nothing copies them on the way), and the value and gradient are the plain ones at T = 1 too."""
    h, w, _, teacher, _, _ = tensors()
    before = teacher.clone()
    plain = kl_div(F.linear(h, w), teacher, temperature=temperature)
    fused = linear_divergence(h, w, teacher, temperature=temperature, chunk_size=4)
    torch.testing.assert_close(fused, plain)
    for a, e in zip(grads(fused, h, w), grads(plain, h, w)):
        torch.testing.assert_close(a, e)
    assert torch.equal(teacher, before)


def test_a_teacher_given_by_hidden_states_and_weight_is_its_logits():
    h, w, _, _, _, mask = tensors()
    th, tw = torch.randn(2, 7, 24), torch.randn(50, 24) / 3
    by_logits = linear_divergence(h, w, F.linear(th, tw), mask=mask, chunk_size=4)
    torch.testing.assert_close(linear_divergence(h, w, th, teacher_weight=tw, mask=mask, chunk_size=4), by_logits)


def test_sparse_kl_from_a_cached_top_k():
    h, w, _, teacher, _, mask = tensors()
    lp = teacher.log_softmax(-1)
    top, ids = lp.topk(8, -1)
    rest = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6))
    plain = sparse_kl(F.linear(h, w), ids, top, rest, mask=mask)
    fused = linear_divergence(h, w, (ids, top, rest), divergence="sparse_kl", mask=mask, chunk_size=5)
    torch.testing.assert_close(fused, plain)
    for a, e in zip(grads(fused, h, w), grads(plain, h, w)):
        torch.testing.assert_close(a, e)


def test_sparse_kl_where_the_student_leaves_almost_nothing_outside_the_top_k():
    """The student's mass outside the teacher's top-k far below fp32's resolution of 1 - sum(top-k)."""
    h, w, _, teacher, _, mask = tensors()
    lp = teacher.log_softmax(-1)
    top, ids = lp.topk(8, -1)
    rest = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6))
    student = F.linear(h, w).detach().scatter_add(-1, ids, torch.full_like(top, 25.0)).requires_grad_()
    plain = sparse_kl(student, ids, top, rest, mask=mask)
    eye = torch.eye(50)  # the student's logits as hidden states times the identity: the fused path sees them
    fused = linear_divergence(student, eye, (ids, top, rest), divergence="sparse_kl", mask=mask, chunk_size=5)
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(grads(fused, student)[0], grads(plain, student)[0])


def test_bf16_inputs_give_bf16_gradients_close_to_fp32():
    """bf16 matmuls, fp32 divergence: within bf16's precision of the fp32 computation."""
    h32, w32, _, teacher, _, mask = tensors()
    h16, w16 = (x.detach().to(torch.bfloat16).requires_grad_() for x in (h32, w32))
    exact = linear_divergence(h32, w32, teacher, mask=mask, chunk_size=4)
    fast = linear_divergence(h16, w16, teacher.bfloat16(), mask=mask, chunk_size=4)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=2e-2, atol=2e-2)
    for a, e in zip(grads(fast, h16, w16), grads(exact, h32, w32)):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e, rtol=5e-2, atol=5e-3)


def test_masked_positions_and_ignored_labels_take_no_part():
    h, w, _, teacher, labels, mask = tensors()
    full = linear_divergence(h, w, teacher, labels=labels, ce_weight=1.0, mask=mask, chunk_size=3)
    changed = teacher.clone()
    changed[1, 5:] += 100.0  # masked positions of the teacher
    same = linear_divergence(h, w, changed, labels=labels, ce_weight=1.0, mask=mask, chunk_size=3)
    torch.testing.assert_close(full, same)
    (g,) = grads(full, h)
    assert torch.all(g[1, 5:] == 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"divergence": "tv"}, "divergence must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"ce_weight": 1.0}, "ce_weight needs the labels"),
        ({"divergence": "sparse_kl"}, "sparse_kl reads a cached"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    h, w, _, teacher, _, _ = tensors()
    with pytest.raises(ValueError, match=message):
        linear_divergence(h, w, teacher, **kwargs)
