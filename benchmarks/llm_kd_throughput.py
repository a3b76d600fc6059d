"""Tokens/s and peak memory of one LLM KD step: `distill`'s engine against a bare PyTorch loop.

    python benchmarks/llm_kd_throughput.py [--steps 8] [--reps 2]

Teacher: SmolLM2-135M; student: the same pruned to hidden 384 / ffn 768 / heads 6 (random
channel choice: speed does not depend on which). Every variant runs in a fresh process (peak
RSS from getrusage), repetitions interleaved; the first step of each is warm-up and not timed.
Variants: bare loop (full-softmax forward KL), engine with the same unchunked KL, engine with the
KL chunked over positions (the minitron default), and TRL's GKDTrainer when TRL is installed. Writes benchmarks/results/llm_kd_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402


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


def bare(args) -> float:
    import torch
    import torch.nn.functional as F

    teacher, student, data = setup(args.batch, args.seq_len)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    student.train()
    t0 = None
    for step in range(args.steps + 1):
        if step == 1:
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


def engine(args, chunk: int | None) -> float:
    from distill.engine import TrainConfig, fit
    from distill.kd.distiller import Distiller
    from distill.kd.objective import Term
    from distill.recipe import RuntimeConfig, start

    teacher, student, data = setup(args.batch, args.seq_len)
    kd = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": chunk})
    distiller = Distiller(student, [kd], {"teacher": teacher})
    times = []

    def timer(m):  # evaluation every step: just a clock, so the warm-up step can be left out
        times.append(time.perf_counter())
        return {}

    with tempfile.TemporaryDirectory() as tmp:
        ctx = start("bench", RuntimeConfig(), RuntimeConfig(output_dir=tmp))
        cfg = TrainConfig(max_steps=args.steps + 1, batch_size=args.batch, lr=1e-4, schedule="constant",
                          eval_every=1, log_every=1000, progress=False)  # fmt: skip
        fit(distiller, data, cfg, stage="s", run=ctx.run, accelerator=ctx.accelerator, seed=0, eval_fn=timer)
    return args.steps * args.batch * args.seq_len / (times[-1] - times[0])


def trl_gkd(args) -> float:
    """TRL's GKDTrainer on the same teacher, student and token rows: lmbda=0 (no on-policy
    generation), beta=0 (forward KL), AdamW, no evaluation or saving."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    teacher, student, data = setup(args.batch, args.seq_len)
    rows = data["input_ids"][: (args.steps + 1) * args.batch]
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    def collate(features):
        ids = torch.tensor([f["input_ids"] for f in features])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GKDConfig(output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=args.steps + 1, lmbda=0.0,
                        beta=0.0, temperature=1.0, learning_rate=1e-4, lr_scheduler_type="constant", save_strategy="no",
                        report_to=[], logging_steps=1000, use_cpu=True, dataloader_drop_last=True,
                        disable_tqdm=True, max_length=args.seq_len, gradient_checkpointing=False, bf16=False,
                        fp16=False)  # fmt: skip
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=dataset,
                             data_collator=collate, callbacks=[Clock()])  # fmt: skip
        trainer.train()
    return args.steps * args.batch * args.seq_len / (times[-1] - times[0])


def child(args) -> None:
    variant = args.child
    if variant == "trl":
        tps = trl_gkd(args)
    else:
        tps = bare(args) if variant == "bare" else engine(args, None if variant == "engine" else args.chunk)
    print(json.dumps({"tokens_per_s": tps, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--child", choices=["bare", "engine", "engine-chunked", "trl"])
    args = p.parse_args()
    if args.child:
        child(args)
        return
    has_trl = importlib.util.find_spec("trl") is not None  # optional: pip install -e '.[bench]'
    variants = ["bare", "engine", "engine-chunked"] + (["trl"] if has_trl else [])
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            out = subprocess.run([sys.executable, __file__, "--child", v, "--steps", str(args.steps), "--batch",
                                  str(args.batch), "--seq-len", str(args.seq_len), "--chunk", str(args.chunk)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(v, runs[v][-1], flush=True)
    med = {v: statistics.median(r["tokens_per_s"] for r in rs) for v, rs in runs.items()}
    peak = {v: max(r["peak_rss_mb"] for r in rs) for v, rs in runs.items()}
    res = {"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "chunk": args.chunk, "reps": args.reps,
           "machine": machine(), "runs": runs, "median_tokens_per_s": med, "peak_rss_mb": peak,
           "ratio_engine_vs_bare": med["engine"] / med["bare"], "ratio_chunked_vs_bare": med["engine-chunked"] / med["bare"],
           "trl_gkd": "measured (trl row)" if has_trl else "not measured: TRL is not installed"}  # fmt: skip
    lines = [
        "# LLM KD step: engine vs bare loop",
        "",
        f"Teacher SmolLM2-135M (fp32), student pruned to hidden 384 / ffn 768 / heads 6; batch {args.batch} x "
        f"{args.seq_len} tokens, {args.steps} timed steps after one warm-up, {args.reps} interleaved repetitions "
        f"(median), each in a fresh process. Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores.",
        "",
        "| variant | tokens/s (median) | vs bare | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for v in variants:
        lines.append(f"| {v} | {med[v]:.0f} | {med[v] / med['bare']:.3f} | {peak[v]:.0f} |")
    lines += ["", f"Target: engine >= 0.95 x bare. TRL GKDTrainer (lmbda 0, beta 0 = forward KL, no gradient "
              f"checkpointing, fp32): {res['trl_gkd']}.", ""]  # fmt: skip
    md = "\n".join(lines)
    write("llm_kd_throughput", res, md)
    print(md)


if __name__ == "__main__":
    main()
