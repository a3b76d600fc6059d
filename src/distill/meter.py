"""What a stage's progress shows and logs: running sums of the loss terms, samples and tokens between two
log records (throughput counts training time only), and the progress bar's loss and throughput."""

from __future__ import annotations

import time
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

# throughput under its own prefix, so that the report never mistakes it for a loss term
SAMPLES, TOKENS = "speed/samples_per_s", "speed/tokens_per_s"


def postfix(record: dict[str, float]) -> dict[str, str]:
    """The progress bar's loss and throughput: tokens/s for language models, else samples/s."""
    unit, key = ("tok_s", TOKENS) if TOKENS in record else ("samples_s", SAMPLES)
    rate = record[key]  # slow steps (an MTT iteration: seconds) would show 0 at whole numbers
    return {"loss": f"{record['loss']:.4f}", unit: f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"}


class Window:
    """Running sums of loss terms, samples and tokens (language models) between two log records."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count, self.samples, self.tokens, self.elapsed = 0, 0, 0, 0.0
        if saved is not None:  # a checkpoint's: the sums go on; the clock starts now
            self.sums = {k: v.clone() for k, v in saved["sums"].items()}
            self.count, self.samples, self.tokens = saved["count"], saved["samples"], saved.get("tokens", 0)
        self.restart()

    def state(self) -> dict[str, Any]:
        return {
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "count": self.count,
            "samples": self.samples,
            "tokens": self.tokens,
        }

    def restart(self) -> None:
        self.t0 = time.perf_counter()

    def add(self, loss: Tensor, terms: dict[str, Tensor], samples: int, tokens: int = 0) -> None:
        for k, v in {"loss": loss, **terms}.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1
        self.samples += samples
        self.tokens += tokens
        now = time.perf_counter()
        self.elapsed += now - self.t0
        self.t0 = now

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        names = list(self.sums)
        values = torch.stack([self.sums[k] for k in names]) / max(self.count, 1)
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values.to(accelerator.device), reduction="mean")
        record = {k: float(v) for k, v in zip(names, values.tolist())}
        record[SAMPLES] = self.samples / max(self.elapsed, 1e-9)
        if self.tokens:
            record[TOKENS] = self.tokens / max(self.elapsed, 1e-9)
        self.sums, self.count, self.samples, self.tokens, self.elapsed = {}, 0, 0, 0, 0.0
        return record
