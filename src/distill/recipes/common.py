"""What every recipe starts with: processes (accelerate), the run directory, the seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from pydantic import BaseModel, Field

from distill.config import Section, dump
from distill.run import RunDir, new_run_name


class RuntimeConfig(Section):
    """Where a run goes and how it runs."""

    output_dir: str = Field("runs", description="parent folder of run directories")
    run_name: str | None = Field(None, description="run directory name (default: <recipe>-<time>)")
    seed: int = Field(0, description="seeds every random stream of the run")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision (bf16/fp16 need a GPU)")
    cpu: bool = Field(False, description="stay on the CPU even when a GPU is present")


@dataclass
class Context:
    run: RunDir
    accelerator: Accelerator
    seed: int

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Save results.json and the report (main process only), close the run, return the result."""
        result = {**result, "processes": self.accelerator.num_processes, "is_main": self.accelerator.is_main_process}
        self.run.write_json("results.json", result)
        if self.accelerator.is_main_process:
            from distill.report import write_report

            write_report(self.run.path)
        self.run.close()
        return result

    def seed_stage(self, offset: int) -> int:
        """Reseed before each stage, so a stage starts the same whether or not earlier ones were skipped."""
        seed = self.seed + offset
        set_seed(seed)
        return seed


def start(recipe: str, cfg: BaseModel, runtime: RuntimeConfig, resume: str | Path | None = None) -> Context:
    # without a GPU, accelerate only joins a multi-process (gloo) launch when told cpu=True
    cpu = runtime.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=runtime.precision, cpu=cpu)
    main = accelerator.is_main_process
    if resume is not None:
        run = RunDir.open(resume, main)
    else:
        # the main process names the run; the others must use the same directory
        name = [str(RunDir.create(runtime.output_dir, runtime.run_name or new_run_name(recipe), main).path)]
        if accelerator.num_processes > 1:
            broadcast_object_list(name)
        run = RunDir(name[0], main)
        run.write_text("config.yaml", dump(cfg))
    accelerator.wait_for_everyone()
    return Context(run, accelerator, runtime.seed)
