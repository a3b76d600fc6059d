"""`distill lm`'s distillation step against TRL 1.16, off-policy and on-policy, in fp32 and in bf16; and the
live step's tokens/s against the machine's matmul limit.

    python benchmarks/lm_throughput.py [--reps 3] [--steps 12] [--warmup 1] [--only VARIANT ... --name NAME] [--report]

Teacher SmolLM2-135M, student the same pruned to hidden 384 / ffn 768 / heads 6 (llm_kd_throughput.py's pair),
batch 4 x 128 tokens, forward KL at T=1, AdamW, constant lr, no gradient checkpointing; both sides at the same
precision (fp32, or bf16 autocast with fp32 weights). Variants, each in a fresh process, repetitions
interleaved, the first step (the first --warmup steps) untimed:
- off-policy (text rows): `distill lm`'s step (the fused projection + divergence) with the teacher live or read
  from a top-32 cache, against TRL's GKDTrainer with lmbda=0 (its teacher live: TRL has no cache);
- on-policy (every batch's completions sampled from the student at T=1, the key/value cache on): the first 64
  tokens of a row are its prompt, 64 tokens are generated (EOS never ends a completion early, on every side, so
  each step trains the same 128-token rows), against GKDTrainer with lmbda=1 and DistillationTrainer.
Tokens/s counts the rows' tokens (prompt + completion) per second of training, generation included. Memory:
the loop's peak over the resident memory after set-up and the first step (VmHWM reset), as in
llm_kd_throughput.py. The limit: the matmul FLOP/s of a 2048 x 2048 product in each precision, divided by the
step's FLOPs per token, 2 x teacher parameters + 6 x student parameters.
Writes benchmarks/results/lm_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, atomic_write, machine, write  # noqa: E402
from llm_kd_throughput import (  # noqa: E402
    MEM,
    _status,
    make_cache,
    n_rows,
    rate,
    setup,
    timed_fit,
    trainer_clock,
    trl_args,
    trl_gkd,
)

OURS = ("distill", "distill-compiled")  # the second: compile=true (torch.compile'd decoders and sampling step)
SIDES = {
    **{o: ["live", "cached", "onpolicy"] for o in OURS},
    "trl-gkd": ["live", "onpolicy"],
    "trl-gkd-compiled": ["live"],
    "trl-distillation": ["onpolicy"],
}
VARIANTS = [f"{who}-{mode}-{p}" for p in ("fp32", "bf16") for who, modes in SIDES.items() for mode in modes]


def prompt_rows(data: dict, prompt: int) -> dict:
    """Text rows as prompt + completion rows: the first `prompt` tokens are the prompt, the loss on the rest."""
    import torch

    ids = data["input_ids"]
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
    labels[:, : prompt - 1] = -100
    return {"input_ids": ids, "labels": labels, "loss_mask": labels != -100}


def ours(args, mode: str, precision: str, compile: bool = False) -> float:
    from distill.kd.cache import TeacherCache, from_cache
    from distill.kd.lm_stage import lm_trainable
    from distill.kd.onpolicy import OnPolicy
    from distill.recipes.lm import Objective

    teacher, student, data = setup(args.batch, args.seq_len)
    terms = Objective().terms(masked=mode == "onpolicy")
    if mode == "cached":
        data, teacher, terms = TeacherCache(args.cache), None, from_cache(terms)
    trainee = lm_trainable(student, teacher, terms, compile=compile)
    if mode == "onpolicy":  # eos: an id past the vocabulary, never sampled, so every completion is full length
        data = prompt_rows(data, args.prompt)
        trainee = OnPolicy(trainee, 1.0, args.new_tokens, 1.0, student.config.vocab_size, 0, compile)
    return timed_fit(trainee, data, args, precision)


def trl_distillation(args, bf16: bool) -> float:
    """DistillationTrainer (fully on-policy) on the same prompts, given as text (it tokenizes them itself)."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from distill.models.llm import LlmSpec, load_causal_lm

    teacher, student, data = setup(args.batch, args.seq_len)
    _, tok = load_causal_lm(LlmSpec())
    tok.padding_side = "left"
    prompts = tok.batch_decode(data["input_ids"][: n_rows(args), : args.prompt])
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DistillationConfig(**trl_args(tmp, args, bf16), max_completion_length=args.new_tokens,
                                 generation_kwargs={"min_new_tokens": args.new_tokens}, shuffle_dataset=False)  # fmt: skip
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=cfg, processing_class=tok,
                                      train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[trainer_clock(times)])  # fmt: skip
        trainer.train()
    return rate(args, times)


def matmul_flops(precision: str, n: int = 2048, reps: int = 20) -> float:
    """FLOP/s of an n x n matmul in this precision (the median of `reps` products, after a warm-up)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def child(args) -> None:
    if args.child == "limit":
        from distill.models import count_parameters

        teacher, student, _ = setup(args.batch, args.seq_len)
        print(json.dumps({"flops": {p: matmul_flops(p) for p in ("fp32", "bf16")},
                          "teacher_params": count_parameters(teacher), "student_params": count_parameters(student)}))  # fmt: skip
        return
    who, mode, precision = args.child.rsplit("-", 2)
    bf16 = precision == "bf16"
    if who in OURS:
        tps = ours(args, mode, "bf16" if bf16 else "no", who == "distill-compiled")
    elif who.startswith("trl-gkd"):
        tps = trl_gkd(args, mode == "onpolicy", bf16, who == "trl-gkd-compiled")
    else:
        tps = trl_distillation(args, bf16)
    peak = _status("VmHWM")
    print(json.dumps({"tokens_per_s": tps, "loop_peak_mb": peak / 1024,
                      "loop_over_setup_mb": (peak - MEM["rss_at_reset_kb"]) / 1024}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--prompt", type=int, default=64, help="on-policy: prompt tokens (the rest is generated)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (compiled variants compile in two)")
    p.add_argument("--only", nargs="*", help="a subset of the variants (a quick look, unless --name is given)")
    p.add_argument("--name", help="write the subset's results as benchmarks/results/NAME.{json,md}")
    p.add_argument("--cache")
    p.add_argument("--child")
    p.add_argument("--report", action="store_true", help="rebuild the markdown from the saved results")
    args = p.parse_args()
    args.new_tokens = args.seq_len - args.prompt
    if args.child:
        child(args)
        return
    name = args.name or "lm_throughput"
    if args.report:
        res = json.loads((RESULTS / f"{name}.json").read_text())
        write(name, res, report(res))
        return
    variants = args.only or VARIANTS
    flags = ["--steps", str(args.steps), "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--prompt",
             str(args.prompt), "--k", str(args.k), "--warmup", str(args.warmup)]  # fmt: skip

    def spawn(v: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--child", v, *flags, "--cache", args.cache],
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode:
            raise SystemExit(f"{v} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        args.cache = f"{tmp}/cache"
        make_cache(args, args.cache)
        limit = spawn("limit")
        for _ in range(args.reps):
            for v in variants:
                runs[v].append(spawn(v))
                print(v, runs[v][-1], flush=True)
    res = {"steps": args.steps, "warmup": args.warmup, "batch": args.batch, "seq_len": args.seq_len,
           "prompt": args.prompt, "k": args.k, "reps": args.reps, "limit": limit, "runs": runs, "machine": machine(), "wall_s": time.perf_counter() - t0}  # fmt: skip
    if args.only and not args.name:
        print(json.dumps(runs, indent=1))
        return
    atomic_write(RESULTS / f"{name}.json", json.dumps(res, indent=2) + "\n")  # kept should the report fail
    write(name, res, report(res))
    print(report(res))


def warm_up(n: int) -> str:
    return "one warm-up" if n == 1 else f"{n} untimed warm-up steps (compiled variants compile in the first two)"


def report(res: dict) -> str:
    """Tables and targets; a target is decided on the median of its per-repetition ratios (the variants of one
    repetition ran back to back, so a ratio within it cancels most of the machine's drift)."""
    runs = res["runs"]
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    lim = res["limit"]
    per_token = 2 * lim["teacher_params"] + 6 * lim["student_params"]
    m = res["machine"]
    isa = (
        "" if "matrix_isa" not in m else f" ({', '.join(m['matrix_isa']) or 'no AVX-512 BF16, no AMX'})"
    )  # older runs: unrecorded
    precisions = " and ".join(p for p in ("fp32", "bf16") if any(v.endswith(p) for v in runs))
    lines = [f"# `distill lm` against TRL 1.16: tokens/s and memory, off- and on-policy, {precisions}", "",
             f"Teacher SmolLM2-135M ({lim['teacher_params'] / 1e6:.1f}M parameters), student pruned from it to hidden "
             f"384 / ffn 768 / heads 6 ({lim['student_params'] / 1e6:.1f}M); batch {res['batch']} x {res['seq_len']} "
             f"tokens, forward KL at T=1, AdamW, no gradient checkpointing; {res['steps']} timed steps after "
             f"{warm_up(res.get('warmup', 1))}, {res['reps']} interleaved repetitions, each variant in a fresh process (median; min-max in "
             f"brackets). On-policy: {res['prompt']}-token prompts, {res['seq_len'] - res['prompt']} sampled tokens "
             "(T=1, key/value cache), every batch; tokens/s counts prompt + completion tokens and includes generation. "
             f"Cache: top-{res['k']}. Memory: the training loop's peak over set-up (VmHWM reset after the first step). "
             f"Machine: {m['cpu']}{isa}, {m['cores']} cores, torch {m['torch']}.", "",
             "| variant | tokens/s | loop peak over set-up MB |", "|---|---:|---:|"]  # fmt: skip
    if missing := [v for v in VARIANTS if v not in runs]:
        lines[2] += f" A subset of the variants ran: not {', '.join(missing)}; the targets of those that ran follow."
    for v, rs in runs.items():
        tps = [r["tokens_per_s"] for r in rs]
        lines.append(f"| {v} | {med[v]['tokens_per_s']:.0f} [{min(tps):.0f}-{max(tps):.0f}] | "
                     f"{med[v]['loop_over_setup_mb']:.0f} |")  # fmt: skip

    def ratio(a: str, b: str, key: str = "tokens_per_s") -> list[float] | None:
        """Per-repetition ratios of a to b (None where a subset left either out)."""
        return [x[key] / y[key] for x, y in zip(runs[a], runs[b])] if a in runs and b in runs else None

    targets = []
    for p in ("fp32", "bf16"):
        for o in OURS:
            ours = "" if o == "distill" else " (compile=true)"
            targets += [(f"{p}{ours}, live teacher: >= 1.3x GKDTrainer (lmbda 0) tokens/s", ratio(f"{o}-live-{p}", f"trl-gkd-live-{p}"), 1.3, True),
                        (f"{p}{ours}, live teacher: <= 0.65x its loop memory over set-up",
                         ratio(f"{o}-live-{p}", f"trl-gkd-live-{p}", "loop_over_setup_mb"), 0.65, False),
                        (f"{p}{ours}, from the cache: >= 2.5x GKDTrainer (lmbda 0) tokens/s", ratio(f"{o}-cached-{p}", f"trl-gkd-live-{p}"), 2.5, True)]  # fmt: skip
            for other in ("trl-gkd", "trl-distillation"):
                a, b = f"{o}-onpolicy-{p}", f"{other}-onpolicy-{p}"
                name = "GKDTrainer (lmbda 1)" if other == "trl-gkd" else "DistillationTrainer"
                targets += [(f"{p}{ours}, on-policy: >= 1.3x {name} tokens/s", ratio(a, b), 1.3, True),
                            (f"{p}{ours}, on-policy: <= 1x {name}'s loop memory over set-up", ratio(a, b, "loop_over_setup_mb"), 1.0, False)]  # fmt: skip
        both = ratio(f"distill-compiled-live-{p}", f"trl-gkd-compiled-live-{p}")  # TRL's own torch_compile=True
        targets.append((f"{p}, both compiled, live teacher: >= 1.3x GKDTrainer (lmbda 0, torch_compile) tokens/s", both, 1.3, True))  # fmt: skip
    lines += ["", "Targets, decided on the median of the per-repetition ratios:", ""]
    res["targets"] = {}
    for what, rs, bound, at_least in (t for t in targets if t[1] is not None):  # a subset: the targets it ran
        mid = statistics.median(rs)
        ok = mid >= bound if at_least else mid <= bound
        res["targets"][what] = {"ratios": rs, "median": mid, "bound": bound, "held": ok}
        lines.append(f"- {what}: **{'held' if ok else 'did not hold'}** (median {mid:.2f}x; per repetition "
                     + ", ".join(f"{r:.2f}" for r in rs) + ")")  # fmt: skip
    live = any(f"{o}-live-{p}" in med for p in ("fp32", "bf16") for o in OURS)
    lines += [] if not live else ["", "The live step against the machine's limit (matmul FLOP/s of a 2048 x 2048 product / FLOPs per token "
              f"= 2 x {lim['teacher_params'] / 1e6:.1f}M + 6 x {lim['student_params'] / 1e6:.1f}M = "
              f"{per_token / 1e9:.2f} GFLOP):", "", "| precision | matmul GFLOP/s | limit tokens/s | `distill lm` tokens/s | share of the limit |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    res["share_of_limit"] = {}
    for p in ("fp32", "bf16"):
        limit = lim["flops"][p] / per_token
        for o in OURS:
            if f"{o}-live-{p}" not in med:
                continue
            tps = med[f"{o}-live-{p}"]["tokens_per_s"]
            res["share_of_limit"][f"{o}-{p}"] = tps / limit
            lines.append(f"| {p} | {lim['flops'][p] / 1e9:.0f} | {limit:.0f} | {tps:.0f} ({o}) | {tps / limit:.0%} |")
    lines += ["", f"Wall time {res['wall_s'] / 60:.0f} min.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
