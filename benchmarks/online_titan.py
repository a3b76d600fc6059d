"""Online distillation (ERNIE 3.0 Titan) from a teacher worth learning from: can each claim hold or fail?

    python benchmarks/online_titan.py [--seeds 3] [--steps 300] [--pretrain 1500] [--render]

Stages, each a `distill online` run under runs/bench-online-titan (resumable: a finished run is reused, an
interrupted one resumed; every finished run lands in benchmarks/results/online_titan.{json,md} at once):
    pretrain   a 6-layer teacher learns Jane Austen (byte-level BPE of 4,096 tokens) on the training split less a
               validation carve; every later run starts from these weights (the same teacher for every seed)
    select     relation-distilled students (relations + their own LM loss, no KL), with and without an
               auxiliary layer, over a grid of (relation weight, LM-loss weight), scored on the validation carve
    online-sN  one cohort per seed: the teacher continues on its LM loss while six students learn from its
               signals of the same step: medium and small by logit KL, small from medium (a teacher assistant),
               medium by relations + LM loss with and without the auxiliary layer (the weights chosen on
               validation), medium by KL + relations
    offline-sN the teacher again (bit-identical), then the KL students from the finished teacher on the online
               students' batches, and every one of them alone on the LM loss
Claims are decided on the held-out loss (the corpus's end) paired by seed, with 95% t intervals (n-1 df).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, reading, t_interval, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.recipes import online  # noqa: E402

NAME = "online_titan"
TEACHER = "{layers: 6, hidden: 256, heads: 4, ffn: 688}"
MEDIUM = "{layers: 4, hidden: 128, heads: 4, ffn: 344}"
SMALL = "{layers: 1, hidden: 64, heads: 2, ffn: 172}"
GRID = [(0.5, 1.0), (2.0, 1.0), (8.0, 1.0), (2.0, 0.25)]  # (relation weight, LM-loss weight) tried on validation
PREMISE_NATS = online.PREMISE_NATS


def student(name: str, shape: str, **kw) -> str:
    extra = "".join(f", {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in kw.items())
    return f"{{name: {name}, shape: {shape}{extra}}}"


def overrides(args, run_name: str, seed: int, steps: int) -> list[str]:
    return [
        f"run.output_dir={args.out}", f"run.run_name={run_name}", f"run.seed={seed}", "data.source=austen",
        f"data.seq_len={args.seq_len}", f"data.max_val_sequences={args.val}", "relation.heads=2",
        f"train.max_steps={steps}", f"train.batch_size={args.batch}", f"train.lr={args.lr}",
        f"train.warmup_steps={max(1, steps // 20)}", "train.log_every=25", f"train.eval_every={steps}",
        "train.save_every=100", "train.clip_grad_norm=1.0", "train.progress=false",
    ]  # fmt: skip


def from_teacher(args) -> list[str]:
    """The pretrained teacher and its tokenizer: the start of every later run."""
    t = f"{args.out}/pretrain/models/teacher"
    return [f"teacher.path={t}", f"tokenizer={t}", "tokenizer_vocab=null"]


def launch(args, run_name: str, over: list[str]) -> dict:
    """A `distill online` run: reused when finished, resumed when interrupted."""
    run_dir = Path(args.out) / run_name
    if (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())
    t0 = time.perf_counter()
    if (run_dir / "config.yaml").is_file():
        result = online.run(load_config(online.Config, run_dir / "config.yaml"), resume=run_dir)
    else:
        result = online.run(load_config(online.Config, None, over))
    print(f"{run_name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return {**result.to_json(), "seconds": time.perf_counter() - t0}


def grid_students() -> list[str]:
    return [
        student(f"rel{i}{'_aux' if aux else ''}", MEDIUM, kl=0, relation=r, ce=c, auxiliary_layer=aux)
        for aux in (False, True)
        for i, (r, c) in enumerate(GRID)
    ]


def chosen(select: dict, aux: bool) -> tuple[float, float]:
    """The grid point with the lowest validation loss, with or without the auxiliary layer."""
    loss = {r["model"]: r["val_loss"] for r in select["rows"]}
    best = min(range(len(GRID)), key=lambda i: loss[f"rel{i}{'_aux' if aux else ''}"])
    return GRID[best]


def online_students(select: dict) -> list[str]:
    (r, c), (ra, ca) = chosen(select, False), chosen(select, True)
    return [
        student("medium_kl", MEDIUM),
        student("small_kl", SMALL),
        student("small_ta", SMALL, source="medium_kl"),
        student("medium_rel", MEDIUM, kl=0, relation=r, ce=c),
        student("medium_rel_aux", MEDIUM, kl=0, relation=ra, ce=ca, auxiliary_layer=True),
        student("medium_klrel", MEDIUM, relation=r),
    ]


OFFLINE = [student("medium_kl", MEDIUM), student("small_kl", SMALL), student("small_ta", SMALL, source="medium_kl")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300, help="the online phase's teacher (and students') steps")
    p.add_argument("--pretrain", type=int, default=1500, help="the teacher's pre-training steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val", type=int, default=512, help="held-out (and validation) sequences")
    p.add_argument("--out", default="runs/bench-online-titan")
    p.add_argument("--quick", action="store_true", help="a few steps, to check the script")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the committed JSON")
    args = p.parse_args()
    if args.render:
        res = json.loads((RESULTS / f"{NAME}.json").read_text())
        return write(NAME, res, markdown(res))
    name = NAME
    if args.quick:
        args.seeds, args.steps, args.pretrain, args.val, args.out, name = 2, 6, 10, 16, "runs/quick-titan", "quick"
    t0 = time.perf_counter()
    committed = RESULTS / f"{name}.json"  # runs a clean clone need not repeat (runs/ may be gone)
    runs: dict[str, dict] = json.loads(committed.read_text())["runs"] if committed.is_file() else {}
    budget = {k: getattr(args, k) for k in ("seeds", "steps", "pretrain", "batch", "seq_len", "lr", "val", "quick")}

    def report() -> None:
        res = {"budget": budget, "shapes": {"teacher": TEACHER, "medium": MEDIUM, "small": SMALL}, "grid": GRID,
               "machine": machine(), "runs": runs, "wall_s_this_invocation": time.perf_counter() - t0}  # fmt: skip
        write(name, res, markdown(res))

    def stage(run_name: str, over: list[str]) -> dict:
        if run_name not in runs:
            runs[run_name] = launch(args, run_name, over)
            report()
        return runs[run_name]

    # the teacher is pre-trained once, without the validation carve; every later run starts from it
    valid = ["data.evaluate_on=validation"]
    pre = overrides(args, "pretrain", 0, args.pretrain) + valid + ["tokenizer_vocab=4096", f"teacher.shape={TEACHER}"]
    if not (Path(args.out) / "pretrain" / "models" / "teacher").is_dir():
        runs.pop("pretrain", None)  # its weights are needed, not only its figures
    stage("pretrain", pre + ["students=[]", "train.save_every=250"])
    select = stage(
        "select", overrides(args, "select", 0, args.steps) + valid + from_teacher(args) + [f"students=[{', '.join(grid_students())}]"]
    )  # fmt: skip
    for seed in range(args.seeds):
        base = overrides(args, f"online-s{seed}", seed, args.steps) + from_teacher(args)
        stage(f"online-s{seed}", base + [f"students=[{', '.join(online_students(select))}]"])
        base = overrides(args, f"offline-s{seed}", seed, args.steps) + from_teacher(args)
        stage(f"offline-s{seed}", base + ["mode=offline", "alone=true", f"students=[{', '.join(OFFLINE)}]"])
    report()
    print(markdown(json.loads((RESULTS / f"{name}.json").read_text())))


def losses(res: dict) -> dict[str, dict[int, float]]:
    """`variant: model` -> {seed: held-out loss} over the seeds' online and offline runs."""
    out: dict[str, dict[int, float]] = {}
    for run_name, r in res["runs"].items():
        if run_name.startswith(("online-s", "offline-s")):
            variant, seed = run_name.rsplit("-s", 1)
            for row in r["rows"]:
                out.setdefault(f"{variant}: {row['model']}", {})[int(seed)] = row["val_loss"]
    return out


def claim(L: dict, better: str, worse: str, what: str, margin: float = 0.0) -> list[str] | None:
    """`worse - better` paired by seed, with its 95% t interval: held when the interval lies above `margin`
    (the margin is a tolerance when negative: 'within 0.05 nats')."""
    if better not in L or worse not in L:
        return None
    seeds = sorted(set(L[better]) & set(L[worse]))
    diffs = [L[worse][s] - L[better][s] for s in seeds]
    if len(diffs) < 2:
        return [what, "undecided (fewer than 2 paired seeds)", f"{diffs[0]:+.4f}" if diffs else "-", str(len(diffs))]
    m, h = t_interval(diffs)
    verdict = reading(m - margin, h, "did not hold", "held")
    if margin and verdict.startswith("a tie"):
        verdict = f"undecided (the interval holds {margin:+.2f})"
    return [what, verdict, f"{m:+.4f} ± {h:.4f}", str(len(seeds))]


def markdown(res: dict) -> str:
    b, sh, m = res["budget"], res["shapes"], res["machine"]
    runs, L = res["runs"], losses(res)
    hours = sum(r.get("seconds", 0) for r in runs.values()) / 3600
    lines = [
        "# Online distillation (ERNIE 3.0 Titan) from a pre-trained teacher, on Jane Austen",
        "",
        f"Teacher {sh['teacher']} pre-trained from scratch for {b['pretrain']} steps, then continuing for "
        f"{b['steps']} steps (the online phase); students medium {sh['medium']}, small {sh['small']}, {b['steps']} "
        f"steps each on the same batches; {b['batch']} x {b['seq_len']} tokens a step, lr {b['lr']}; byte-level BPE "
        f"of 4,096 tokens; held-out: the corpus's last {b['val']} sequences; relation and LM-loss weights chosen on "
        f"a validation carve of the training split. {b['seeds']} seeds, 95% t intervals (n-1 df), paired by seed. "
        f"Machine: {m['cpu']}, {m['cores']} cores; {hours:.2f} hours of runs.",
        "",
    ]
    if "pretrain" in runs:
        pre = {r["model"]: r["val_loss"] for r in runs["pretrain"]["rows"]}
        lines.append(
            f"Pre-training: the teacher's validation loss {pre['teacher at the start']:.3f} -> {pre['teacher']:.3f}."
        )
    if "select" in runs:
        sel = {r["model"]: r["val_loss"] for r in runs["select"]["rows"]}
        lines += ["", "Relation-distilled students on the validation carve (relations + own LM loss, no KL):", "",
                  "| relation weight | LM-loss weight | no auxiliary layer | auxiliary layer |", "|---:|---:|---:|---:|"]  # fmt: skip
        for i, (r, c) in enumerate(res["grid"]):
            lines.append(f"| {r} | {c} | {sel.get(f'rel{i}', math.nan):.4f} | {sel.get(f'rel{i}_aux', math.nan):.4f} |")
        aux = {a: chosen(runs["select"], a) for a in (False, True)}
        lines.append(f"\nChosen: {aux[False]} without, {aux[True]} with the auxiliary layer (relation, LM loss).")
        lowest = min(r for r, _ in res["grid"])
        if any(a[0] == lowest for a in aux.values()):
            lines.append(
                f"The choice lies at the grid's smallest relation weight ({lowest}): smaller weights, down to none, "
                "were not tried: the best weight may be smaller still."
            )
    forwards = {v: [r["info"]["teacher_forwards"] for n, r in runs.items() if n.startswith(v + "-s")] for v in ("online", "offline")}  # fmt: skip
    lines += [
        "",
        "| variant: model | params | held-out loss (95% CI) | perplexity | source forwards it cost | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = {f"{n.rsplit('-s', 1)[0]}: {r['model']}": r for n, run in runs.items() if "-s" in n for r in run["rows"]}
    for key, per_seed in L.items():
        mean, half = t_interval(list(per_seed.values()))
        r = rows[key]
        lines.append(
            f"| {key} | {r['params']:,} | {mean:.4f} ± {half:.4f} | {math.exp(mean):.1f} | {r['teacher_forwards']:,} "
            f"| {len(per_seed)} |"
        )
    if forwards["online"] and forwards["offline"]:
        lines.append(
            f"\nForward passes of the sources (teacher, and the assistant for small_ta) per seed: online "
            f"{forwards['online'][0]:,} for six students (the teacher's own training forwards, reused); offline "
            f"{forwards['offline'][0]:,} for three (the teacher's training, then one per student step)."
        )
    premise, ok = [], True
    start = [L["online: teacher at the start"][s] for s in sorted(L.get("online: teacher at the start", {}))]
    alone = [k for k in L if k.endswith(" alone")]
    if start and alone:
        best = min(min(L[k].values()) for k in alone)
        ok = best - max(start) >= PREMISE_NATS
        premise.append(
            f"Premise 1, a teacher worth learning from: the teacher at the start of the online phase {max(start):.4f}, "
            f"the best student alone at the end {best:.4f}: {best - max(start):.3f} nats, "
            f"{'holds' if ok else 'does NOT hold'} (needed {PREMISE_NATS})."
        )
    gap = claim(L, "online: medium_kl", "online: small_kl", "")
    if gap:
        said = {"held": "holds: the smallest student distilled directly is measurably worse"}.get(
            gap[1], "does NOT hold: the smallest student distilled directly is not measurably worse"
        )
        if gap[1].startswith("undecided"):
            said = "undecided (fewer than 2 seeds)"
        premise.append(
            f"Premise 2, a gap the assistant can bridge: small_kl (direct) minus medium_kl, online: {gap[2]} ({said})."
        )
    lines += ["", *premise, "", "| claim | verdict | difference (95% CI) | seeds |", "|---|---|---:|---:|"]
    claims = [
        claim(L, "online: medium_kl", "offline: medium_kl", "online medium within 0.05 nats of offline", -0.05),
        claim(L, "online: small_kl", "offline: small_kl", "online small within 0.05 nats of offline", -0.05),
        claim(L, "online: medium_kl", "offline: medium_kl alone", "online medium beats alone"),
        claim(L, "offline: medium_kl", "offline: medium_kl alone", "offline medium beats alone"),
        claim(L, "online: small_kl", "offline: small_kl alone", "online small beats alone"),
        claim(L, "offline: small_kl", "offline: small_kl alone", "offline small beats alone"),
        claim(L, "online: small_ta", "online: small_kl", "the assistant helps the smallest student (online)"),
        claim(L, "offline: small_ta", "offline: small_kl", "the assistant helps the smallest student (offline)"),
        claim(L, "online: medium_rel_aux", "online: medium_rel", "the auxiliary layer helps relation-distilled students"),
        claim(L, "online: medium_klrel", "online: medium_kl", "relations add to the logit KL"),
        claim(L, "online: medium_rel", "offline: medium_kl alone", "relation-distilled medium beats alone"),
    ]  # fmt: skip
    if not ok:  # no teacher worth learning from: the distillation claims cannot be read off these runs
        claims = [[c[0], "not drawn: premise 1 does not hold", c[2], c[3]] if c else c for c in claims]
    lines += [f"| {' | '.join(c)} |" for c in claims if c]
    lines += [
        "",
        "Difference: the second model's loss minus the first's (positive: the claim's direction). 'within 0.05 "
        "nats' holds when the interval of (offline minus online) lies above -0.05.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
