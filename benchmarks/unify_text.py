""" "Text is Text, No Matter What" (Bhunia et al., ICCV 2021) on generated printed and handwritten text: the
paper's claims, decided with seeds and intervals at a CPU budget.

    python benchmarks/unify_text.py [--seeds 3] [--scales 0.5,1,2] [--quick] [--render]

`distill unify` with its defaults (specialists trained 16 epochs, as many optimizer steps as each student): two
domains of 8,000 training, 400 validation and 1,000 test images each (printed words and numbers in 14 printed
fonts under scene-like noise; handwritten words in 7 handwriting fonts with elastic distortion, and numbers of
real MNIST digits), validation and test words never seen in training. The unified student has the specialists' own shape
(the paper's setting). A specialist per domain trains once (the first run) and serves every run after it.

1. select (seed 0, the validation split; the test split unread): the four distillation terms' weights times a
   shared scale from --scales (cross-entropy stays 1), chosen by the KD student's validation mean word accuracy.
2. test (seeds 0..n-1, each seed the students' initial weights and batch order, shared by every student of it),
   one run per student so each lands on its own: `union` (the same network on both domains, cross-entropy
   alone), `kd` (the KD student), `no-<term>` (the KD student without that term) and `small` (the KD student
   with the smaller network of earlier releases), each named `<variant>-s<seed>` (`kd-s0` is the chosen scale's
   selection run); `union` and `kd` of every seed first, then each ablation at every seed, then `small`, so the
   central claim decides first, each term next.

Claims, paired by seed with 95% t intervals at n-1 degrees of freedom: each specialist collapses on the other
domain; the KD student within 2 points of each specialist on its own domain; KD beats the union baseline; each
term contributes. Validation curves of every stage (seed 0) show whether the budget converged. Each finished run
lands in the results JSON (a clean clone reads it back, rerunning only what is missing). The specialists' weights
live in runs/, so a clean clone trains them again from the same seed, and on another CPU float rounding gives other
weights: each run records its specialists' fingerprint, pairs are formed only under one set of specialists, and a
comparison a new set must complete gets a KD student of that set too (named `<variant>-s<seed>-<fingerprint>` where
the name was taken by another set's run).
Writes benchmarks/results/unify_text.{json,md} and unify_text_curves.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, finish, machine, paired, write  # noqa: E402

# Each landed run records the design it ran under; only this design's are read back or resumed. 1: specialists 10
# epochs (1,250 optimizer steps against each student's 2,000: the network trained on the union read both domains
# as well or better, so no student could be lifted above it by them); 2: 16 epochs, the recipe's default since;
# 3: validation words held out of training, as test words are (before, validation images showed training words,
# so choices read recall the test does not measure).
DESIGN = 3
ROOT = Path(f"runs/bench-unify-d{DESIGN}")
PREMISE = 0.2  # each specialist's own-domain word accuracy, at least
TERMS = ("hint", "logits", "attention", "affinity")  # ablated in this order: the hint, the term in doubt, first
SMALL = "{arch: recognizer, args: {channels: [16, 32, 64], hidden: 64}}"
QUICK = [
    "data.domains=[{name: printed, train: 256, val: 64, test: 64}, "
    "{name: handwritten, kind: handwritten, train: 256, val: 64, test: 64}]",
    "teacher_train.epochs=1",
    "train.epochs=1",
]
LANDED: dict[str, dict] = {}  # finished runs of the committed results, by name
RUNS: dict[str, dict] = {}
FIRST_SET = "first"  # the specialists of runs landed before fingerprints were recorded (one set, one machine)
TEACHERS = ""  # the fingerprint of the specialists this invocation distils from


def variants(scale: float) -> dict[str, list[str]]:
    """Each student's overrides at the distillation terms' weights times `scale` (cross-entropy stays 1): one
    student per run (its row is "student KD" whatever its objective)."""
    from distill.recipes.unify import paper_objective

    def objective(drop: set[str]) -> str:
        terms = [t.model_copy(update={"weight": scale * t.weight}) if t.name in TERMS else t for t in paper_objective()]
        return "objective=" + json.dumps([t.model_dump(mode="json") for t in terms if t.name not in drop])

    alone = ["union_baseline=false", "examples=0"]
    return {"union": [objective(set(TERMS)), *alone], "kd": [objective(set()), *alone],
            **{f"no-{t}": [objective({t}), *alone] for t in TERMS},
            "small": [objective(set()), f"student={SMALL}", *alone]}  # fmt: skip


def current(runs: dict[str, dict]) -> dict[str, dict]:
    """The landed runs this design reads back (the others stay in the results' history)."""
    return {k: r for k, r in runs.items() if r.get("design") == DESIGN}


def teachers(r: dict) -> str:
    """The fingerprint of the specialists a landed run distilled from."""
    return r.get("teachers", FIRST_SET)


def fingerprint(run_dir: Path) -> str:
    """The specialists' weights trained in `run_dir`, hashed."""
    h = hashlib.sha256()
    for d in ("printed", "handwritten"):
        h.update((run_dir / f"teacher-{d}" / "model.safetensors").read_bytes())
    return h.hexdigest()[:8]


def key(runs: dict[str, dict], name: str, t: str) -> str:
    """A run's name in the results under the specialists `t`: its own, or suffixed with their fingerprint where a
    run of that name landed under other specialists."""
    r = runs.get(name)
    return name if r is None or teachers(r) == t else f"{name}-{t}"


def run(name: str, seed: int, over: list[str], quick: bool, specialists: str | None = None, home: str = "") -> dict:
    """One `distill unify` run (read back when finished, resumed when broken) in ROOT/`home` (default: its name):
    its rows and validation curves. `specialists`: the run directory whose specialists it loads (None: it trains
    its own)."""
    from distill.config import load_config
    from distill.recipes import unify

    if name in RUNS:
        return RUNS[name]
    run_dir = ROOT / (home or name)
    if name in LANDED:
        RUNS[name] = LANDED[name]
        # measured again where the run is still there (the directory of the specialists' run may hold another set)
        if (run_dir / "metrics.jsonl").is_file() and teachers(RUNS[name]) == TEACHERS:
            RUNS[name]["train_hours"] = train_hours(run_dir)
        return RUNS[name]
    base = [f"run.output_dir={ROOT}", f"run.run_name={home or name}", f"run.seed={seed}", "train.progress=false",
            "teacher_train.progress=false", *(QUICK if quick else [])]  # fmt: skip
    if specialists is not None:
        trained = {d: ROOT / specialists / f"teacher-{d}" / "model.safetensors" for d in ("printed", "handwritten")}
        base.append("teacher_checkpoints={" + ", ".join(f"{d}: {p}" for d, p in trained.items()) + "}")
    resume = run_dir if (run_dir / "config.yaml").is_file() else None
    if resume is not None and (run_dir / "results.json").is_file():
        result = json.loads((run_dir / "results.json").read_text())
    else:
        cfg = (
            load_config(unify.Config, run_dir / "config.yaml")
            if resume
            else load_config(unify.Config, None, base + over)
        )
        result = unify.run(cfg, resume=resume).to_json()
    RUNS[name] = {"name": name, "design": DESIGN, "seed": seed, "rows": result["rows"], "info": result["info"],
                  "curves": curves(run_dir), "train_hours": train_hours(run_dir),
                  "teachers": fingerprint(ROOT / (specialists or home or name)), "cpu": machine()["cpu"]}  # fmt: skip
    return RUNS[name]


def specialists_run(first: str, over: list[str], quick: bool) -> str:
    """Trains (or resumes, or reads back) the run in ROOT/`first` whose specialists serve every later run, sets
    TEACHERS to their fingerprint and returns the run's name in the results."""
    global TEACHERS
    if (ROOT / first / "teacher-handwritten" / "model.safetensors").is_file():
        TEACHERS = fingerprint(ROOT / first)
        if (name := key(LANDED, first, TEACHERS)) in LANDED:
            return run(name, 0, over, quick)["name"]
    r = run(".specialists", 0, over, quick, home=first)
    del RUNS[".specialists"]
    TEACHERS = r["teachers"]
    name = key(LANDED, first, TEACHERS)
    RUNS[name] = r | {"name": name}
    return name


def landed(runs: dict[str, dict], variant: str, seed: int, t: str) -> dict | None:
    """`variant`'s run at `seed` under the specialists `t` (None where it has not landed)."""
    for name in (f"{variant}-s{seed}", f"{variant}-s{seed}-{t}"):
        if (r := runs.get(name)) and teachers(r) == t:
            return r
    return None


def sets(runs: dict[str, dict]) -> list[str]:
    """The specialists the landed runs distilled from, the first set first."""
    return sorted({teachers(r) for r in runs.values()}, key=lambda t: t != FIRST_SET)


def landed_anywhere(runs: dict[str, dict], variant: str, seed: int) -> dict | None:
    """`variant`'s run at `seed` under the first set of specialists that has one (None where none has)."""
    return next((r for t in sets(runs) if (r := landed(runs, variant, seed, t))), None)


def pair(runs: dict[str, dict], variant: str, seed: int) -> tuple[dict, dict] | None:
    """The KD student and `variant` at `seed` under one set of specialists (the first set that has both)."""
    for t in sets(runs):
        if (kd := landed(runs, "kd", seed, t)) and (other := landed(runs, variant, seed, t)):
            return kd, other
    return None


def specialists_of(runs: dict[str, dict], first: str, r: dict) -> dict:
    """The specialists' run that `r` distilled from."""
    return next(runs[n] for n in (first, f"{first}-{teachers(r)}") if n in runs and teachers(runs[n]) == teachers(r))


def plan(runs: dict[str, dict], names: list[str], seeds: int, t: str) -> list[tuple[str, str, int]]:
    """The runs still to train under the specialists `t`, in order, as (name, variant, seed): the central claim's
    runs of every seed, then each ablation at every seed (a term decided before the next starts), then the rest;
    a comparison that has no pair under one set of specialists is completed under `t`, with the seed's KD student
    trained first where `t` has none."""
    order = {"union": 0, **{f"no-{term}": 1 + i for i, term in enumerate(TERMS)}}
    out: list[tuple[str, str, int]] = []
    for variant, seed in sorted(((v, s) for s in range(seeds) for v in names if v != "kd"),
                                key=lambda vs: order.get(vs[0], len(order))):  # fmt: skip
        if pair(runs, variant, seed):
            continue
        for v in ("kd", variant):
            if not landed(runs, v, seed, t) and (todo := (key(runs, f"{v}-s{seed}", t), v, seed)) not in out:
                out.append(todo)
    return out


def train_hours(run_dir: Path) -> float:
    """Hours the run's stages take to train: each stage's samples over its median logged samples/s (evaluation
    not counted; a window that held a pause, or shared the cores with other work, is an outlier, not the rate)."""
    samples: dict[str, int] = {}
    speeds: dict[str, list[float]] = {}
    for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if "speed/samples_per_s" in r:
            samples[r["stage"]] = max(samples.get(r["stage"], 0), r["samples_seen"])
            speeds.setdefault(r["stage"], []).append(r["speed/samples_per_s"])
    return sum(n / statistics.median(speeds[stage]) for stage, n in samples.items()) / 3600


def curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """Each stage's validation mean word accuracy against its epoch."""
    out: dict[str, list[list[float]]] = {}
    for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if "eval/mean_word_accuracy" in r:
            out.setdefault(r["stage"], []).append([r["epoch"], r["eval/mean_word_accuracy"]])
    return out


def row(r: dict, model: str) -> dict:
    return next(x for x in r["rows"] if x["model"] == model)


def claims(d: dict) -> dict:
    runs = d["runs"]
    spec = runs[d["specialists"]]
    domains = spec["info"]["domains"]
    out: dict = {"collapse": {}, "kd_vs_specialist": {}, "ablation": {}}
    for dom in domains:
        own = row(spec, f"{dom} specialist")
        out["collapse"][dom] = {o: own[f"{o}_word_accuracy"] for o in domains}
    # the premise: specialists that read their own domain (else nothing below says anything)
    out["premise"] = all(out["collapse"][dom][dom] >= PREMISE for dom in domains)
    out["union_vs_specialist"] = {}

    def on_own_domain(variant: str, dom: str, within: float | None = None) -> dict | None:
        """`variant`'s landed seeds (the first set of specialists that has each) against the `dom` specialist
        they distilled from, on `dom` (None before any has landed)."""
        found = [r for s in range(d["seeds"]) if (r := landed_anywhere(runs, variant, s))]
        ours = [row(r, "student KD")[f"{dom}_word_accuracy"] for r in found]
        own = [row(specialists_of(runs, d["specialists"], r), f"{dom} specialist")[f"{dom}_word_accuracy"]
               for r in found]  # fmt: skip
        return paired(ours, own, "lower", "higher", within) if ours else None

    for dom in domains:
        if kd := on_own_domain("kd", dom, 2):  # within 2 points: the interval's lower end above -2
            out["kd_vs_specialist"][dom] = kd
        # KD can beat the union network only with teachers that read their domain better than it does
        if union := on_own_domain("union", dom):
            out["union_vs_specialist"][dom] = union

    def against(variant: str, lower: str, higher: str) -> dict | None:
        """KD against `variant`, paired on the seeds where both landed under one set of specialists (at least 2)."""
        pairs = [p for s in range(d["seeds"]) if (p := pair(runs, variant, s))]
        if len(pairs) < 2:
            return None
        kd, other = ([row(r, "student KD")["mean_word_accuracy"] for r in side] for side in zip(*pairs))
        return paired(kd, other, lower, higher) | {"specialists": [teachers(r) for r, _ in pairs]}

    out["kd_vs_union"] = against("union", "did not hold", "held")
    for term in TERMS:
        out["ablation"][term] = against(f"no-{term}", "hurts", "contributes")
    out["full_vs_small"] = against("small", "lower", "higher")
    return out


def choose(picks: dict[float, dict]) -> tuple[dict[str, float], float]:
    """The KD student's validation mean word accuracy at each scale, and the scale it picks (ties: 1, then the
    smaller); the test cells are never read."""
    selection = {f"{s:g}": row(r, "student KD")["val_mean_word_accuracy"] for s, r in picks.items()}
    return selection, max(picks, key=lambda s: (selection[f"{s:g}"], s == 1.0, -s))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--scales", default="0.5,1,2", help="shared scales of the distillation terms' weights")
    p.add_argument("--quick", action="store_true", help="tiny data and 1 epoch, to check the script")
    p.add_argument("--render", action="store_true", help="rewrite the markdown (and plot) from the JSON")
    args = p.parse_args()
    out = RESULTS / "unify_text.json"
    if args.render:
        d = json.loads(out.read_text())
        d["claims"] = claims(d)  # decided again from the landed runs, by this version of the script
        write("unify_text", d, markdown(d))
        return plot(d)
    if out.is_file() and not args.quick:
        LANDED.update(current(json.loads(out.read_text()).get("runs", {})))
    global ROOT
    ROOT = ROOT.with_name(ROOT.name + ("-quick" if args.quick else ""))  # never read back as a full-size run
    t0 = time.perf_counter()
    scales = [float(s) for s in args.scales.split(",")]
    first = f"select-x{scales[0]:g}"  # its specialists serve every later run
    d: dict = {"seeds": args.seeds, "scales": scales, "quick": args.quick, "runs": RUNS, "specialists": first}
    name = "unify_text_quick" if args.quick else "unify_text"
    d["figure"] = f"{name}_curves.png"

    def save() -> None:
        """Every landed run stays in the file, also one being trained again here (until it lands anew)."""
        full = {**d, "runs": {**LANDED, **RUNS}}  # LANDED: empty in a quick run
        finish(name, {**full, "claims": claims(full)}, markdown, t0)

    spec = specialists_run(first, variants(scales[0])["kd"], args.quick)
    save()
    # the selection is made once, on the first set of specialists: landed selection runs are read back whatever
    # specialists they had
    picks = {s: run(f"select-x{s:g}", 0, variants(s)["kd"], args.quick, first) for s in scales}
    save()
    d["selection"], d["chosen_scale"] = choose(picks)
    # kd-s0 is the chosen scale's selection run (seed 0, the same overrides) where it had these specialists, read
    # from it, not trained again; its training hours are counted once, there
    # (at the first scale that run is the specialists' run, of these specialists whatever the landed selection had)
    kd0 = key(LANDED, "kd-s0", TEACHERS)
    pick = RUNS[spec] if d["chosen_scale"] == scales[0] else picks[d["chosen_scale"]]
    if teachers(pick) == TEACHERS and kd0 not in LANDED:
        same = {k: v for k, v in pick.items() if k != "train_hours"}
        RUNS.setdefault(kd0, same | {"name": kd0, "same_as": pick["name"]})
    save()
    overs = variants(d["chosen_scale"])
    for todo, variant, seed in plan({**LANDED, **RUNS}, list(overs), args.seeds, TEACHERS):
        run(todo, seed, overs[variant], args.quick, first)
        save()
    plot(d, name)


def plot(d: dict, name: str = "unify_text") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    # the specialists' run's own student is a selection run (kd-s0 may be it): only its teachers are drawn here
    shown = {k: c for k, c in d["runs"][d["specialists"]]["curves"].items() if k.startswith("teacher")}
    shown.update((v, c) for v in ("union", "kd") for c in d["runs"].get(f"{v}-s0", {}).get("curves", {}).values())
    for i, (stage, pts) in enumerate(shown.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, [100 * y for y in ys], marker="o", color=f"C{i % 10}", label=stage)
    ax.set(
        xlabel="epoch",
        ylabel="validation mean word accuracy, both domains (%)",
        title="Text is Text: validation curves (seed 0)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}_curves.png", dpi=110)


def hours(d: dict) -> str:
    """The training time of the landed runs, as a sentence."""
    timed = [r for r in d["runs"].values() if "train_hours" in r]
    if not timed:
        return ""
    total, spec = sum(r["train_hours"] for r in timed), d["runs"].get(d["specialists"], {}).get("train_hours")
    return (f"Training time of {len(timed)} of the {len(d['runs'])} landed runs: {total:.1f} h"
            + (f" (the first, with both specialists, {spec:.2f} h)" if spec is not None else "")
            + ", from each stage's median logged samples/s (evaluation not counted). ")  # fmt: skip


def markdown(d: dict) -> str:
    from distill.report import markdown_table

    m, runs = d.get("machine", {}), d["runs"]
    lines = ["# Text is Text: one recogniser for printed and handwritten text (`distill unify`)", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}. {hours(d)}Wall time of "
             f"the last invocation {d.get('wall_s', 0) / 3600:.2f} h (finished runs are read back, not rerun). "
             f"{'QUICK subset. ' if d['quick'] else ''}Seeds: {d['seeds']}; distillation weight scales tried: "
             f"{', '.join(f'{s:g}' for s in d['scales'])}.", ""]  # fmt: skip
    if d["specialists"] in runs:
        info = runs[d["specialists"]]["info"]
        lines += [f"Budget: {info['train_images']} training and {info['test_images']} test images per domain; "
                  f"specialists {info['teacher_epochs']} epochs, students {info['epochs']} epochs.", ""]  # fmt: skip
    sets_of = [specialists_of(runs, d["specialists"], {"teachers": t}) for t in sets(runs)]
    if len(sets_of) > 1:
        lines += ["## Specialists", "", "Each set the students distilled from (seed 0, by its weights' fingerprint; "
                  "another CPU rounds differently, so a set trained again differs): students are compared only "
                  "under one set.", "",
                  markdown_table([{"specialists": teachers(r), "run": r["name"], "cpu": r.get("cpu", "not recorded"),
                                   **{f"{dom} on {dom}": row(r, f"{dom} specialist")[f"{dom}_word_accuracy"]
                                      for dom in r["info"]["domains"]},
                                   "landed runs under it": sum(teachers(x) == teachers(r) for x in runs.values())}
                                  for r in sets_of]), ""]  # fmt: skip
    if "selection" in d:
        lines += ["## Weights chosen on the validation split (seed 0)", "",
                  markdown_table([{"scale": k, "KD validation mean word acc": v} for k, v in d["selection"].items()]),
                  "", f"Chosen: scale {d['chosen_scale']:g}.", ""]  # fmt: skip
    tests = [r for r in runs.values() if not r["name"].startswith("select")]
    rows = [{"run": r["name"], "specialists": teachers(r), **{k: v for k, v in x.items() if k != "model"}}
            for r in tests for x in r["rows"]
            if x["model"] == "student KD"]  # fmt: skip
    if rows:
        lines += ["## Test rows, per seed", "", markdown_table(rows), ""]
    c = d.get("claims")
    if c:
        lines += ["## The paper's claims (paired by seed, points, 95% t interval with n-1 df)", ""]
        if not c.get("premise", True):
            lines += [f"**The premise does not hold**: a specialist reads under {PREMISE:.0%} of its own domain; the "
                      "comparisons below say nothing at this budget.", ""]  # fmt: skip
        for dom, acc in c["collapse"].items():
            lines.append(f"- {dom} specialist: " + ", ".join(f"{o} {100 * a:.1f}%" for o, a in acc.items()))
        for dom, v in c["kd_vs_specialist"].items():
            lines.append(f"- KD student minus the {dom} specialist on {dom}: {v['mean']:+.2f} +- {v['ci95']:.2f} "
                         f"(per seed {v['diffs']}); within 2 points: **{v['within_2_points']}**")  # fmt: skip
        for dom, v in c.get("union_vs_specialist", {}).items():
            lines.append(f"- premise of the next claim, the union network minus the {dom} specialist on {dom}: "
                         f"{v['mean']:+.2f} +- {v['ci95']:.2f} (per seed {v['diffs']}): **{v['verdict']}**"
                         + (" (the premise holds)" if v["verdict"] == "lower" else
                            " (**the premise does not hold**: this teacher is no better than the baseline KD must beat)"))  # fmt: skip
        labelled = [("KD beats the union baseline", c.get("kd_vs_union"))]
        labelled += [(f"the {t} term contributes (KD minus KD without it)", v) for t, v in c["ablation"].items()]
        labelled.append(("the specialists' shape against the smaller student", c.get("full_vs_small")))
        lines += [f"- {what}: {v['mean']:+.2f} +- {v['ci95']:.2f} (per seed {v['diffs']}): **{v['verdict']}**"
                  + (f" (specialists per seed: {', '.join(v['specialists'])})" if len(set(v["specialists"])) > 1
                     else "") for what, v in labelled if v]  # fmt: skip
        lines.append("")
    lines += [f"Validation curves (seed 0): ![curves]({d.get('figure', 'unify_text_curves.png')})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
