"""Losses between per-step signals of two sequence decoders (text recognisers), as in "Text is Text, No
Matter What" (Bhunia et al., 2021): 2-D attention maps step by step, and the affinity between the
character-level features of one word. Inputs are (B, T, ...) with an optional (B, T) mask of kept steps."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.features import _masked_mean


def attention_maps(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Squared L2 distance between the student's and the teacher's attention maps (B, T, H, W) at each
    decoding step, summed over positions and averaged over kept steps. A student map of another size is
    resized bilinearly to the teacher's and renormalised to sum to 1 (it stays a distribution)."""
    b, t = student.shape[:2]
    if student.shape[-2:] != teacher.shape[-2:]:
        flat = F.interpolate(
            student.flatten(0, 1)[:, None].float(), size=teacher.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
        student = (flat / flat.sum((-2, -1), keepdim=True).clamp_min(1e-12)).view(b, t, *teacher.shape[-2:])
    distance = (student.float() - teacher.detach().float()).pow(2).flatten(2).sum(-1)  # (B, T)
    return _masked_mean(distance, mask)


def char_affinity(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Affinity distillation: the (T, T) cosine-similarity matrix among one word's character-level
    features (B, T, D), student against teacher, mean squared difference over pairs of kept steps.
    Widths may differ: only the similarities are compared."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    diff = (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).pow(2)  # (B, T, T)
    if mask is None:
        return diff.mean()
    keep = mask.to(diff.dtype)
    pairs = keep[:, :, None] * keep[:, None, :]
    return (diff * pairs).sum() / pairs.sum().clamp_min(1.0)
