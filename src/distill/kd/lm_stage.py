"""The distillation stage the LLM recipes share (`distill lm`, `distill minitron`): what trains for an objective,
and how the trained student leaves the run.

What trains is the fused output projection + divergence (`FusedLM`: neither model's full logits ever exist)
wherever the objective allows it, one logit divergence between the student and the teacher (or the teacher's
cached top-k) with an optional cross-entropy on the labels; any other objective (hidden-state hints, relations,
several teachers) trains through the general `Distiller`. The two give the same loss and gradient (tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

from distill.checkpoint import sharded, whole_copy
from distill.errors import DistillError
from distill.kd.distiller import Distiller
from distill.kd.fused import FusedLM
from distill.kd.objective import Term
from distill.models.gguf import OutType, export_gguf
from distill.models.llm import save_hf

DIVERGENCES = {"kl", "reverse_kl", "jsd", "sparse_kl"}
LIVE = ["student.logits", "teacher.logits"]
CACHED = ["student.logits", "batch.topk_ids", "batch.topk_logprobs", "batch.rest_logprob"]  # kd.cache.from_cache's
FUSED_ARGS = {"temperature", "beta", "chunk_size"}


def fusable(terms: list[Term]) -> tuple[Term, Term | None] | None:
    """(the divergence term, the cross-entropy term or None) when the objective is what `FusedLM` computes: one
    weighted logit divergence on the live or cached teacher, its mask the batch's loss mask if any, and at most
    one plain cross-entropy on the labels; else None."""
    kd = [t for t in terms if t.loss in DIVERGENCES]
    ce = [t for t in terms if t.loss == "ce" and t.inputs == ["student.logits", "labels"] and not t.args]
    if len(kd) != 1 or len(ce) > 1 or len(kd) + len(ce) != len(terms):
        return None
    (k,) = kd
    if k.inputs != (CACHED if k.loss == "sparse_kl" else LIVE) or not k.weight or set(k.args) - FUSED_ARGS:
        return None
    if k.mask not in (None, "batch.loss_mask") or k.balance_with is not None:
        return None
    if ce and (ce[0].mask is not None or ce[0].balance_with is not None):
        return None
    return k, (ce[0] if ce else None)


def lm_trainable(
    student: nn.Module, teacher: nn.Module | None, terms: list[Term], fused: bool = True, compile: bool = False
) -> Any:
    """`FusedLM` for an objective it computes (and `fused`), else a `Distiller` over `terms`. `teacher` None:
    the batches carry a cache's top-k signals. `compile`: the fused step's decoders through `torch.compile`."""
    pair = fusable(terms) if fused else None
    if pair is None:
        if compile:
            raise DistillError("compile=true compiles the fused distillation step: this objective is not fused")
        return Distiller(student, terms, {} if teacher is None else {"teacher": teacher})
    kd, ce = pair
    a = kd.args
    return FusedLM(
        student,
        teacher,
        kd.weight,
        compile,
        divergence=kd.loss,
        beta=float(a.get("beta", 0.5)),
        temperature=float(a.get("temperature", 1.0)),
        chunk_size=int(a.get("chunk_size", 1024)),
        ce_weight=ce.weight / kd.weight if ce else 0.0,
    )


def export_lm(
    accelerator: Accelerator,
    run_path: Path,
    student: nn.Module,
    tokenizer: Any,
    card: str | None = None,
    gguf: OutType | None = None,
    stage: str = "student",
) -> dict[str, str]:
    """The trained student as the run's HF directory `model/` (with `card` as its README.md) and, with `gguf`,
    as `model.gguf` for llama.cpp; written by the main process, from the stage's whole saved weights when the
    student is sharded. Returns the products (paths relative to the run)."""
    if accelerator.is_main_process:
        if sharded(accelerator):  # its weights are spread over the processes; the stage saved them whole
            student = whole_copy(student, run_path / stage / "model.safetensors")
        save_hf(student, tokenizer, run_path / "model", card)
        if gguf:
            export_gguf(run_path / "model", run_path / "model.gguf", gguf)
    return {"model": "model", **({"gguf": "model.gguf"} if gguf else {})}
