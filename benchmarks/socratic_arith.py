"""Socratic CoT's claim, decidable: on generated multi-step word problems with gold decompositions, does a
small model trained on sub-questions and sub-answers (a question generator and an answerer) solve more
problems than the same model trained on chain-of-thought solutions, which beats answer-only training?

    python benchmarks/socratic_arith.py [--seeds 3] [--side-seeds 1] [--teacher-seeds 1] [--render]

Problems: `data.source=arith`, 2 to 3 steps, 1,000 training, 200 validation (the training distribution),
500 test problems, each test problem holding an ordered pair of operations no training problem holds
(mul then sub, div then add). Student: SmolLM2-135M-Instruct, every variant from the same weights.

1. select (seed 0, scored on the validation split, the test split unread): per variant, the learning rate
   from {1e-4, 3e-4} at one epoch, then one epoch against two at the chosen rate (unless one epoch already
   solves 99% of the validation problems).
2. test (seeds 0..n-1: the order of the training batches): each variant at its chosen setting, scored on
   the test split; variants of one seed see the same problems in the same order. The claim's two main rows
   (Socratic, CoT) get --seeds seeds, answer-only and unified --side-seeds (default: as many).
3. teacher: Qwen2.5-Coder-0.5B writes the sub-questions of 300 training problems; the Socratic pair and the
   unified model trained on them against the same trained on gold sub-questions (--teacher-seeds students).
A variant's test runs start once its own setting is chosen; the order (CoT, Socratic and answer-only, their
test seeds, the Socratic pair's teacher arm, the unified model, its teacher arm) puts the premise and the main
claim first.

Claims, paired by seed, 95% t interval with n-1 df: CoT beats answer-only (the premise: the problems are
within reach of the student at this budget), Socratic QG + QA beats CoT, the unified model against the
pair. Each finished run is stored under runs/bench-socratic-arith/ and the results file is rewritten after
it, so an interrupted benchmark resumes where it stopped.
Writes benchmarks/results/socratic_arith.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, finish, t_interval  # noqa: E402

ROOT = Path("runs/bench-socratic-arith")
LANDED: dict[str, dict] = {}  # finished runs of the committed results, by run name
RUNS: dict[str, dict] = {}  # the runs of this invocation (landed or new), committed in the results
VARIANTS = ["answer", "cot", "socratic", "unified"]
MAIN = ["cot", "socratic"]  # the claim's two main rows: these first, with the most seeds
ORDER = [*MAIN, "answer"]  # chosen and tested before the teacher stage; the unified model comes after it
LRS = [1e-4, 3e-4]
TEACHER_PROBLEMS = 300
DATA = {"source": "arith", "steps": [2, 3], "size": 1700, "val": 200, "test": 500, "seed": 0}
BOOT = 2000
CLAIMS = [("cot", "answer", "premise: chain of thought beats answer-only"),
          ("socratic", "cot", "Socratic QG + QA beats chain of thought"),
          ("socratic", "answer", "Socratic QG + QA beats answer-only"),
          ("unified", "socratic", "the unified model against the QG + QA pair")]  # fmt: skip


def overrides(variant: str, lr: float, epochs: int, split: str, seed: int, name: str) -> list[str]:
    data = ", ".join(f"{k}: {json.dumps(v)}" for k, v in {**DATA, "evaluate_on": split}.items())
    return [f"data={{{data}}}", "teacher=null", f"students.variants=[{variant}]", "students.max_length=160",
            f"students.train={{epochs: {epochs}, batch_size: 8, lr: {lr}, schedule: linear, warmup_steps: 10, "
            "log_every: 20, weight_decay: 0.0}", "inference={max_steps: 5, max_tokens: 40, calculator: true, batch_size: 50}",
            f"run.seed={seed}", f"run.output_dir={ROOT / 'runs'}", f"run.run_name={name}",
            "run.precision=no", "traces=2"]  # fmt: skip


def run_one(variant: str, lr: float, epochs: int, split: str, seed: int, extra: tuple = (), tag: str = "") -> dict:
    """One `distill socratic` run of one variant (stored; a finished one is read back, a broken one resumed)."""
    from distill.config import load_config
    from distill.recipes import socratic

    name = f"{tag}{split}-{variant}-lr{lr:g}-e{epochs}-s{seed}"
    done = ROOT / "done" / f"{name}.json"
    if not done.is_file() and name in LANDED:  # committed by an earlier session whose runs/ is gone
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(LANDED[name]))
    if done.is_file():
        # the first validation runs ran under bf16 autocast (an AMX CPU's `auto`), before precision was recorded
        RUNS[name] = {"precision": "bf16", **json.loads(done.read_text())}
        return RUNS[name]
    run_dir = ROOT / "runs" / name
    if (run_dir / "config.yaml").is_file():
        result = socratic.run(load_config(socratic.Config, run_dir / "config.yaml"), resume=run_dir)
    else:
        over = overrides(variant, lr, epochs, split, seed, name) + list(extra)
        cfg = load_config(socratic.Config, "demo", over, recipe="socratic")
        result = socratic.run(cfg)
    traces = [json.loads(x) for x in (run_dir / "traces.jsonl").read_text().splitlines()]
    (row,) = result.rows
    out = {"variant": variant, "lr": lr, "epochs": epochs, "split": split, "seed": seed, "precision": "fp32",
           "name": name, "accuracy": row["accuracy"], "tokens_per_problem": row["tokens_per_problem"],
           "problems_per_s": row["problems_per_s"], "correct": "".join("01"[bool(t["correct"])] for t in traces),
           "by_steps": {str(r["solution steps"]): r[socratic.LABELS[variant]] for r in result.tables["accuracy by solution steps"]},
           "example": result.tables["example solutions"][0]["solution"],
           "trained_on": row["trained_on"], "annotation": result.tables["annotation"][0]}  # fmt: skip
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out))
    RUNS[name] = out
    return out


def select(variant: str, landed: Callable[[], None]) -> tuple[dict, list[dict]]:
    """The variant's setting chosen on the validation split: the better rate at one epoch, then 1 vs 2 epochs.
    `landed` is called after each run (it writes the results files, so that a finished run is never lost)."""
    tried = []
    for lr in LRS:
        tried.append(run_one(variant, lr, 1, "validation", 0))
        landed()
    best = max(tried, key=lambda r: (r["accuracy"], -r["lr"]))
    # a second epoch is tried only where the first leaves more than 1% of the validation problems unsolved:
    # a perfect first epoch cannot be beaten, and a gain of 2 problems in 200 could not be told from noise
    if best["accuracy"] < 0.99:
        tried.append(run_one(variant, best["lr"], 2, "validation", 0))
        landed()
    return max(tried, key=lambda r: (r["accuracy"], -r["epochs"], -r["lr"])), tried


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the Socratic and CoT students")
    p.add_argument("--side-seeds", type=int, help="seeds of answer-only and unified (default: --seeds)")
    p.add_argument("--teacher-seeds", type=int, help="seeds of the teacher-written arm (default: --seeds)")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher-written sub-questions (no llama.cpp)")
    args = p.parse_args()
    if args.render:
        data = json.loads((RESULTS / "socratic_arith.json").read_text())
        (RESULTS / "socratic_arith.md").write_text(markdown(data))
        return
    committed = RESULTS / "socratic_arith.json"
    prior = json.loads(committed.read_text()) if committed.is_file() else {}
    LANDED.update((r["name"], r) for r in prior.get("runs", []) if "name" in r)
    t0 = time.perf_counter()
    data: dict = {"data": DATA, "lrs": LRS, "selection": [], "chosen": {}, "test": [], "runs": []}
    # the teacher arm's landed rows stay in the file until its stage revisits them (it replaces them by seed)
    data.update({k: prior[k] for k in ("teacher", "teacher_claim") if k in prior})
    side = args.seeds if args.side_seeds is None else args.side_seeds

    def choose(v: str) -> None:
        """The variant's setting, on the validation split, before any of its test runs."""
        if v in data["chosen"]:
            return
        chosen, tried = select(v, lambda: save(data, t0))
        data["selection"] += [{k: r[k] for k in ("variant", "lr", "epochs", "precision", "accuracy")} for r in tried]
        data["chosen"][v] = {"lr": chosen["lr"], "epochs": chosen["epochs"]}
        save(data, t0)

    def test(v: str, seed: int) -> None:
        choose(v)
        c = data["chosen"][v]
        r = run_one(v, c["lr"], c["epochs"], "test", seed)
        keep = (
            "name",
            "variant",
            "seed",
            "precision",
            "accuracy",
            "tokens_per_problem",
            "problems_per_s",
            "by_steps",
            "example",
        )
        data["test"].append({k: r[k] for k in keep})
        data["claims"] = claims(data["test"], RUNS)
        save(data, t0)

    # most telling first, so that a stopped benchmark has decided what it could: the premise and the main
    # claim (seed 0, then the main rows' other seeds), the pair's teacher arm, then the unified model and its arm
    for v in ORDER:
        choose(v)
    for seed in range(max(args.seeds, side)):
        for v in ORDER:
            if seed < (args.seeds if v in MAIN else side):
                test(v, seed)
    teacher_seeds = args.seeds if args.teacher_seeds is None else args.teacher_seeds
    if not args.no_teacher:
        teacher_stage(data, "socratic", teacher_seeds, t0)
    for seed in range(side):
        test("unified", seed)
    if not args.no_teacher:
        teacher_stage(data, "unified", teacher_seeds, t0)


def save(data: dict, t0: float) -> None:
    data["runs"] = list({**LANDED, **RUNS}.values())  # landed runs not yet revisited are kept, never dropped
    finish("socratic_arith", data, markdown, t0)


def teacher_stage(data: dict, variant: str, seeds: int, t0: float) -> None:
    """The paper's second setting: Qwen2.5-Coder-0.5B (llama.cpp) writes the sub-questions of the first
    TEACHER_PROBLEMS training problems from their gold steps; the variant (the Socratic pair or the unified
    model) trained on the kept ones against the same variant trained on gold sub-questions of as many problems,
    at its chosen setting. The label store keeps the teacher's answers, so a second variant costs no teacher time."""
    from distill.labeling.llama_server import llama_cpp_server
    from qwen_teacher import ALIAS, teacher_gguf

    c = data["chosen"][variant]
    with llama_cpp_server(teacher_gguf(), ALIAS, ROOT / "server.log", n_ctx=2048, threads=2, port=8766) as url:
        for seed in range(seeds):
            teacher = [f"teacher={{kind: server, url: '{url}', model: {ALIAS}, concurrency: 1}}", "teacher_accuracy=false",
                       f"store={ROOT / 'teacher.sqlite'}", "data.gold_subquestions=false", f"data.max_train={TEACHER_PROBLEMS}"]  # fmt: skip
            written = run_one(variant, c["lr"], c["epochs"], "test", seed, tuple(teacher), "teacher-")
            kept = written["trained_on"]
            gold = run_one(variant, c["lr"], c["epochs"], "test", seed, (f"data.max_train={kept}",), f"gold{kept}-")
            data["teacher"] = [r for r in data.get("teacher", []) if (r["variant"], r["seed"]) != (variant, seed)] + [
                {"variant": variant, "seed": seed, "problems": kept, "teacher_written": written["accuracy"], "gold": gold["accuracy"],
                 "annotation": written["annotation"], "names": [written["name"], gold["name"]]}]  # fmt: skip
            data["teacher_claim"] = teacher_claims(data["teacher"])
            save(data, t0)


def teacher_claims(rows: list[dict]) -> list[dict]:
    """Teacher-written against gold sub-questions, one claim per variant."""
    from distill.recipes.socratic import LABELS

    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        pairs = [
            {"variant": arm, "seed": r["seed"], "name": n}
            for r in rows
            if r["variant"] == variant
            for arm, n in zip(TEACHER_ARMS, r["names"])
        ]
        out += claims(pairs, RUNS, [(*TEACHER_ARMS, f"{LABELS[variant]}: teacher-written against gold sub-questions")])
    return out


TEACHER_ARMS = ("teacher-written", "gold")


def claims(
    test: list[dict],
    runs: dict[str, dict],
    which: list[tuple[str, str, str]] = CLAIMS,
    values: Callable[[dict], list[float]] | None = None,
    unit: str = "pts",
) -> list[dict]:
    """Each claim paired on the same test problems by seed: a two-level bootstrap (seeds, then problems, both
    drawn with replacement) of the mean difference decides; the t interval over the seeds' means is shown.
    `values` gives a run's per-problem score, higher better (default: 100 x correct, in points)."""
    import numpy as np

    by = {(r["variant"], r["seed"]): r["name"] for r in test}
    values = values or (lambda r: [100.0 * (c == "1") for c in r["correct"]])
    digits = 2 if unit == "pts" else 4
    rng = np.random.default_rng(0)
    out = []
    for a, b, what in which:
        seeds = sorted(s for v, s in by if v == a and (b, s) in by)
        if not seeds:
            continue
        score = lambda v, ss=seeds: np.array([values(runs[by[v, s]]) for s in ss], float)  # noqa: E731
        diff = score(a) - score(b)  # seeds x problems
        pick_s = rng.integers(0, len(seeds), (BOOT, len(seeds)))
        pick_p = rng.integers(0, diff.shape[1], (BOOT, diff.shape[1]))
        boot = np.array([diff[s][:, p].mean() for s, p in zip(pick_s, pick_p)])
        lo, hi = np.percentile(boot, [2.5, 97.5])
        half = round(t_interval(list(diff.mean(axis=1)))[1], digits) if len(seeds) > 1 else None
        verdict = "held" if lo > 0 else "did not hold (lower)" if hi < 0 else "a tie (the interval holds 0)"
        out.append({"claim": what, "a": a, "b": b, "seeds": len(seeds), "problems": diff.shape[1],
                    f"diff_{unit}": round(float(diff.mean()), digits), f"boot95_{unit}": [round(float(lo), digits),
                    round(float(hi), digits)], f"seed_t95_{unit}": half, "verdict": verdict})  # fmt: skip
    return out


def _claim_line(c: dict) -> str:
    t = f" (t: +- {c['seed_t95_pts']:.2f})" if c["seeds"] > 1 else ""
    return (f"- {c['claim']}: {c['diff_pts']:+.2f} points, 95% [{c['boot95_pts'][0]:+.2f}, {c['boot95_pts'][1]:+.2f}] "
            f"over {c['seeds']} seed(s) x {c['problems']} problems{t}: **{c['verdict']}**")  # fmt: skip


def _pooled(counts: list[str]) -> str:
    """'right/total' strings of several seeds pooled, as an accuracy."""
    right, total = (sum(int(c.split("/")[i]) for c in counts) for i in (0, 1))
    return f"{right / total:.1%} ({right}/{total})"


def markdown(d: dict) -> str:
    from distill.recipes.socratic import LABELS
    from distill.report import markdown_table

    m = d.get("machine", {})
    lines = ["# Socratic CoT on generated multi-step problems (SmolLM2-135M students)", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}. Wall time of the last invocation "
             f"{d.get('wall_s', 0) / 3600:.2f} h (finished runs are read back, not rerun).", "",
             f"Problems: generated (`data.source=arith`), {d['data']['steps'][0]}-{d['data']['steps'][1]} steps, "
             f"{d['data']['size'] - d['data']['val'] - d['data']['test']} training, {d['data']['val']} validation (training "
             f"distribution), {d['data']['test']} test problems, each test problem holding an ordered pair of operations "
             "(mul then sub, or div then add) that no training problem holds. Gold sub-questions (no teacher). Student: "
             "SmolLM2-135M-Instruct, every variant from the same weights; batch 8, linear decay after 10 warm-up steps; "
             "fp32 (the first validation runs under bf16 autocast, as the `precision` column says); greedy decoding, calculator on, at most 5 steps.", "",
             "## Choices on the validation split (seed 0; the test split unread)", "",
             markdown_table(d["selection"]), "",
             "Chosen: " + ", ".join(f"{LABELS[v]} lr {c['lr']:g}, {c['epochs']} epoch(s)" for v, c in d["chosen"].items()) + ".", ""]  # fmt: skip
    if d["test"]:
        rows = [
            {k: r[k] for k in ("variant", "seed", "precision", "accuracy", "tokens_per_problem", "problems_per_s")}
            for r in d["test"]
        ]
        lines += ["## Test accuracy, per seed", "", markdown_table(rows), ""]
        steps = sorted({k for r in d["test"] for k in r["by_steps"]}, key=int)
        by_steps = [{"variant": LABELS[v], **{f"{k} steps": _pooled([r["by_steps"][k] for r in rs]) for k in steps}}
                    for v in VARIANTS if (rs := [r for r in d["test"] if r["variant"] == v])]  # fmt: skip
        lines += ["## Test accuracy by solution steps (mean over seeds)", "", markdown_table(by_steps), ""]
    if d.get("claims"):
        lines += [
            "## The claims",
            "",
            "Paired on the same test problems, seed by seed; the 95% interval is a bootstrap drawing seeds, then "
            "problems, with replacement (the t interval over the seeds' accuracies, n-1 df, in parentheses).",
            "",
        ]
        lines += [_claim_line(c) for c in d["claims"]]
        premise = next((c for c in d["claims"] if c["a"] == "cot" and c["b"] == "answer"), None)
        if premise and premise["verdict"] != "held":
            lines += ["", "The premise does not hold: the comparison of Socratic and CoT students says nothing here."]
        lines.append("")
    if d.get("teacher"):
        rows = [{"variant": LABELS[r["variant"]], **{k: r[k] for k in ("seed", "problems", "teacher_written", "gold")}}
                for r in d["teacher"]]  # fmt: skip
        a = d["teacher"][0]["annotation"]
        lines += ["## Teacher-written against gold sub-questions (same problem count)", "",
                  f"Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, llama.cpp, greedy) wrote the sub-questions of the first "
                  f"{a['problems']} training problems from their gold steps: {a['kept']} kept (yield {a['yield']:.1%}; "
                  f"rejected: " + ", ".join(f"{k} {a[k]}" for k in ("unparsed", "step count", "not a question", "repeated", "wrong answer") if a.get(k)) + "). "
                  "The gold arm trains on the gold sub-questions of as many training problems, same seed and order.", "",
                  markdown_table(rows), ""]  # fmt: skip
        lines += [_claim_line(c) for c in d.get("teacher_claim", [])] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
