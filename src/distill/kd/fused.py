"""A causal-LM student distilled without its full logits: `FusedLM(batch) -> (loss, {term: value})`.

The student runs up to its last hidden states (its decoder, not its output head); `linear_divergence` projects
them a chunk of positions at a time onto the vocabulary and compares them with the teacher's, which come from
the teacher's own hidden states and output head the same way (or from a `distill capture` cache in the batch).
The (positions x vocabulary) logits of either model never exist whole: the memory a distillation step adds over
the student's own training is one chunk's. The same loss as `Distiller` with the same objective, value and
gradient (tested), for Hugging Face causal LMs with the usual `model` + `lm_head` layout.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.kd.teachers import HoldsTeachers, LiveTeacher
from distill.losses.fused import linear_divergence


def decoder_and_head(model: nn.Module, who: str) -> tuple[nn.Module, nn.Linear]:
    """The decoder stack (up to the last norm) and the output head of an HF causal LM."""
    decoder, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if decoder is None or not isinstance(head, nn.Linear):
        raise DistillError(f"the {who} is not a causal LM with `model` and `lm_head` (an HF decoder); use fused=false")
    return decoder, head


class FusedLM(HoldsTeachers, nn.Module):
    """The student toward a live teacher (or cached top-k signals in the batch), with the output projection and the
    divergence fused and chunked. `args`: linear_divergence's divergence, beta, temperature, ce_weight, chunk_size.
    The product, optimized and saved, is `student`; the teacher stays outside the parameters (`teachers`).
    `compile`: both decoders run through `torch.compile` (the divergence's chunk loop stays eager)."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, weight: float = 1.0, compile: bool = False, **args: Any
    ) -> None:
        super().__init__()
        self.compiling = compile
        self._compiled: WeakKeyDictionary[nn.Module, Any] = WeakKeyDictionary()  # not registered: not in state
        self.student = student
        decoder_and_head(student, "student")  # checked now; looked up at each step (not registered twice)
        if teacher is not None:
            decoder_and_head(teacher, "teacher")
        self._teachers = [LiveTeacher("teacher", teacher)] if teacher is not None else []  # outside parameters()
        self.weight, self.args = weight, args

    @property
    def product(self) -> nn.Module:
        """What a stage that trains this delivers and saves: the student."""
        return self.student

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        decoder, head = decoder_and_head(self.student, "student")
        hidden = self._decoder(decoder)(input_ids=batch["input_ids"]).last_hidden_state
        if self._teachers:
            live = self._teachers[0]
            live.model.eval()
            live.forwards += 1
            t_decoder, t_head = decoder_and_head(live.model, "teacher")
            with torch.no_grad():
                teacher = self._decoder(t_decoder)(input_ids=batch["input_ids"]).last_hidden_state
            t_weight = t_head.weight
        else:
            teacher, t_weight = (batch["topk_ids"], batch["topk_logprobs"], batch["rest_logprob"]), None
        loss = linear_divergence(
            hidden,
            head.weight,
            teacher,
            teacher_weight=t_weight,
            bias=head.bias,
            labels=batch["labels"],
            mask=batch.get("loss_mask"),
            **self.args,
        )
        return self.weight * loss, {"kd": loss.detach()}

    def _decoder(self, decoder: nn.Module) -> Any:
        """`decoder`, or its compiled form (made once; it shares the decoder's parameters)."""
        if not self.compiling:
            return decoder
        if decoder not in self._compiled:
            self._compiled[decoder] = torch.compile(decoder)
        return self._compiled[decoder]
