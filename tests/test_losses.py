"""Every loss against a value worked out by hand (closed forms noted beside each)."""

import math

import pytest
import torch

from distill.losses import (
    Projection,
    affinity,
    attention_kl,
    attention_relation,
    attention_transfer,
    cross_entropy,
    hint,
    jsd,
    kl_div,
    reverse_kl,
    rkd_angle,
    rkd_distance,
)

LN3 = math.log(3.0)
# teacher uniform p = [1/2, 1/2]; student q = softmax([0, ln 3]) = [1/4, 3/4]
T_LOGITS = torch.tensor([[0.0, 0.0]])
S_LOGITS = torch.tensor([[0.0, LN3]])


def test_forward_kl_golden():
    # KL(p||q) = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    assert kl_div(S_LOGITS, T_LOGITS).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)


def test_forward_kl_temperature_and_t2_scale():
    # at T=2, q = softmax([0, ln3 / 2]) = [1, sqrt3] / (1 + sqrt3); KL = -ln2 - 1/2 ln(q0 q1); times T^2 = 4
    q0, q1 = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))
    expected = -math.log(2) - 0.5 * math.log(q0 * q1)
    assert kl_div(S_LOGITS, T_LOGITS, temperature=2.0).item() == pytest.approx(4 * expected, rel=1e-6)
    assert kl_div(S_LOGITS, T_LOGITS, temperature=2.0, t2_scale=False).item() == pytest.approx(expected, rel=1e-6)


def test_reverse_kl_golden():
    # KL(q||p) = 1/4 ln(1/2) + 3/4 ln(3/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert reverse_kl(S_LOGITS, T_LOGITS).item() == pytest.approx(expected, rel=1e-6)


def test_jsd_golden_and_endpoints():
    # m = (p + q)/2 = [3/8, 5/8]
    m = [3 / 8, 5 / 8]
    kl_pm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_qm = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert jsd(S_LOGITS, T_LOGITS, beta=0.5).item() == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm, rel=1e-5)  # fp32
    assert jsd(S_LOGITS, T_LOGITS, beta=0.0).item() == pytest.approx(kl_div(S_LOGITS, T_LOGITS).item(), rel=1e-6)
    assert jsd(S_LOGITS, T_LOGITS, beta=1.0).item() == pytest.approx(reverse_kl(S_LOGITS, T_LOGITS).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\], got 1.5"):
        jsd(S_LOGITS, T_LOGITS, beta=1.5)


def test_mask_drops_padded_rows():
    s = torch.stack([S_LOGITS[0], torch.tensor([5.0, -5.0])])[None]  # (1, 2 positions, 2 classes)
    t = torch.stack([T_LOGITS[0], torch.tensor([-5.0, 5.0])])[None]
    mask = torch.tensor([[True, False]])
    assert kl_div(s, t, mask=mask).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert kl_div(s, t).item() > 1.0  # the padded row is far off, so without a mask it dominates


def test_cross_entropy_golden_and_ignore():
    assert cross_entropy(S_LOGITS, torch.tensor([1])).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    logits = torch.stack([S_LOGITS[0], S_LOGITS[0]])[None]
    labels = torch.tensor([[1, 0]])
    assert cross_entropy(logits, labels, mask=torch.tensor([[True, False]])).item() == pytest.approx(-math.log(0.75))
    assert cross_entropy(logits, torch.tensor([[-100, -100]])).item() == 0.0


@pytest.mark.parametrize("fn", [kl_div, reverse_kl, lambda s, t, **k: jsd(s, t, beta=0.3, **k)])
def test_chunked_equals_unchunked_in_value_and_gradient(fn):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 7, 50, generator=g, requires_grad=True)
    t = torch.randn(3, 7, 50, generator=g)
    mask = torch.rand(3, 7, generator=g) > 0.3
    full = fn(s, t, temperature=2.0, mask=mask)
    (g_full,) = torch.autograd.grad(full, s)
    chunked = fn(s, t, temperature=2.0, mask=mask, chunk_size=4)
    (g_chunk,) = torch.autograd.grad(chunked * 3.0, s)  # the upstream gradient must be applied too
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(g_chunk, 3.0 * g_full, rtol=1e-5, atol=1e-7)


def test_chunked_kl_with_bf16_logits_and_a_fully_masked_chunk():
    """bf16 logits (computed in fp32 inside, gradient back in bf16), and a chunk whose rows are all padding:
    it adds nothing to the loss and gets exactly zero gradient."""
    g = torch.Generator().manual_seed(0)
    s32 = torch.randn(2, 8, 40, generator=g)
    t32 = torch.randn(2, 8, 40, generator=g)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 4:] = False  # with chunk_size 4 over the 16 flattened rows, chunks 2 and 4 are all padding
    s = s32.bfloat16().requires_grad_(True)
    loss = kl_div(s, t32.bfloat16(), mask=mask, chunk_size=4)
    (grad,) = torch.autograd.grad(loss, s)
    ref = kl_div(s32.bfloat16().float(), t32.bfloat16().float(), mask=mask)  # the same values, unchunked, fp32
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()
    assert grad[:, 4:].abs().sum() == 0 and grad[:, :4].abs().sum() > 0
    unmasked_only = kl_div(s32[:, :4].bfloat16().float(), t32[:, :4].bfloat16().float())
    assert loss.item() == pytest.approx(unmasked_only.item(), rel=1e-5)  # padding changes neither sum nor count


def test_logit_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\) differ"):
        kl_div(torch.zeros(2, 3), torch.zeros(2, 4))


def test_hint_mse_and_cosine():
    s, t = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    assert hint(s, t).item() == pytest.approx(2.5)  # (1 + 4) / 2
    assert hint(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), kind="cosine").item() == pytest.approx(1.0)
    seq_s = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])
    seq_t = torch.zeros(1, 2, 2)
    assert hint(seq_s, seq_t, mask=torch.tensor([[True, False]])).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="hint kind must be 'mse' or 'cosine', got 'l3'"):
        hint(s, t, kind="l3")


def test_projection_picks_conv_or_linear():
    conv = Projection.between(torch.zeros(2, 16, 7, 7), torch.zeros(2, 64, 7, 7))
    assert conv(torch.zeros(2, 16, 7, 7)).shape == (2, 64, 7, 7)
    lin = Projection.between(torch.zeros(2, 5, 8), torch.zeros(2, 5, 12))
    assert lin(torch.zeros(2, 5, 8)).shape == (2, 5, 12)
    assert Projection.between(torch.zeros(2, 8), torch.zeros(2, 8)) is None


def test_attention_transfer_golden():
    # maps mean_c A^2: student [1, 0], teacher [0, 1], both unit norm: (1-0)^2 + (0-1)^2 = 2, mean 1
    s = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    t = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert attention_transfer(s, t).item() == pytest.approx(2.0)
    assert attention_transfer(s, t, reduction="mean").item() == pytest.approx(1.0)
    # the same disagreement on a 4x larger map: the sum form keeps its size, the mean form shrinks 4x
    s4, t4 = (x.repeat_interleave(2, -1).repeat_interleave(2, -2) for x in (s, t))
    assert attention_transfer(s4, t4).item() == pytest.approx(2.0)
    assert attention_transfer(s4, t4, reduction="mean").item() == pytest.approx(0.25)
    assert attention_transfer(t * 3, t).item() == pytest.approx(0.0, abs=1e-7)  # scale-free
    # different spatial sizes: the student map is pooled to the teacher's
    assert attention_transfer(torch.ones(1, 2, 4, 4), torch.ones(1, 5, 2, 2)).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_kl_golden():
    # one head, one query: teacher attends [1, 0], student [1/2, 1/2]: KL = ln 2
    t = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    s = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    assert attention_kl(s, t).item() == pytest.approx(math.log(2), rel=1e-5)


def test_affinity_golden():
    # Gram(S) = I; Gram(T) = all-ones -> rows [1/sqrt2, 1/sqrt2]; ||diff||^2 = 2(2 - sqrt2); / B^2 = 4
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert affinity(s, t).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)


def test_rkd_distance_golden():
    # S: (0,0),(1,0),(0,1): d = 1, 1, sqrt2 (mean (2+sqrt2)/3); T on a line 0,1,2: d = 1, 2, 1 (mean 4/3)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    ms, mt = (2 + math.sqrt(2)) / 3, 4 / 3
    pairs = [(1 / ms, 1 / mt), (1 / ms, 2 / mt), (math.sqrt(2) / ms, 1 / mt)]  # (0,1), (0,2), (1,2)

    def huber(a, b):
        d = abs(a - b)
        return 0.5 * d * d if d < 1 else d - 0.5

    expected = 2 * sum(huber(a, b) for a, b in pairs) / 9  # each pair twice, diagonal zeros, over 3x3
    assert rkd_distance(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert rkd_distance(s, 7 * s + 3).item() == pytest.approx(0.0, abs=1e-6)  # scale and shift invariant


def test_rkd_angle_golden():
    # right isosceles triangle vs points on a line; cosines by hand:
    # S=(0,0),(1,0),(0,1): at vertex 0 the angle is 90 deg (cos 0); at 1 and 2, 45 deg (cos 1/sqrt2)
    # T=(0,0),(1,0),(2,0): at vertex 1 the angle is 180 deg (cos -1); at 0 and 2, 0 deg (cos 1)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    r = 1 / math.sqrt(2)
    # per vertex j, the 2x2 block over the two other points i, k: diagonals are 1 (same edge), off-diagonal cos
    cos_s, cos_t = {0: 0.0, 1: r, 2: r}, {0: 1.0, 1: -1.0, 2: 1.0}

    def huber(d):
        d = abs(d)
        return 0.5 * d * d if d < 1 else d - 0.5

    # 27 entries: per vertex, 2 off-diagonal entries differ; the rest (diagonals 1 vs 1, zero rows) match
    expected = sum(2 * huber(cos_s[j] - cos_t[j]) for j in range(3)) / 27
    assert rkd_angle(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert rkd_angle(s, 5 * s - 1).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_losses_do_not_backprop_into_the_teacher():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    for fn in (hint, affinity, rkd_distance, rkd_angle):
        fn(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_attention_relation_golden():
    """T=2, one relation head of width 2. Causal: query 0 sees only itself (KL 0); query 1 sees both.
    Student x = [[1, 0], [0, 1]]: row 1 scores [0, 1] / sqrt(2). Teacher x = [[1, 1], [1, 0]]: [1, 1] / sqrt(2)."""
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    e = math.exp(1 / math.sqrt(2))
    q = [1 / (1 + e), e / (1 + e)]
    kl_row1 = 0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1])
    loss = attention_relation(student, teacher, heads=1)
    assert loss.item() == pytest.approx(kl_row1 / 2, rel=1e-6)  # mean over the two query positions
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    # not causal: query 0 sees both keys too. Student row 0: [1, 0] / sqrt 2; teacher row 0: [2, 1] / sqrt 2
    def kl(p_logits, q_logits):
        p = torch.softmax(torch.tensor(p_logits) / math.sqrt(2), 0)
        lq = torch.log_softmax(torch.tensor(q_logits) / math.sqrt(2), 0)
        return float((p * (p.log() - lq)).sum())

    both = (kl([2.0, 1.0], [1.0, 0.0]) + kl([1.0, 1.0], [0.0, 1.0])) / 2
    assert attention_relation(student, teacher, heads=1, causal=False).item() == pytest.approx(both, rel=1e-5)


def test_attention_relation_two_heads_by_hand():
    """Width 4 in 2 relation heads of width 2: each head's scores are scaled by sqrt(2) (the head's width, not
    the whole width's sqrt(4)), and the KL is averaged over heads and query positions. Not causal, T=2.
    Head 0 holds dims 0-1, head 1 dims 2-3."""
    student = torch.tensor([[[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]]])

    def kl_row(p_scores: list[float], q_scores: list[float]) -> float:
        p = [math.exp(v / math.sqrt(2)) for v in p_scores]
        q = [math.exp(v / math.sqrt(2)) for v in q_scores]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    # dot products x_i . x_j per head; rows are queries, over both keys
    head0 = kl_row([2, 1], [1, 0]) + kl_row([1, 1], [0, 1])  # teacher rows [2,1],[1,1]; student [1,0],[0,1]
    head1 = kl_row([1, 1], [4, 0]) + kl_row([1, 2], [0, 1])  # teacher [1,1],[1,2]; student [4,0],[0,1]
    expected = (head0 + head1) / 4
    assert attention_relation(student, teacher, heads=2, causal=False).item() == pytest.approx(expected, rel=1e-6)


def test_attention_relation_heads_widths_and_mask():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 12, generator=g)  # widths differ
    assert attention_relation(t, t, heads=4).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_relation(s, t, heads=4).item() > 0
    with pytest.raises(ValueError, match="3 relation heads do not divide a width of 8"):
        attention_relation(s, t, heads=3)
    # padding: a masked tail changes nothing of what the kept positions see (causal: they never see it)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    cut = attention_relation(s[1:, :3], t[1:, :3], heads=4)
    both = attention_relation(s, t, heads=4, mask=mask)
    full0 = attention_relation(s[:1], t[:1], heads=4)
    assert both.item() == pytest.approx((full0.item() * 5 + cut.item() * 3) / 8, rel=1e-5)
