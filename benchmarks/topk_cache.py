"""What a top-k teacher cache costs in quality: the same student, the same tokens, the same batch order,
distilled from the live teacher (full forward KL) and from caches with k in {8, 32, 128} (sparse KL).

    python benchmarks/topk_cache.py [--tokens 204800] [--seeds 3] [--dir runs/bench-minitron]

Teacher SmolLM2-135M; student the Minitron benchmark's width-pruned shape (hidden 384, ffn 768, 6
heads), pruned by activation importance; corpus, held-out and out-of-domain rows as in
benchmarks/minitron_smollm2.py (same --dir: its importance scores and corpora are reused).
Writes benchmarks/results/topk_cache.{json,md}.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from common import RESULTS, machine, mean_std, reading, t_interval, write
from distill.engine import TrainConfig
from distill.evaluate import lm_loss
from distill.kd.cache import CacheConfig, from_cache, open_or_capture
from distill.kd.distiller import Distiller
from distill.pruning import LlmShape, prune
from distill.run import atomic_write
from minitron_smollm2 import KD, arguments, importance, parse, setup


def main() -> None:
    p = arguments(seeds=3)
    p.add_argument("--ks", default="8,32,128")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the committed JSON")
    args = parse(p)
    if args.render:
        res = json.loads((RESULTS / "topk_cache.json").read_text())
        return write("topk_cache", res, markdown(res))
    teacher, tok, train, val, ood, ctx = setup(args)
    dev, acc = ctx.accelerator.device, ctx.accelerator
    folder = Path(args.dir)
    imp = importance(args, teacher, train, dev)
    width = LlmShape.of(teacher.config).with_(hidden=384, ffn=768, heads=6)
    steps = args.tokens // (args.batch * args.seq_len)
    tcfg = TrainConfig(max_steps=steps, batch_size=args.batch, lr=args.lr, warmup_steps=max(1, steps // 20),
                       log_every=10, clip_grad_norm=1.0, progress=True)  # fmt: skip
    sources: dict[str, tuple] = {"live teacher (full KL)": (None, train)}
    capture = {}
    for k in map(int, args.ks.split(",")):
        t0 = time.perf_counter()
        cache = open_or_capture(folder / f"cache-k{k}", teacher, tok, train, CacheConfig(k=k), acc)
        size = sum(f.stat().st_size for f in (folder / f"cache-k{k}").iterdir())
        capture[str(k)] = {"seconds": time.perf_counter() - t0, "mb": size / 2**20, **cache.captured}
        sources[f"cache k={k}"] = (k, cache)
    results: dict[str, dict] = {}
    for name, (k, data) in sources.items():
        for seed in range(args.seeds):
            saved = folder / "topk" / f"{k or 'live'}-s{seed}.json"
            if saved.is_file():
                results.setdefault(name, {})[seed] = json.loads(saved.read_text())
                continue
            student = prune(teacher, imp, width).to(dev)
            teachers = {"teacher": teacher} if k is None else {}
            distiller = Distiller(student, [KD] if k is None else from_cache([KD]), teachers).to(dev)
            t0 = time.perf_counter()
            ctx.fit(distiller, data, tcfg, stage=f"topk-{k or 'live'}-s{seed}", seed_from=f"data-{seed}",
                    product=student)  # fmt: skip
            out = {"seconds": time.perf_counter() - t0, "val_loss": lm_loss(student, val, acc, 8),
                   "ood_loss": lm_loss(student, ood, acc, 8)}  # fmt: skip
            atomic_write(saved, json.dumps(out))
            results.setdefault(name, {})[seed] = out
            print(f"{name} seed {seed}: held-out {out['val_loss']:.4f}", flush=True)
    res = {"budget": {"tokens": args.tokens, "steps": steps, "batch": args.batch, "seq_len": args.seq_len,
                      "seeds": args.seeds, "lr": args.lr, "quick": args.quick},
           "machine": machine(), "capture": capture, "runs": results}  # fmt: skip
    old = RESULTS / "topk_cache.json"
    if old.is_file() and "gpu_partial" in json.loads(old.read_text()):  # the GPU run is kept beside a CPU rerun
        res["gpu_partial"] = json.loads(old.read_text())["gpu_partial"]
    md = markdown(res)
    write("topk_cache", res, md)
    print(md)


def markdown(res: dict) -> str:
    b = res["budget"]
    live = res["runs"]["live teacher (full KL)"]
    lines = [
        "# Top-k teacher cache: quality against the live teacher",
        "",
        f"Student SmolLM2-135M width-pruned to 58.7M parameters; {b['tokens']:,} tokens each ({b['steps']} steps x "
        f"{b['batch']} x {b['seq_len']}), the same batches in the same order for every source (per seed), "
        f"{b['seeds']} seeds. Machine: {res['machine']['gpu'] or res['machine']['cpu']}, torch "
        f"{res['machine']['torch']}.",
        "",
        "| teacher signal | held-out loss | - live (paired, mean +- std) | out-of-domain loss | cache MB | train s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, seeds in res["runs"].items():
        val, ood = (mean_std([s[key] for s in seeds.values()]) for key in ("val_loss", "ood_loss"))
        diffs = [s["val_loss"] - live[i]["val_loss"] for i, s in seeds.items() if i in live]
        d = mean_std(diffs) if name != "live teacher (full KL)" else None
        k = name.split("=")[-1] if "=" in name else None
        mb = f"{res['capture'][k]['mb']:.0f}" if k is not None and k in res["capture"] else ""
        secs = sum(s["seconds"] for s in seeds.values()) / len(seeds)
        lines.append(f"| {name} | {val[0]:.4f} +- {val[1]:.4f} | "
                     f"{'' if d is None else f'{d[0]:+.4f} +- {d[1]:.4f}'} | {ood[0]:.4f} | {mb} | {secs:.0f} |")  # fmt: skip
    lines += [
        "",
        f"Perplexity of the live-teacher student: {math.exp(mean_std([s['val_loss'] for s in live.values()])[0]):.1f}.",
        "",
        "Held-out loss of each cache minus the live teacher, paired by seed, 95% t interval (n-1 df):",
        "",
    ]
    for name, seeds in res["runs"].items():
        if name != "live teacher (full KL)":
            m, h = t_interval([s["val_loss"] - live[i]["val_loss"] for i, s in seeds.items() if i in live])
            lines.append(f"- {name}: {m:+.4f} +- {h:.4f} ({len(seeds)} seeds): {reading(m, h, 'better', 'worse')}")
    if "gpu_partial" in res:
        lines += ["", *gpu_partial(res["gpu_partial"])]
    return "\n".join(lines) + "\n"


def gpu_partial(g: dict) -> list[str]:
    """The longer run on a lent GPU, cut short by its device time (held-out losses by seed, stored by hand from
    its log: no script of this repository wrote that run's JSON)."""
    live = g["live"]
    rows = []
    for key, label in (("k8", "cache k=8"), ("k64_minitron_a", "top-64 cache (the Minitron benchmark's variant a)")):
        runs = g[key]
        paired = [v - live[s] for s, v in runs.items()]
        m, h = t_interval(paired)
        unpaired = mean_std(list(runs.values()))[0] - mean_std(list(live.values()))[0]
        rows.append(f"- {label}: {', '.join(f'{v:.3f}' for v in runs.values())}; paired {m:+.3f} +- {h:.3f} "
                    f"({len(paired)} seeds; unpaired difference of means {unpaired:+.3f})")  # fmt: skip
    return [
        f"At {g['tokens']:,} tokens per student on {g['machine']} ({g['note']}; the same lr, batch, shape and "
        f"order): live teacher {mean_std(list(live.values()))[0]:.3f} ({', '.join(f'{v:.3f}' for v in live.values())})",
        "",
        *rows,
        "",
    ]


if __name__ == "__main__":
    main()
