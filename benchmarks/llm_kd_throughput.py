"""Tokens/s and peak memory of one LLM KD step: `distill`'s engine against a bare PyTorch loop and
TRL's GKDTrainer, with the teacher live or read from a teacher-signal cache; and the capture's
throughput against a plain teacher forward loop.

    python benchmarks/llm_kd_throughput.py [--steps 16] [--reps 3] [--k 32]

Teacher: SmolLM2-135M; student: the same pruned to hidden 384 / ffn 768 / heads 6 (random
channel choice: speed does not depend on which). Every variant runs in a fresh process,
repetitions interleaved; the first step of each is warm-up and not timed. Memory is the training
loop's own peak: VmHWM is reset (5 -> /proc/self/clear_refs) once models, data and optimizer exist,
and read after the loop; "over set-up" is that peak minus the resident memory at the reset.
Variants: bare loop (full-softmax forward KL), engine with the same unchunked KL, engine with the KL
chunked over positions (the minitron default), engine from a top-k cache (sparse KL, no teacher
forward), TRL's GKDTrainer (when TRL is installed); capture and a plain teacher forward over the
same rows. Writes benchmarks/results/llm_kd_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, write  # noqa: E402


def setup(batch: int, seq_len: int):
    import torch

    from distill.data.text import TextData, token_splits
    from distill.models.llm import LlmSpec, load_causal_lm
    from distill.pruning import Importance, LlmShape, prune

    teacher, tok = load_causal_lm(LlmSpec())
    train, _ = token_splits(TextData(seq_len=seq_len, max_sequences=256), tok)
    shape = LlmShape.of(teacher.config)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    imp = Importance(r(shape.hidden), r(shape.layers, shape.ffn), r(shape.layers, shape.heads), r(shape.layers),
                     r(shape.layers), 0.0, 0)  # fmt: skip
    student = prune(teacher, imp, shape.with_(hidden=384, ffn=768, heads=6))
    return teacher, student, train


def reset_peak() -> int:
    """Reset the process's peak resident memory to now; the resident memory now, in kB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


MEM: dict[str, int] = {}


def loop_started() -> None:
    MEM["rss_at_reset_kb"] = reset_peak()


def bare(args) -> float:
    import torch
    import torch.nn.functional as F

    teacher, student, data = setup(args.batch, args.seq_len)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    student.train()
    t0 = None
    for step in range(args.steps + 1):
        if step == 1:
            loop_started()
            t0 = time.perf_counter()
        ids = data["input_ids"][step * args.batch : (step + 1) * args.batch]
        logits = student(input_ids=ids).logits
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
        v = logits.shape[-1]
        loss = F.kl_div(F.log_softmax(logits.float().view(-1, v), -1), F.log_softmax(t_logits.float().view(-1, v), -1),
                        log_target=True, reduction="batchmean")  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return args.steps * args.batch * args.seq_len / (time.perf_counter() - t0)


def timed_fit(trainee, data, args, precision: str = "no") -> float:
    """Tokens/s of `distill`'s engine training `trainee` on `data` for args.steps steps after an untimed first one
    (precision "no": fp32, as TRL's runs here; "bf16": autocast)."""
    from distill.context import RuntimeConfig, start
    from distill.engine import TrainConfig, fit

    times: list[float] = []

    def timer(m):  # evaluation every step: just a clock, so the warm-up steps can be left out
        times.append(time.perf_counter())
        if len(times) == 1:
            loop_started()  # after the first step: the optimizer's state exists, as in the other loops
        return {}

    with tempfile.TemporaryDirectory() as tmp:
        ctx = start("bench", RuntimeConfig(), RuntimeConfig(output_dir=tmp, precision=precision))
        cfg = TrainConfig(max_steps=args.steps + warmup(args), batch_size=args.batch, lr=1e-4, schedule="constant",
                          eval_every=1, log_every=1000, progress=False)  # fmt: skip
        fit(trainee, data, cfg, stage="s", run=ctx.run, accelerator=ctx.accelerator, seed=0, eval_fn=timer)
    return rate(args, times)


def engine(args, chunk: int | None, cached: bool = False) -> float:
    from distill.kd.cache import TeacherCache, from_cache
    from distill.kd.distiller import Distiller
    from distill.kd.objective import Term

    teacher, student, data = setup(args.batch, args.seq_len)
    kd = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": chunk})
    if cached:  # the teacher's signal is read from disk; the teacher itself is not needed at all
        data, teacher = TeacherCache(args.cache), None
        distiller = Distiller(student, from_cache([kd]))
    else:
        distiller = Distiller(student, [kd], {"teacher": teacher})
    return timed_fit(distiller, data, args)


def warmup(args) -> int:
    """Untimed steps before the clock starts: 1, or more where the first steps compile (--warmup)."""
    return getattr(args, "warmup", 1)


def n_rows(args) -> int:
    """Rows a run trains on: its warm-up and timed steps' batches."""
    return (args.steps + warmup(args)) * args.batch


def rate(args, times: list[float]) -> float:
    """Tokens/s of the timed steps, from the clock's times at each step's end."""
    return args.steps * args.batch * args.seq_len / (times[-1] - times[warmup(args) - 1])


def trainer_clock(times: list[float]):
    """A transformers callback appending the time at each step's end (the peak memory reset after the first)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())
            if len(times) == 1:
                loop_started()

    return Clock()


def trl_args(tmp: str, args, bf16: bool) -> dict:
    """The settings every TRL trainer here shares: forward KL at T=1 (beta 0), AdamW at a constant lr, no
    gradient checkpointing, evaluation or saving; fp32 or bf16 autocast."""
    return dict(output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=args.steps + warmup(args), learning_rate=1e-4,
                lr_scheduler_type="constant", save_strategy="no", report_to=[], logging_steps=1000, use_cpu=True,
                disable_tqdm=True, gradient_checkpointing=False, bf16=bf16, fp16=False, temperature=1.0, beta=0.0,
                seed=0)  # fmt: skip


def trl_gkd(args, on_policy: bool = False, bf16: bool = False, compile: bool = False) -> float:
    """TRL's GKDTrainer on the same teacher, student and token rows: lmbda=0 trains on the rows; lmbda=1
    (on_policy) on the student's completions (args.new_tokens of them) of their first args.prompt tokens.
    `compile`: its TrainingArguments' torch_compile=True."""
    import torch
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    teacher, student, data = setup(args.batch, args.seq_len)
    rows = data["input_ids"][: n_rows(args)]
    p = args.prompt if on_policy else args.seq_len

    def collate(features):
        ids = torch.tensor([f["input_ids"] for f in features])
        labels = ids.clone()
        labels[:, : p if on_policy else 0] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "prompts": ids[:, :p],
                "prompt_attention_mask": torch.ones_like(ids[:, :p])}  # fmt: skip

    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        generated = getattr(args, "new_tokens", 1)
        cfg = GKDConfig(**trl_args(tmp, args, bf16), lmbda=1.0 if on_policy else 0.0, max_new_tokens=generated,
                        dataloader_drop_last=True, max_length=args.seq_len, torch_compile=compile)  # fmt: skip
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, data_collator=collate,
                             callbacks=[trainer_clock(times)],
                             train_dataset=Dataset.from_dict({"input_ids": rows.tolist()}))  # fmt: skip
        trainer.generation_config.min_new_tokens = generated  # full-length completions, as on distill's side
        trainer.generation_kwargs["min_new_tokens"] = generated
        trainer.train()
    return rate(args, times)


def forward_loop(args, capture: bool) -> float:
    """Teacher tokens/s over the rows of the cached variant: a plain no-grad forward, or the capture."""
    import tempfile

    import torch

    from distill.kd.cache import CacheConfig
    from distill.kd.cache import capture as run_capture

    teacher, _, data = setup(args.batch, args.seq_len)
    rows = {k: v[: n_rows(args)] for k, v in data.items()}
    loop_started()
    t0 = time.perf_counter()
    if capture:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = {"teacher": "t", "tokenizer": "t", "corpus": "c", "seq_len": args.seq_len}
            run_capture(teacher, rows, tmp, manifest, CacheConfig(k=args.k, batch_size=args.batch), progress=False)
    else:
        with torch.no_grad():
            for start in range(0, len(rows["input_ids"]), args.batch):
                teacher(input_ids=rows["input_ids"][start : start + args.batch]).logits.float()
    return rows["input_ids"].numel() / (time.perf_counter() - t0)


def child(args) -> None:
    variant = args.child
    if variant == "trl":
        tps = trl_gkd(args)
    elif variant in ("capture", "forward"):
        tps = forward_loop(args, variant == "capture")
    elif variant == "bare":
        tps = bare(args)
    else:
        tps = engine(args, None if variant == "engine" else args.chunk, cached=variant == "engine-cached")
    peak = _status("VmHWM")
    print(json.dumps({"tokens_per_s": tps, "loop_peak_mb": peak / 1024,
                      "loop_over_setup_mb": (peak - MEM["rss_at_reset_kb"]) / 1024}))  # fmt: skip


def make_cache(args, path: str) -> None:
    """The teacher's top-k over the rows the cached variant trains on (made once, by the parent)."""
    from distill.kd.cache import CacheConfig, capture, describe
    from distill.models.llm import LlmSpec, load_causal_lm

    teacher, student, data = setup(args.batch, args.seq_len)
    _, tok = load_causal_lm(LlmSpec())
    rows = {k: v[: n_rows(args)] for k, v in data.items()}
    capture(teacher, rows, path, describe(teacher, tok, rows), CacheConfig(k=args.k), progress=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cache")
    p.add_argument("--report", action="store_true", help="rebuild the table from the saved results")
    p.add_argument(
        "--child", choices=["bare", "engine", "engine-chunked", "engine-cached", "trl", "capture", "forward"]
    )
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.report:
        res = json.loads((RESULTS / "llm_kd_throughput.json").read_text())
        md = report(res)
        write("llm_kd_throughput", res, md)
        print(md)
        return
    import tempfile

    has_trl = importlib.util.find_spec("trl") is not None  # optional: pip install -e '.[bench]'
    variants = ["bare", "engine", "engine-chunked", "engine-cached"] + (["trl"] if has_trl else [])
    variants += ["forward", "capture"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        args.cache = f"{tmp}/cache"
        make_cache(args, args.cache)
        for _ in range(args.reps):
            for v in variants:
                out = subprocess.run([sys.executable, __file__, "--child", v, "--steps", str(args.steps), "--batch",
                                      str(args.batch), "--seq-len", str(args.seq_len), "--chunk", str(args.chunk),
                                      "--k", str(args.k), "--cache", args.cache],
                                     capture_output=True, text=True, check=True)  # fmt: skip
                runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(v, runs[v][-1], flush=True)
    res = {"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "chunk": args.chunk, "k": args.k,
           "reps": args.reps, "machine": machine(), "runs": runs,
           "trl_gkd": "measured (trl row)" if has_trl else "not measured: TRL is not installed"}  # fmt: skip
    md = report(res)
    write("llm_kd_throughput", res, md)
    print(md)


def report(res: dict) -> str:
    """The table and the targets; each target is decided on the median of per-repetition ratios (variants of one
    repetition ran back to back, so a ratio within it cancels most of the machine's drift)."""
    runs = res["runs"]
    variants = list(runs)
    med = {v: statistics.median(r["tokens_per_s"] for r in rs) for v, rs in runs.items()}
    res.update(median_tokens_per_s=med,
               median_loop_peak_mb={v: statistics.median(r["loop_peak_mb"] for r in rs) for v, rs in runs.items()},
               median_loop_over_setup_mb={v: statistics.median(r["loop_over_setup_mb"] for r in rs)
                                          for v, rs in runs.items()})  # fmt: skip
    peak, over = res["median_loop_peak_mb"], res["median_loop_over_setup_mb"]
    spread = {v: (min(r["tokens_per_s"] for r in rs), max(r["tokens_per_s"] for r in rs)) for v, rs in runs.items()}

    def paired(a: str, b: str, key: str = "tokens_per_s") -> list[float]:
        return [x[key] / y[key] for x, y in zip(runs[a], runs[b])]

    lines = [
        "# LLM KD step: engine vs bare loop vs TRL, live teacher vs teacher cache",
        "",
        f"Teacher SmolLM2-135M (fp32), student pruned to hidden 384 / ffn 768 / heads 6; batch {res['batch']} x "
        f"{res['seq_len']} tokens, {res['steps']} timed steps after one warm-up, {res['reps']} interleaved repetitions "
        f"(median; min-max in brackets), each in a fresh process; cache top-{res['k']}. Training-loop peak: VmHWM "
        "reset after set-up and the first step. Machine: "
        f"{res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}.",
        "",
        "| variant | tokens/s (median) | vs bare | vs TRL | loop peak MB | loop peak over set-up MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    trl = med.get("trl")
    for v in variants:
        if v in ("forward", "capture"):
            continue
        vs_trl = f"{med[v] / trl:.2f}" if trl else ""
        lines.append(f"| {v} | {med[v]:.0f} [{spread[v][0]:.0f}-{spread[v][1]:.0f}] | {med[v] / med['bare']:.2f} | "
                     f"{vs_trl} | {peak[v]:.0f} | {over[v]:.0f} |")  # fmt: skip
    lines += ["", "| teacher pass | tokens/s (median) | vs plain forward |", "|---|---:|---:|",
              f"| plain no-grad forward | {med['forward']:.0f} [{spread['forward'][0]:.0f}-{spread['forward'][1]:.0f}] | 1.00 |",
              f"| capture (top-{res['k']}, shards written) | {med['capture']:.0f} [{spread['capture'][0]:.0f}-"
              f"{spread['capture'][1]:.0f}] | {med['capture'] / med['forward']:.2f} |"]  # fmt: skip
    if trl:
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        targets = [("live teacher, chunked KL >= 1.3x TRL tokens/s", paired("engine-chunked", "trl"), 1.3, True),
                   ("... at <= 0.65x TRL's training-loop peak (process)", paired("engine-chunked", "trl", "loop_peak_mb"),
                    0.65, False),
                   ("... at <= 0.65x TRL's training-loop peak (over set-up)",
                    paired("engine-chunked", "trl", "loop_over_setup_mb"), 0.65, False),
                   ("cached teacher >= 2x TRL tokens/s", paired("engine-cached", "trl"), 2.0, True),
                   ("capture >= 0.9x a plain teacher forward", paired("capture", "forward"), 0.9, True)]  # fmt: skip
        lines += ["", "Targets, decided on the median of the per-repetition ratios (each repetition's variants ran "
                  "back to back):", ""]  # fmt: skip
        for what, ratios, bound, at_least in targets:
            m = statistics.median(ratios)
            ok = m >= bound if at_least else m <= bound
            lines.append(f"- {what}: **{'held' if ok else 'did not hold'}** (median {m:.2f}x; per repetition "
                         f"{fmt(ratios)})")  # fmt: skip
        res["targets"] = {w: {"ratios": r, "median": statistics.median(r), "bound": b} for w, r, b, _ in targets}
    lines += [
        "",
        f"TRL GKDTrainer (lmbda 0, beta 0 = forward KL, no gradient checkpointing, fp32): {res['trl_gkd']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
