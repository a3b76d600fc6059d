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

from torch import Tensor, nn


class OnlineStudent(nn.Module):
    """`lm` (a Llama-family causal LM) and, with `auxiliary=True`, an `aux` layer fed its last hidden states.

    Taps address `lm.model.layers.N.self_attn.q_proj` (the student's own layers) or `aux.q_proj`, `aux.k_proj`,
    `aux.v_proj`.
    """

    def __init__(self, lm: nn.Module, auxiliary: bool = False) -> None:
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
