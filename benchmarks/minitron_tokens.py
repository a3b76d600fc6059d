"""Minitron's token efficiency at small scale: how many tokens does a student trained from scratch need to
reach the loss that prune + KD reaches on the committed budget?

    python benchmarks/minitron_tokens.py [--multiples 1,2,4] [--seeds 1] [--render]

(a) prune (width) + KD at 204,800 tokens is read from `minitron_ab.json` (4 seeds, this machine, the same
corpus, held-out rows, student shape, batch, learning rate and schedule). (c) random init + KD, the same
shape and the same teacher cache (top-64 of SmolLM2-135M-Instruct, captured once over the largest budget's
rows, every smaller budget reading its first rows), is trained at each multiple of that budget: each run its
own warm-up and linear decay over its own length, as a user with that many tokens would train. Reported:
held-out loss against tokens for (a) and every (c) run on one plot, and the tokens (c) needs to reach (a)'s
final loss: read off its runs when one gets there, else extrapolated from the final losses of its runs,
assuming the loss keeps falling by the same amount per doubling of tokens as between its largest runs (the
assumption is stated next to the figure). Each finished run is kept under --dir and not run again.
Writes benchmarks/results/minitron_tokens.{json,md,png}.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, write  # noqa: E402
from distill.checkpoint import checkpoints  # noqa: E402
from distill.data.shards import RowStore  # noqa: E402
from distill.engine import TrainConfig  # noqa: E402
from distill.evaluate import lm_loss  # noqa: E402
from distill.kd.cache import CacheConfig, TeacherCache, open_or_capture  # noqa: E402
from distill.pruning import LlmShape  # noqa: E402
from distill.run import atomic_write  # noqa: E402
from minitron_smollm2 import KD, arguments, parse, setup, student_fit  # noqa: E402

A = "a: prune(width) + KD"
NAME = "minitron_tokens"


class Prefix(RowStore):
    """The first `n` rows of a cache: a smaller budget reads the largest budget's capture."""

    def __init__(self, store: TeacherCache, n: int) -> None:
        if n > len(store):
            raise ValueError(f"{n} rows asked of a cache of {len(store)}")
        self.store, self.n, self.columns = store, n, store.columns

    def __len__(self) -> int:
        return self.n

    def read(self, column: str, rows: list[int]) -> torch.Tensor:
        if any(not 0 <= r < self.n for r in rows):
            raise IndexError(f"a row outside the first {self.n}")
        return self.store.read(column, rows)


def reference() -> dict:
    """(a)'s runs and the budget they share, from the committed A/B benchmark."""
    ab = json.loads((RESULTS / "minitron_ab.json").read_text())
    return {"budget": ab["budget"], "runs": ab["runs"][A], "teacher": ab["teacher"]}


def per_doubling(a: tuple[int, float], b: tuple[int, float]) -> float:
    """The loss drop per doubling of tokens between two runs' (tokens, final loss)."""
    return (a[1] - b[1]) / math.log2(b[0] / a[0])


def needed_tokens(runs: dict[int, float], target: float) -> dict:
    """Tokens at which (c) reaches `target`: interpolated between two runs in log-tokens when one run is at or
    below it, else extrapolated at the loss drop per doubling between its two largest runs."""
    pts = sorted(runs.items())
    for (t0, l0), (t1, l1) in zip(pts, pts[1:]):
        if l1 <= target < l0:
            f = (l0 - target) / (l0 - l1)
            return {"tokens": t0 * (t1 / t0) ** f, "how": "interpolated between runs"}
    if pts[0][1] <= target:
        return {"tokens": pts[0][0], "how": "reached by the smallest run"}
    if len(pts) < 2:
        return {"tokens": None, "how": "one run: no slope to extrapolate"}
    t1, l1 = pts[-1]
    drop = per_doubling(pts[-2], pts[-1])
    if drop <= 0:
        return {"tokens": math.inf, "how": "not falling between the two largest runs", "drop_per_doubling": drop}
    doublings = (l1 - target) / drop
    return {"tokens": t1 * 2**doublings, "how": "extrapolated", "drop_per_doubling": drop, "doublings": doublings}


def main() -> None:
    p = arguments(seeds=1)
    p.add_argument("--multiples", default="1,2,4", help="budgets of (c), in multiples of (a)'s")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--render", action="store_true", help="rewrite the markdown and plot from the committed JSON")
    p.set_defaults(dir="runs/bench-minitron-tokens")
    args = parse(p)
    global NAME
    NAME += "_quick" if args.quick else ""  # a pipeline check never overwrites the results
    if args.render:
        res = json.loads((RESULTS / f"{NAME}.json").read_text())
        plot(res)
        return write(NAME, res, markdown(res))
    ref = reference()
    base = ref["budget"]["tokens"] if not args.quick else args.tokens
    for key in ("batch", "seq_len", "lr", "k"):
        if not args.quick and getattr(args, key) != ref["budget"][key]:
            raise SystemExit(f"--{key.replace('_', '-')} must equal minitron_ab's ({ref['budget'][key]}) to compare")
    multiples = sorted(float(m) for m in args.multiples.split(","))
    args.tokens = int(base * multiples[-1])
    t_start = time.perf_counter()
    teacher, tok, train, val, ood, ctx = setup(args)
    evaluate = lambda m: lm_loss(m, val, ctx.accelerator, 8)  # noqa: E731
    width = LlmShape.of(teacher.config).with_(hidden=384, ffn=768, heads=6)
    cache = open_or_capture(Path(args.dir) / f"cache-k{args.k}", teacher, tok, train, CacheConfig(k=args.k),
                            ctx.accelerator)  # fmt: skip
    committed = RESULTS / f"{NAME}.json"
    landed = json.loads(committed.read_text()).get("runs", {}) if committed.is_file() else {}
    runs: dict[str, dict] = {}
    for seed in range(args.seeds):
        for m in multiples:
            key = f"c-x{m:g}-s{seed}"
            saved = Path(args.dir) / "done" / f"{key}.json"
            if not saved.is_file() and key in landed:
                atomic_write(saved, json.dumps(landed[key]))
            if saved.is_file():
                runs[key] = json.loads(saved.read_text())
                continue
            tokens = int(base * m)
            steps = tokens // (args.batch * args.seq_len)
            tcfg = TrainConfig(max_steps=steps, batch_size=args.batch, lr=args.lr, warmup_steps=max(1, steps // 20),
                               log_every=10, eval_every=max(1, steps // 4), save_every=max(1, steps // 8),
                               clip_grad_norm=1.0, progress=True)  # fmt: skip
            torch.manual_seed(seed)
            student = type(teacher)(width.apply_to(teacher.config)).to(ctx.accelerator.device)
            rows = Prefix(cache, steps * args.batch)
            kept = checkpoints(ctx.run, key)  # a stopped run continues: its speed counts this invocation's steps
            start = int(kept[-1].stem.removeprefix("step-")) if kept else 0
            out = student_fit(ctx, key, teacher, student, KD, rows, tcfg, seed, evaluate)
            trained = (steps - start) * args.batch * args.seq_len
            out.update(multiple=m, seed=seed, tokens=tokens, val_loss=evaluate(student), resumed_at_step=start,
                       ood_loss=lm_loss(student, ood, ctx.accelerator, 8), tokens_per_s=trained / out["seconds"])  # fmt: skip
            atomic_write(saved, json.dumps(out))
            runs[key] = out
            print(f"{key}: held-out {out['val_loss']:.3f}", flush=True)
            report(args, ref, runs, width.params(), t_start)
    res = report(args, ref, runs, width.params(), t_start)
    plot(res)
    print(markdown(res))


def report(args, ref: dict, runs: dict, params: int, t_start: float) -> dict:
    a_final = statistics.fmean(r["val_loss"] for r in ref["runs"].values())
    finals: dict[int, list[float]] = {}
    for r in runs.values():
        finals.setdefault(r["tokens"], []).append(r["val_loss"])
    c_final = {t: statistics.fmean(v) for t, v in finals.items()}
    res = {"budget": {**ref["budget"], "multiples": args.multiples, "seeds_c": args.seeds, "quick": args.quick},
           "machine": machine(), "params": params, "teacher": ref["teacher"], "a_final": a_final,
           "a_runs": ref["runs"], "runs": runs, "c_final": {str(t): v for t, v in sorted(c_final.items())},
           "needed": needed_tokens(c_final, a_final) if c_final else None,
           "wall_s_this_invocation": time.perf_counter() - t_start}  # fmt: skip
    write(NAME, res, markdown(res))
    return res


def markdown(res: dict) -> str:
    b, a = res["budget"], res["a_final"]
    m = res["machine"]
    lines = ["# Minitron's token efficiency: prune + KD against random init + KD", "",
             f"Student: {res['params']:,} parameters (SmolLM2-135M-Instruct's 30 layers at hidden 384, ffn 768, 6 heads). "
             f"Both from the top-{b['k']} teacher cache, batch {b['batch']} x {b['seq_len']} tokens, AdamW lr {b['lr']}, "
             "5% warm-up then linear decay over each run's own length. Corpus: Austen + Debian fortunes; held-out "
             f"loss on {b['val_sequences']} sequences of its end. Machine: {m['gpu'] or m['cpu']}, {m['cores']} cores, "
             f"torch {m['torch']}. (a): {len(res['a_runs'])} seeds from minitron_ab.json at {b['tokens']:,} tokens; "
             f"(c): {b['seeds_c']} seed(s) per budget.", "",
             "| student | tokens | held-out loss | ppl | out-of-domain loss | train tokens/s |", "|---|---:|---:|---:|---:|---:|",
             f"| (a) prune + KD | {b['tokens']:,} | {a:.3f} | {math.exp(a):.1f} | "
             f"{statistics.fmean(r['ood_loss'] for r in res['a_runs'].values()):.3f} | "
             f"{statistics.median(r['tokens_per_s'] for r in res['a_runs'].values()):.0f} (median) |"]  # fmt: skip
    for r in sorted(res["runs"].values(), key=lambda r: (r["tokens"], r["seed"])):
        lines.append(f"| (c) random init + KD, seed {r['seed']} | {r['tokens']:,} | {r['val_loss']:.3f} | "
                     f"{math.exp(r['val_loss']):.1f} | {r['ood_loss']:.3f} | {r['tokens_per_s']:.0f} |")  # fmt: skip
    lines.append(f"| teacher | | {res['teacher']['val_loss']:.3f} | {math.exp(res['teacher']['val_loss']):.1f} | "
                 f"{res['teacher']['ood_loss']:.3f} | |")  # fmt: skip
    n = res.get("needed")
    if n:
        lines += ["", f"Tokens (c) needs to reach (a)'s held-out loss {a:.3f} at {b['tokens']:,} tokens: "]
        if n["tokens"] is None or math.isinf(n["tokens"]):
            lines[-1] += f"**not reached, and no estimate** ({n['how']})."
        else:
            lines[-1] += f"**{n['tokens']:,.0f}** ({n['tokens'] / b['tokens']:,.1f}x (a)'s tokens; {n['how']})."
            if n["how"] == "extrapolated":
                lines += ["", f"Assumption: (c)'s final loss keeps falling by {n['drop_per_doubling']:.3f} nats per "
                          f"doubling of its tokens, as between its two largest runs ({n['doublings']:.1f} more "
                          f"doublings). {bend(res['c_final'])}"]  # fmt: skip
    if (RESULTS / f"{NAME}.png").is_file():
        lines += ["", f"![held-out loss vs tokens]({NAME}.png)"]
    return "\n".join(lines) + "\n"


def bend(c_final: dict[str, float]) -> str:
    """Which way the extrapolation likely errs, from how (c)'s drop per doubling changed between its runs."""
    pts = sorted((int(t), v) for t, v in c_final.items())
    drops = [per_doubling(a, b) for a, b in zip(pts, pts[1:])]
    said = ", ".join(f"{d:.3f}" for d in drops)
    if len(drops) < 2:
        return "One slope only: the runs do not show which way the curve bends, so the figure is an order of magnitude."
    if drops[-1] < drops[-2]:
        return (f"The drop per doubling shrank from run to run ({said} nats): if it keeps shrinking, more tokens are "
                "needed than this, so the figure is more likely an underestimate.")  # fmt: skip
    return (f"The drop per doubling grew from run to run ({said} nats): (c) is still leaving its early plateau. "
            "While the drop keeps growing fewer tokens are needed than this, and once the curve flattens more: the "
            "figure is an order of magnitude, not a bound either way.")  # fmt: skip


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for j, r in enumerate(res["a_runs"].values()):
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="o", color="C0", alpha=1 if j == 0 else 0.4, label="(a) prune + KD" if j == 0 else None)
    for i, r in enumerate(sorted(res["runs"].values(), key=lambda r: r["tokens"])):
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="s", color=f"C{i + 1}", label=f"(c) random init + KD, {r['multiple']:g}x")
    ax.axhline(res["teacher"]["val_loss"], color="k", ls="--", lw=1, label="teacher")
    ax.axhline(res["a_final"], color="C0", ls=":", lw=1)
    ax.set(xscale="log", xlabel="tokens seen", ylabel="held-out loss", title="Tokens to a loss: pruned vs from scratch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}.png", dpi=110)


if __name__ == "__main__":
    main()
