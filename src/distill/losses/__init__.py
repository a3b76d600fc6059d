"""Pure loss functions. `LOSSES` is the one registry the objective looks names up in."""

from distill.losses.features import (
    Projection,
    RoutedProjection,
    affinity,
    attention_kl,
    attention_relation,
    attention_transfer,
    hint,
    rkd_angle,
    rkd_distance,
)
from distill.losses.logits import cross_entropy, jsd, kl_div, reverse_kl, sparse_kl
from distill.losses.sequence import attention_maps, char_affinity
from distill.losses.trajectory import trajectory_matching

LOSSES = {
    "kl": kl_div,
    "sparse_kl": sparse_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "ce": cross_entropy,
    "hint": hint,
    "attention_transfer": attention_transfer,
    "attention_kl": attention_kl,
    "attention_relation": attention_relation,
    "affinity": affinity,
    "rkd_distance": rkd_distance,
    "rkd_angle": rkd_angle,
    "attention_maps": attention_maps,
    "char_affinity": char_affinity,
}
# losses whose student input may pass through a learned projection to the teacher's width
PROJECTED = {"hint"}

__all__ = [
    "LOSSES",
    "PROJECTED",
    "Projection",
    "RoutedProjection",
    "affinity",
    "attention_kl",
    "attention_maps",
    "char_affinity",
    "attention_relation",
    "attention_transfer",
    "cross_entropy",
    "hint",
    "jsd",
    "kl_div",
    "reverse_kl",
    "rkd_angle",
    "rkd_distance",
    "sparse_kl",
    "trajectory_matching",
]
