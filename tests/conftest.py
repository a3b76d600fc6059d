"""Shared fixtures: a tiny synthetic image task that a small net learns in seconds."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TQDM_DISABLE", "1")


def make_images(n: int, classes: int = 4, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class lights a different quadrant, plus noise: learnable, but not in one step."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, size, size, generator=g) * 0.8
    h = size // 2
    for c in range(classes):
        r, col = divmod(c % 4, 2)
        x[y == c, :, r * h : (r + 1) * h, col * h : (col + 1) * h] += 0.7
    return (x.clamp(0, 1) * 255).to(torch.uint8), y


def write_tensor_file(path: Path, train: int, test: int) -> Path:
    """A data.source=tensors file of `train` and `test` images of 4 classes."""
    x_tr, y_tr = make_images(train, seed=0)
    x_te, y_te = make_images(test, seed=1)
    torch.save({"train_images": x_tr, "train_labels": y_tr, "test_images": x_te, "test_labels": y_te}, path)
    return path


@pytest.fixture
def tensor_file(tmp_path: Path) -> Path:
    """256 train and 128 test images of 4 classes."""
    return write_tensor_file(tmp_path / "tiny.pt", 256, 128)


def kill_when(cmd: list[str], env: dict, ready: Callable[[], bool], what: str) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()`; fail if it ended first or the deadline came first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    # else the deadline passed first, and the resume would restart from scratch and prove nothing
    assert ready(), f"killed before {what}"


def kill_after_checkpoints(cmd: list[str], env: dict, folder: Path, count: int = 2) -> int:
    """Kill `cmd` as soon as `folder` (a run's `checkpoints/<stage>`) holds `count` checkpoints; the stage must
    be unfinished then. Returns the step of the newest whole checkpoint (the one a resume continues from)."""
    kill_when(cmd, env, lambda: len(list(folder.glob("step-*.pt"))) >= count, f"{count} checkpoints in {folder}")
    run = next(p.parent for p in folder.parents if p.name == "checkpoints")
    stage = folder.relative_to(run / "checkpoints")
    assert not (run / stage / "done.json").exists() and not (run / "results.json").exists(), "killed after the end"
    whole = [p for p in sorted(folder.glob("step-*.pt")) if p.with_name(p.name + ".sha256").is_file()]
    return int(whole[-1].stem.removeprefix("step-"))


def steps_logged_since(run: Path, stage: str, since: float) -> list[int]:
    """The steps of `stage`'s training records written at or after `since` (time.time())."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("stage") == stage and "loss" in r and r["time"] >= since]


def straight_killed_resumed(cli: list[str], over: list[str], env: dict, runs: Path, checkpoints: str) -> Path:
    """Run `cli + over` to the end as run `straight`; run it again as `killed`, SIGKILLed once two checkpoints
    exist under `checkpoints` (relative to the run), and `--resume` that. `runs` is run.output_dir; `over` names
    no run_name. Returns `runs`; tests compare what `straight` and `killed` hold.

    The resume must continue, not restart: every step it logs lies after the checkpoint it resumed from, and
    together with what the killed run logged up to that checkpoint they are the straight run's steps."""
    subprocess.run([*cli, *over, "run.run_name=straight"], check=True, env=env, capture_output=True)
    killed, stage = runs / "killed", checkpoints.removeprefix("checkpoints/")
    step = kill_after_checkpoints([*cli, *over, "run.run_name=killed"], env, killed / checkpoints)
    since = time.time()
    done = subprocess.run([*cli, "--resume", str(killed)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = steps_logged_since(killed, stage, since)
    assert resumed and min(resumed) > step, f"the resume logged steps {resumed} from a checkpoint at step {step}"
    before = [s for s in steps_logged_since(killed, stage, 0) if s not in resumed]
    assert before + resumed == steps_logged_since(runs / "straight", stage, 0)
    return runs


def tiny_overrides(tensor_file: Path, out: Path) -> list[str]:
    """A complete `distill kd` run on the tiny task in a few seconds."""
    return [
        "data.source=tensors",
        f"data.path={tensor_file}",
        f"run.output_dir={out}",
        "run.run_name=tiny",
        "teachers.0.model.args.channels=[8,16,16]",
        "teachers.0.train.epochs=2",
        "teachers.0.train.batch_size=32",
        "student.args.channels=[4,8,8]",
        "train.epochs=2",
        "train.batch_size=32",
        "train.log_every=2",
        "train.save_every=4",
        "train.progress=false",
        "teachers.0.train.progress=false",
    ]


def batches_by_stage(monkeypatch) -> dict[str, list[torch.Tensor]]:
    """Record the input_ids of every training batch, by the stage that drew it."""
    import distill.context
    import distill.engine

    seen: dict[str, list[torch.Tensor]] = {}
    fit, take = distill.context.fit, distill.engine.take

    def fit_tagged(*args, stage: str, **kw):
        seen[stage] = []
        monkeypatch.setattr(distill.engine, "take", lambda d, i: seen[stage].append(take(d, i)) or seen[stage][-1])
        return fit(*args, stage=stage, **kw)

    monkeypatch.setattr(distill.context, "fit", fit_tagged)
    return seen


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / f"benchmarks/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
