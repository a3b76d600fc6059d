"""A student causal LM for online distillation, optionally with an auxiliary layer on top.

ERNIE 3.0 Titan's auxiliary layer distillation: during distillation the student carries one extra
layer above its last one, and the attention-relation loss is taken at that layer instead of at the
student's own last layer, which then learns through it rather than being pinned to the teacher's
relations. The auxiliary layer is dropped when the student is saved: the exported model is `lm`.

Only the auxiliary layer's attention inputs enter the relation loss, so the layer holds what they
need (its input RMSNorm and query / key / value projections, shaped like the student's own layers);
its attention output and MLP would receive no gradient and are not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from distill.errors import DistillError
from distill.kd.objective import Term

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class OnlineStudent(nn.Module):
    """`lm` (a Llama-family causal LM) and, with `auxiliary=True`, an `aux` layer fed its last hidden states.

    Taps address `lm.model.layers.N.self_attn.q_proj` (the student's own layers) or `aux.q_proj`, `aux.k_proj`,
    `aux.v_proj`.
    """

    def __init__(self, lm: PreTrainedModel, auxiliary: bool = False) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        self.lm = lm
        self.aux = None
        if auxiliary:
            c = lm.config
            head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            self.aux = nn.ModuleDict(
                {
                    "norm": LlamaRMSNorm(c.hidden_size, eps=c.rms_norm_eps),
                    "q_proj": nn.Linear(c.hidden_size, c.num_attention_heads * head_dim, bias=False),
                    "k_proj": nn.Linear(c.hidden_size, c.num_key_value_heads * head_dim, bias=False),
                    "v_proj": nn.Linear(c.hidden_size, c.num_key_value_heads * head_dim, bias=False),
                }
            )
            self._last: list[Tensor] = []
            lm.model.layers[-1].register_forward_hook(self._keep_last)

    def _keep_last(self, module: nn.Module, args: tuple, output) -> None:
        self._last[:] = [output[0] if isinstance(output, tuple) else output]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask)
        if self.aux is not None:  # the relation loss reads its projections through taps
            x = self.aux["norm"](self._last[0])
            for name in ("q_proj", "k_proj", "v_proj"):
                self.aux[name](x)
        return out


RELATIONS = {"qq": "q_proj", "kk": "k_proj", "vv": "v_proj"}  # MiniLMv2's relations and the projections they read


def lm_of(model: nn.Module) -> PreTrainedModel:
    """The causal LM itself (an OnlineStudent's `lm`)."""
    return cast("PreTrainedModel", model.lm if isinstance(model, OnlineStudent) else model)


def layer_path(model: nn.Module, index: int) -> str:
    """The module path of decoder layer `index` (negative: from the top) of a causal LM or an OnlineStudent."""
    prefix = "lm." if isinstance(model, OnlineStudent) else ""
    return f"{prefix}model.layers.{index % lm_of(model).config.num_hidden_layers}"


def relation_terms(
    source: nn.Module,
    student: nn.Module,
    ref: str,
    relations: Sequence[str],
    weight: float,
    heads: int,
    source_layer: int = -1,
    student_layer: int = -1,
) -> list[Term]:
    """MiniLMv2 self-attention relation terms between one layer of `source` (read as `ref`, e.g. `teacher`) and
    the student's auxiliary layer when it has one, else its layer `student_layer`. The relations read the query /
    key / value projections' outputs, before rotary embedding."""
    src = layer_path(source, source_layer)
    aux = isinstance(student, OnlineStudent) and student.aux is not None
    own = "aux" if aux else layer_path(student, student_layer) + ".self_attn"
    return [
        Term(
            name=f"rel_{rel}",
            loss="attention_relation",
            weight=weight,
            args={"heads": heads},
            inputs=[f"student.{own}.{RELATIONS[rel]}", f"{ref}.{src}.self_attn.{RELATIONS[rel]}"],
        )
        for rel in relations
    ]


def check_relation_heads(shapes: dict[str, dict[str, Any]], relations: Sequence[str], heads: int) -> None:
    """Relation heads must divide the width of every projection they split (shapes: hidden, heads, kv_heads)."""
    for n, shape in shapes.items():
        head_dim = shape["hidden"] // shape["heads"]
        widths = {"q_proj": shape["heads"] * head_dim, "k_proj": (shape["kv_heads"] or shape["heads"]) * head_dim}
        widths["v_proj"] = widths["k_proj"]
        for rel in relations:
            if widths[RELATIONS[rel]] % heads:
                raise DistillError(
                    f"relation.heads={heads} does not divide {n}'s {RELATIONS[rel]} width {widths[RELATIONS[rel]]}; "
                    "choose a divisor of every width"
                )
