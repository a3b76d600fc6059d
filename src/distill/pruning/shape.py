"""The shape of a Llama-family model (what pruning changes) and its parameter count."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from distill.errors import DistillError
from distill.models.llm import HF_SIZES

# q/k/v/o projections, gated MLP (gate/up/down), RMSNorm, rotary, GQA, tied or untied embeddings
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def check_supported(config: Any) -> None:
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a in SUPPORTED for a in archs) and getattr(config, "model_type", "") not in (
        "llama",
        "mistral",
        "qwen2",
    ):
        raise DistillError(
            f"architecture {archs if archs else getattr(config, 'model_type', '?')} is not supported for pruning; "
            f"supported: {', '.join(SUPPORTED)}"
        )


@dataclass(frozen=True)
class LlmShape:
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    layers: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @classmethod
    def of(cls, config: Any) -> LlmShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            **{name: getattr(config, hf) for name, hf in HF_SIZES.items()},
            head_dim=head_dim,
            vocab=config.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=bool(getattr(config, "attention_bias", False) or config.model_type == "qwen2"),
        )

    def with_(self, **changes: Any) -> LlmShape:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        per_layer = attn + 3 * h * self.ffn + 2 * h
        head = 0 if self.tied else self.vocab * h
        return self.vocab * h + self.layers * per_layer + h + head

    def check_prunable_to(self, target: LlmShape) -> None:
        """A target must be no larger than this shape anywhere, and keep GQA groups whole."""
        for name in ("hidden", "ffn", "heads", "layers"):
            new, old = getattr(target, name), getattr(self, name)
            if not 0 < new <= old:
                raise DistillError(f"target {name}={new} must be between 1 and the teacher's {old}")
        if target.heads % self.kv_heads:
            raise DistillError(
                f"target heads={target.heads} must be a multiple of the {self.kv_heads} key/value heads "
                "(query heads are pruned evenly within each grouped-query group)"
            )
        if target.hidden % target.heads:
            raise DistillError(
                f"target hidden={target.hidden} must be a multiple of heads={target.heads}: transformers' config "
                "validation refuses other shapes, so the exported model would not load"
            )

    def apply_to(self, config: Any) -> Any:
        """A copy of an HF config with this shape."""
        new = config.__class__.from_dict(config.to_dict())
        for name, hf in HF_SIZES.items():
            setattr(new, hf, getattr(self, name))
        new.head_dim = self.head_dim
        if getattr(new, "layer_types", None):
            new.layer_types = list(new.layer_types)[: self.layers]
        return new

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
