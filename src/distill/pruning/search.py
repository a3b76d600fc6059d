"""Candidate shapes for a parameter budget (Minitron section 2.3): enumerate, then rank by short distillation."""

from __future__ import annotations

from distill.pruning.shape import LlmShape


def candidates(
    teacher: LlmShape, budget: int, tolerance: float = 0.05, ffn_step: int = 64, hidden_step: int = 64
) -> list[LlmShape]:
    """Shapes within `budget` +- `tolerance` over layers, heads, hidden and ffn; smallest prune first.

    For each (layers, heads, hidden) on a grid, the ffn width that lands nearest the budget is
    taken. hidden is a multiple of both `hidden_step` and heads (transformers requires the latter).
    """
    out: list[LlmShape] = []
    layer_options = sorted({teacher.layers, round(teacher.layers * 0.75), round(teacher.layers * 0.5)}, reverse=True)
    head_options = [h for h in range(teacher.heads, 0, -teacher.kv_heads)][:3]
    for layers in layer_options:
        for heads in head_options:
            for hidden in range(teacher.hidden, 0, -hidden_step):
                if hidden % heads:
                    continue
                base = teacher.with_(layers=layers, heads=heads, hidden=hidden, ffn=ffn_step)
                per_ffn = (
                    teacher.with_(layers=layers, heads=heads, hidden=hidden, ffn=2 * ffn_step).params() - base.params()
                )
                steps = round((budget - base.params()) / per_ffn) + 1
                ffn = steps * ffn_step
                if not ffn_step <= ffn <= teacher.ffn:
                    continue
                shape = base.with_(ffn=ffn)
                if abs(shape.params() - budget) <= tolerance * budget:
                    out.append(shape)
    # least pruning overall first: fewer removed layers, then heads, then hidden
    return sorted(out, key=lambda s: (-s.layers, -s.heads, -s.hidden))


def pick(shapes: list[LlmShape], k: int) -> list[LlmShape]:
    """Up to k candidates spread over the list (it mixes depth- and width-heavy prunes)."""
    if len(shapes) <= k:
        return shapes
    step = (len(shapes) - 1) / (k - 1) if k > 1 else 1
    return [shapes[round(i * step)] for i in range(k)]
