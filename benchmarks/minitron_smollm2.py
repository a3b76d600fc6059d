"""Minitron on SmolLM2-135M: does the paper's ordering hold at a CPU-sized token budget?

    python benchmarks/minitron_smollm2.py [--steps 200] [--calibration 256] [--quick]

At an equal token budget, compares (a) prune + KD, (b) prune + cross-entropy fine-tune,
(c) random init of the same shape + KD, (d) random init + cross-entropy, (e) depth-only prune + KD
at about the same parameter count; and, right after pruning (no retraining), activation importance
against a random choice of channels / neurons / heads / layers. Writes
benchmarks/results/minitron_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402
from distill.data.text import TextData, token_splits  # noqa: E402
from distill.engine import TrainConfig, fit  # noqa: E402
from distill.evaluate import lm_loss  # noqa: E402
from distill.kd.distiller import Distiller  # noqa: E402
from distill.kd.objective import Term  # noqa: E402
from distill.models.llm import LlmSpec, load_causal_lm  # noqa: E402
from distill.pruning import Importance, LlmShape, compute_importance, prune  # noqa: E402
from distill.recipe import RuntimeConfig, start  # noqa: E402

KD = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": 512})
CE = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])


def random_importance(imp: Importance, seed: int) -> Importance:
    g = torch.Generator().manual_seed(seed)
    rand = lambda t: torch.rand(t.shape, generator=g)  # noqa: E731
    return Importance(rand(imp.embedding), rand(imp.neurons), rand(imp.heads), rand(imp.block),
                      rand(imp.layer_drop_loss), imp.base_loss, imp.sequences)  # fmt: skip


def depth_shape_like(teacher: LlmShape, params: int) -> LlmShape:
    """Full width, as many layers as keep the parameter count nearest `params`."""
    return min((teacher.with_(layers=n) for n in range(1, teacher.layers + 1)), key=lambda s: abs(s.params() - params))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--val", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.calibration, args.val = 3, 16, 4
    t_start = time.perf_counter()
    teacher, tok = load_causal_lm(LlmSpec())
    train, val = token_splits(TextData(seq_len=args.seq_len, max_val_sequences=args.val), tok)
    shape = LlmShape.of(teacher.config)
    width = shape.with_(hidden=384, ffn=768, heads=6)
    depth = depth_shape_like(shape, width.params())

    with tempfile.TemporaryDirectory() as tmp:
        ctx = start("bench", RuntimeConfig(), RuntimeConfig(output_dir=tmp, seed=args.seed))
        evaluate = lambda m: lm_loss(m, val, ctx.accelerator, 8)  # noqa: E731
        t0 = time.perf_counter()
        imp = compute_importance(teacher, train["input_ids"][: args.calibration].split(8), depth_batches=2)
        importance_s = time.perf_counter() - t0
        teacher_loss = evaluate(teacher)
        rand_imp = random_importance(imp, args.seed)
        right_after = {}
        for name, target in [("width", width), ("depth", depth)]:
            for how, scores in [("importance", imp), ("random", rand_imp)]:
                right_after[f"{name}/{how}"] = evaluate(prune(teacher, scores, target))
                print(f"right after pruning, {name} by {how}: loss {right_after[f'{name}/{how}']:.3f}", flush=True)

        tcfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=max(1, args.steps // 20),
                           log_every=10, eval_every=max(1, args.steps // 4), clip_grad_norm=1.0, progress=False)  # fmt: skip
        runs = {
            "a: prune(width) + KD": (width, imp, KD),
            "b: prune(width) + CE": (width, imp, CE),
            "c: random init + KD": (width, None, KD),
            "d: random init + CE": (width, None, CE),
            "e: prune(depth) + KD": (depth, imp, KD),
        }
        results = {}
        for i, (name, (target, scores, term)) in enumerate(runs.items()):
            torch.manual_seed(args.seed)
            if scores is None:
                student = type(teacher)(target.apply_to(teacher.config))
            else:
                student = prune(teacher, scores, target)
            teachers = {"teacher": teacher} if term is KD else {}
            distiller = Distiller(student, [term], teachers)
            curve = []
            t0 = time.perf_counter()
            fit(distiller, train, tcfg, stage=f"run{i}", run=ctx.run, accelerator=ctx.accelerator, seed=args.seed,
                eval_fn=lambda m: {"val_loss": evaluate(m)}, product=student)  # fmt: skip
            seconds = time.perf_counter() - t0
            curve = [(r["samples_seen"] * args.seq_len, r["eval/val_loss"]) for r in ctx.run.metrics()
                     if r.get("stage") == f"run{i}" and "eval/val_loss" in r]  # fmt: skip
            results[name] = {"params": target.params(), "shape": target.as_dict(), "val_loss": curve[-1][1],
                             "curve": curve, "seconds": seconds,
                             "tokens_per_s": args.steps * args.batch * args.seq_len / seconds}  # fmt: skip
            print(f"{name}: val loss {curve[-1][1]:.3f} ({seconds:.0f}s)", flush=True)

    res = {
        "budget": {
            "steps": args.steps,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "tokens": args.steps * args.batch * args.seq_len,
            "calibration_sequences": args.calibration,
            "val_sequences": len(val["labels"]),
            "seeds": 1,
            "seed": args.seed,
            "quick": args.quick,
        },  # fmt: skip
        "machine": machine(),
        "teacher": {"params": shape.params(), "val_loss": teacher_loss},
        "importance_seconds": importance_s,
        "right_after_pruning": right_after,
        "runs": results,
        "wall_s": time.perf_counter() - t_start,
    }
    md = markdown(res)
    write("minitron_smollm2", res, md)
    _plot(res)
    print(md)


def claims(res: dict) -> list[tuple[str, bool, str]]:
    r = {k[0]: v["val_loss"] for k, v in res["runs"].items()}
    ra = res["right_after_pruning"]
    return [
        ("(a) prune + KD beats (b) prune + CE", r["a"] < r["b"], f"{r['a']:.3f} vs {r['b']:.3f}"),
        ("(b) prune + CE beats (c)/(d) random init", r["b"] < min(r["c"], r["d"]), f"{r['b']:.3f} vs {min(r['c'], r['d']):.3f}"),
        ("importance beats random selection right after pruning (width)", ra["width/importance"] < ra["width/random"],
         f"{ra['width/importance']:.3f} vs {ra['width/random']:.3f}"),
        ("importance beats random selection right after pruning (depth)", ra["depth/importance"] < ra["depth/random"],
         f"{ra['depth/importance']:.3f} vs {ra['depth/random']:.3f}"),
        ("width beats depth after retraining", r["a"] < r["e"], f"{r['a']:.3f} vs {r['e']:.3f}"),
    ]  # fmt: skip


def markdown(res: dict) -> str:
    b, t = res["budget"], res["teacher"]
    lines = [
        "# Minitron on SmolLM2-135M-Instruct",
        "",
        f"Token budget per retraining run: {b['tokens']:,} ({b['steps']} steps x {b['batch']} x {b['seq_len']}), "
        f"AdamW, {b['seeds']} seed; importance from {b['calibration_sequences']} calibration sequences of "
        f"{b['seq_len']} tokens; held-out loss on {b['val_sequences']} sequences of the Austen corpus's end.",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}; "
        f"wall time {res['wall_s'] / 60:.0f} min. Teacher: {t['params']:,} parameters, held-out loss {t['val_loss']:.3f} "
        f"(perplexity {math.exp(t['val_loss']):.1f}).",
        "",
        "| run | shape (layers / hidden / ffn / heads) | params | held-out loss | perplexity | train tokens/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in res["runs"].items():
        s = r["shape"]
        lines.append(f"| {name} | {s['layers']} / {s['hidden']} / {s['ffn']} / {s['heads']} | {r['params']:,} | "
                     f"{r['val_loss']:.3f} | {math.exp(r['val_loss']):.1f} | {r['tokens_per_s']:.0f} |")  # fmt: skip
    lines += ["", "Right after pruning, before any retraining (held-out loss):", "",
              "| pruning | activation importance | random selection |", "|---|---:|---:|"]  # fmt: skip
    ra = res["right_after_pruning"]
    for name in ("width", "depth"):
        lines.append(f"| {name} | {ra[f'{name}/importance']:.3f} | {ra[f'{name}/random']:.3f} |")
    lines += ["", "The paper's claims, here:", ""]
    lines += [f"- {claim}: **{'held' if ok else 'did not hold'}** ({figures})" for claim, ok, figures in claims(res)]
    lines += ["", "![held-out loss vs tokens](minitron_smollm2.png)", ""]
    return "\n".join(lines)


def _plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common import RESULTS

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, r in res["runs"].items():
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(res["teacher"]["val_loss"], color="k", ls="--", lw=1, label="teacher")
    ax.set(xlabel="tokens seen", ylabel="held-out loss", title="SmolLM2-135M pruned to ~half: retraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "minitron_smollm2.png", dpi=110)


if __name__ == "__main__":
    main()
