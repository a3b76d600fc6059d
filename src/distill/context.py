"""The recipe context: the recipe contract, and what every recipe starts with (processes, the run directory, seeds).

A recipe is anything with these four attributes (a module is the usual form):

    name: str                                  the CLI command, `distill <name>`
    Config: type[pydantic.BaseModel]           its typed config (see distill.config)
    run(config, resume=None) -> Result         the stages, in order
    table(result) -> str                       the result as the CLI prints it

Recipes are found through the `distill.recipes` entry point group, so another package can add
one: `[project.entry-points."distill.recipes"] myrecipe = "my_pkg.my_recipe"`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, set_seed
from pydantic import BaseModel

from distill.config import RuntimeConfig, dump, may_change_on_resume
from distill.engine import Callbacks, Data, EvalFn, Product, TrainConfig, fit
from distill.errors import DistillError
from distill.run import RunDir, atomic_write, new_run_name
from distill.system import keep_freed_memory

GROUP = "distill.recipes"


@dataclass
class Result:
    """What a recipe's run returns, and what `results.json` holds.

    rows      the main table (one dict per model or set)
    figures   images the recipe drew, relative to the run directory
    products  named outputs and their paths (weights, exported models, data files)
    tables    further tables by name (a search, a labelling summary)
    info      scalars that describe the run (budget, learned values, target shape)
    """

    recipe: str
    run_dir: Path
    rows: list[dict[str, Any]]
    figures: list[str] = field(default_factory=list)
    products: dict[str, str] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True
    processes: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "run_dir": str(self.run_dir),
            "rows": self.rows,
            "figures": self.figures,
            "products": self.products,
            "tables": self.tables,
            "info": self.info,
            "processes": self.processes,
        }


@runtime_checkable
class Recipe(Protocol):
    name: str
    Config: type[BaseModel]

    def run(self, config: Any, resume: str | Path | None = None) -> Result: ...

    def table(self, result: Result) -> str: ...


def recipes() -> dict[str, Recipe]:
    """Every registered recipe by name: the package's own and those other packages declare."""
    targets = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    if not targets:
        raise DistillError(f"no recipes are registered under {GROUP!r}: install the package (pip install -e .)")
    out: dict[str, Recipe] = {}
    for name, target in targets.items():
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        obj = getattr(obj, attr) if attr else obj
        if not isinstance(obj, Recipe):
            missing = [a for a in ("name", "Config", "run", "table") if not hasattr(obj, a)]
            raise DistillError(f"recipe {name!r} ({target}) does not follow the recipe contract: it lacks {missing}")
        out[name] = obj
    return out


# --- what every run starts with ------------------------------------------------------------------
def stage_seed(seed: int, stage: str) -> int:
    """A stage's seed: derived from the run's seed and the stage's name, never a hand-picked offset."""
    digest = hashlib.sha256(f"{seed}/{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % 2**31


T = TypeVar("T")


@dataclass
class Context:
    run: RunDir
    accelerator: Accelerator
    seed: int
    recipe: str = ""

    def seed_stage(self, stage: str) -> int:
        """Reseed every stream for `stage`, so it starts the same whether or not earlier stages were skipped."""
        seed = stage_seed(self.seed, stage)
        set_seed(seed)
        return seed

    def fit(
        self,
        model: torch.nn.Module,
        data: Data,
        cfg: TrainConfig,
        *,
        stage: str,
        eval_fn: EvalFn | None = None,
        callbacks: Callbacks | None = None,
        product: Product | None = None,
        seed_from: str | None = None,
    ) -> dict[str, float]:
        """`engine.fit` in this run, seeded by the stage's name (or by `seed_from`: stages that share it see
        the same batches in the same order)."""
        return fit(
            model,
            data,
            cfg,
            stage=stage,
            run=self.run,
            accelerator=self.accelerator,
            seed=self.seed_stage(seed_from or stage),
            eval_fn=eval_fn,
            callbacks=callbacks,
            product=product,
        )

    def once(
        self,
        name: str,
        compute: Callable[[], T],
        *,
        save: Callable[[T, Path], None] | None = None,
        load: Callable[[Path], T] | None = None,
    ) -> T:
        """A named result of work that is not training (scores, evaluations, solutions): computed once, stored
        in the run by the main process as it is made, read back on resume. JSON at `<name>.json` by default;
        `save(value, path)` and `load(path)` store anything else (a file or a directory) at `<name>`."""
        path = self.run.path / (name if save else f"{name}.json")
        if path.exists():
            return load(path) if load else json.loads(path.read_text())
        value = compute()
        if self.accelerator.is_main_process and save is None:
            atomic_write(path, json.dumps(value, indent=2) + "\n")
        elif self.accelerator.is_main_process and save is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")  # the result appears whole or not at all
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.unlink(missing_ok=True)
            save(value, tmp)
            tmp.rename(path)
        self.accelerator.wait_for_everyone()
        return value

    def finish(
        self,
        rows: list[dict[str, Any]],
        *,
        figures: list[str] | None = None,
        products: dict[str, str] | None = None,
        tables: dict[str, list[dict[str, Any]]] | None = None,
        info: dict[str, Any] | None = None,
    ) -> Result:
        """The run's Result (see `Result` for the fields): results.json and the report saved (main process only),
        the run closed."""
        result = Result(self.recipe, self.run.path, rows, figures or [], products or {}, tables or {}, info or {})
        result.processes, result.is_main = self.accelerator.num_processes, self.accelerator.is_main_process
        self.run.write_json("results.json", result.to_json())
        if self.accelerator.is_main_process:
            from distill.report import write_report

            write_report(self.run.path)
        self.run.close()
        return result


def unchanged(run: RunDir, cfg: BaseModel) -> None:
    """Refuse, in one line, to resume a run whose config.yaml was edited since it started (a changed seed would
    train half the steps on each seed; a changed shape would not fit the checkpoint). Fields that say only where
    something is (a teacher server's URL after it restarted on another port) may change."""
    started = run.path / RunDir.STARTED
    if not started.is_file():  # a run from before this check
        return
    before, now = _flat(yaml.safe_load(started.read_text())), _flat(cfg.model_dump(mode="json"))
    free = may_change_on_resume(cfg)
    changed = sorted(k for k in (before.keys() & now.keys()) - free if before[k] != now[k])  # added since: default
    if changed:
        shown = ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise DistillError(
            f"{run.path / 'config.yaml'} was edited after the run started ({shown}{more}); a run resumes with what "
            f"it started with: restore those values, or start a new run with the new ones"
        )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_pays() -> bool:
    """Whether bf16 autocast speeds training up on this CPU: only with AMX tiles. With AVX-512 BF16 alone an
    LLM training step under autocast was slower than in fp32 (the casts cost, the matmuls gain nothing)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported()) and cpu_has_bf16()
    except (AttributeError, RuntimeError):
        return False


def start(recipe: str, cfg: BaseModel, runtime: RuntimeConfig, resume: str | Path | None = None) -> Context:
    """Processes (accelerate), the run directory (new, or the one resumed) with its config saved."""
    # without a GPU, accelerate only joins a multi-process (gloo) launch when told cpu=True
    cpu = runtime.cpu or not torch.cuda.is_available()
    precision = runtime.precision
    if precision == "auto":
        native = cpu_bf16_pays() if cpu else torch.cuda.is_bf16_supported()
        precision = "bf16" if native else "no"
    if cpu and precision == "fp16":
        raise DistillError("run.precision=fp16 needs a GPU, and this run is on the CPU; use bf16 or no")
    if cpu and precision == "bf16" and not cpu_has_bf16():
        raise DistillError("run.precision=bf16 on the CPU needs AVX-512 BF16 or AMX, which this CPU lacks; use no")
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()  # one process, runs of other precisions one after another (the processes stay)
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu)
    if cpu and runtime.keep_freed_memory:
        keep_freed_memory()
    main = accelerator.is_main_process
    if resume is not None:
        run = RunDir.open(resume, main).lock()
        unchanged(run, cfg)
        if main:
            run.remove_partial_files()
    else:
        # the main process names the run; the others must use the same directory
        name = [str(RunDir.create(runtime.output_dir, runtime.run_name or new_run_name(recipe), main).path)]
        if accelerator.num_processes > 1:
            broadcast_object_list(name)
        run = RunDir(name[0], main).lock()
        run.write_text(RunDir.STARTED, dump(cfg))  # what the checkpoints are made with: a resume must match it
        run.write_text(RunDir.RECIPE, recipe + "\n")
        run.fresh = True  # made by this process: removed again if it fails before writing anything else
        run.write_text("config.yaml", dump(cfg))
    accelerator.wait_for_everyone()
    return Context(run, accelerator, runtime.seed, recipe)
