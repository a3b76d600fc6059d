"""`distill lm`'s objectives on a task with a score: does on-policy distillation (GKD) make a better student than
supervised KD, sequence-level KD or more fine-tuning, from the same fine-tuned student at the same prompts and
steps, as the GKD paper (Agarwal et al., 2024) distils students that were supervised fine-tuned first?

    python benchmarks/lm_gkd.py [--seeds 3] [--quick] [--render]

Task: generated multi-step word problems (`data.source=arith`, 2-3 steps; the splits of socratic_arith.py:
1,000 training, 200 validation, 500 test problems whose ordered pair of operations no training problem holds),
as prompt / completion records: "Problem: ...\\n" and the chain-of-thought solution ending in "#### N".
1. teacher: SmolLM2-135M-Instruct fine-tuned on the training solutions (cross-entropy, one epoch).
2. student: the teacher pruned in width (hidden 576 -> 384, ffn 1536 -> 768, heads 9 -> 6; activation
   importance on the training prompts), the same starting weights for every seed.
3. per seed, the SFT student (`sft`): the pruned student fine-tuned on the gold completions, --epochs at --lr.
4. from it, per seed, each variant --epochs more over the same prompts in the same order, AdamW at --lr2:
     sft+sft      more cross-entropy on the gold completions (no teacher): the budget without distillation
     sft+kd       supervised KD (GKD lambda 0): forward KL to the teacher on the gold completions
     sft+gkd-1    every batch completed by the student itself (temperature 1), then scored by both
     sft+gkd-0.5  half the batches on-policy
     sft+seq-kd   the teacher's greedy completions as the targets (sequence-level KD), forward KL
     sft+gkd-1-rkl  on-policy with reverse KL, the divergence GKD offers for a student that cannot cover the
                  teacher (the others above use forward KL)
5. score: greedy chain-of-thought decoding with the calculator (socratic's solver), accuracy on the test split;
   on the student's own samples, the teacher's NLL per token of the student's greedy completions of the test
   prompts (no calculator; what on-policy distillation trains for, and not capped at 100% as accuracy is);
   and the held-out KL to the teacher on the validation completions.
Premise, decided like the claims: the teacher solves more test problems than the student fine-tuned for the same
budget without a teacher (sft+sft). Claims, paired by seed on the same test problems (two-level bootstrap,
seeds then problems): each KD variant against sft+sft; on-policy against supervised KD and against sequence KD;
each on accuracy and on the teacher's NLL of the student's samples.
The first design distilled the pruned student directly (no SFT first); its landed runs stay reported. Each
finished run lands in the results JSON; a clean clone reruns only what is missing.
Writes benchmarks/results/lm_gkd.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, finish, machine  # noqa: E402
from socratic_arith import DATA, claims  # noqa: E402

ROOT = Path("runs/bench-lm-gkd")
SFT = ["objective.kd_weight=0", "objective.ce_weight=1"]  # cross-entropy alone, no teacher term
VARIANTS = {  # from the SFT student, in the order they run (the central claim's pair first)
    "sft+kd": [],
    "sft+gkd-1": ["generation.lam=1.0"],
    "sft+sft": SFT,
    "sft+gkd-0.5": ["generation.lam=0.5"],
    "sft+seq-kd": ["generation.targets=teacher"],
    "sft+gkd-1-rkl": ["generation.lam=1.0", "objective.divergence=reverse_kl"],
}
CLAIMS = [(v, "sft+sft", f"{v} beats more fine-tuning") for v in VARIANTS if v != "sft+sft"]
CLAIMS += [
    ("sft+gkd-1", "sft+kd", "on-policy (lambda 1) beats supervised KD"),
    ("sft+gkd-0.5", "sft+kd", "half on-policy (lambda 0.5) beats supervised KD"),
    ("sft+gkd-1", "sft+seq-kd", "on-policy (lambda 1) beats sequence-level KD"),
    ("sft+gkd-1-rkl", "sft+kd", "on-policy with reverse KL beats supervised KD"),
]
PREMISE = [("teacher", "sft+sft", "the teacher solves more than the student fine-tuned for the same budget")]
FIRST_DESIGN = ("kd-s0", "gkd-0.5-s0")  # distilled from the pruned student directly: reported, not run again
LANDED: dict[str, dict] = {}
TEACHER: list[Path] = []  # the fine-tuned teacher's directory, once trained
RUNS: dict[str, dict] = {}


def problems(quick: bool) -> dict:
    from distill.reasoning.problems import ProblemData, load_problems

    data = {**DATA, "size": 120, "val": 20, "test": 40} if quick else DATA
    return load_problems(ProblemData(**data))


def records(split: list) -> list[dict]:
    from distill.reasoning.formats import header
    from distill.reasoning.problems import FINAL, fmt

    return [{"prompt": header(p), "completion": "".join(f"{s}\n" for s in p.steps) + f"{FINAL} {fmt(p.answer)}"}
            for p in split]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    from distill.run import atomic_write

    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def lm_run(name: str, over: list[str]) -> Path:
    """One `distill lm` run (resumed when broken); returns its run directory."""
    from distill.config import load_config
    from distill.recipes import lm

    run_dir = ROOT / "runs" / name
    if (run_dir / "model" / "config.json").is_file():
        return run_dir
    if (run_dir / "config.yaml").is_file():
        lm.run(load_config(lm.Config, run_dir / "config.yaml"), resume=run_dir)
    else:
        cfg = load_config(lm.Config, None, [*over, f"run.output_dir={ROOT / 'runs'}", f"run.run_name={name}"], "lm")
        lm.run(cfg)
    return run_dir


def accuracy(model_dir: Path, test: list) -> dict:
    """Greedy chain-of-thought decoding with the calculator on, as socratic_arith scores its CoT students."""
    from distill.models.llm import LlmSpec, load_causal_lm
    from distill.reasoning.problems import same
    from distill.reasoning.solve import Lm, solve

    model, tok = load_causal_lm(LlmSpec(path=str(model_dir)))
    t0 = time.perf_counter()
    traces = solve(test, "cot", Lm(model, tok), max_steps=5, max_tokens=40, calculator=True, batch_size=50)
    right = [t.answer is not None and same(t.answer, t.problem.answer) for t in traces]
    return {"accuracy": sum(right) / len(right), "correct": "".join("01"[r] for r in right),
            "problems_per_s": len(traces) / (time.perf_counter() - t0)}  # fmt: skip


@functools.cache
def loaded_teacher(path: str):
    """The teacher, read from disk once for every model it scores."""
    from distill.models.llm import LlmSpec, load_causal_lm

    return load_causal_lm(LlmSpec(path=path))[0]


def on_samples(model_dir: Path, test: list, batch: int = 50, max_new: int = 64) -> dict:
    """The teacher's NLL per token of the model's greedy completions of the test prompts (up to its EOS)."""
    import torch

    from distill.data.sft import pad_id
    from distill.models.llm import LlmSpec, load_causal_lm
    from distill.reasoning.formats import header

    model, tok = load_causal_lm(LlmSpec(path=str(model_dir)))
    teacher = model if model_dir == TEACHER[0] else loaded_teacher(str(TEACHER[0]))
    tok.padding_side = "left"
    each: list[float] = []
    for i in range(0, len(test), batch):
        enc = tok([header(p) for p in test[i : i + batch]], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=pad_id(tok))
            n = enc["input_ids"].shape[1]
            gen = ids[:, n:]
            eos = (gen == tok.eos_token_id).long()
            keep = (eos.cumsum(1) - eos) == 0  # up to and including the first EOS
            mask = torch.cat([enc["attention_mask"], keep.long()], 1)
            logits = teacher(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
            nll = -logits[:, n - 1 : -1].float().log_softmax(-1).gather(-1, gen[..., None])[..., 0]
            each += ((nll * keep).sum(1) / keep.sum(1).clamp(min=1)).tolist()
    return {"teacher_nll": sum(each) / len(each), "teacher_nll_each": [round(x, 5) for x in each]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4, help="the SFT students' learning rate")
    p.add_argument("--lr2", type=float, default=1e-4, help="the learning rate of the variants from the SFT student")
    p.add_argument("--quick", action="store_true", help="a few problems and steps: checks the pipeline only")
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    name = "lm_gkd_quick" if args.quick else "lm_gkd"
    if args.render:
        data = json.loads((RESULTS / f"{name}.json").read_text())
        (RESULTS / f"{name}.md").write_text(markdown(data))
        return
    global ROOT
    ROOT = ROOT.with_name(ROOT.name + ("-quick" if args.quick else ""))
    committed = json.loads(path.read_text()) if (path := RESULTS / f"{name}.json").is_file() else {}
    LANDED.update((r["name"], r) for r in committed.get("runs", []))
    RUNS.update(LANDED)  # every landed run stays in the results, also those this invocation has not reached
    t0 = time.perf_counter()
    splits = problems(args.quick)
    train = write_jsonl(ROOT / "train.jsonl", records(splits["train"]) + records(splits["val"]))
    seq_len = 160
    n_val = len(splits["val"])
    prompts = (f"prompts={{path: '{train}', seq_len: {seq_len}, val_fraction: {(n_val + 0.5) / (len(splits['train']) + n_val)}}}")  # fmt: skip
    common = [prompts, "run.precision=no", "eval_batch_size=16", "objective.chunk_size=512"]
    steps = args.epochs * len(splits["train"]) // 8
    train_cfg = (f"train={{max_steps: {steps}, batch_size: 8, lr: {{lr}}, warmup_steps: {max(1, steps // 20)}, "
                 f"log_every: 10, eval_every: {steps}, clip_grad_norm: 1.0, schedule: linear}}")  # fmt: skip
    data: dict = {"data": DATA if not args.quick else "quick", "budget": {"epochs": args.epochs, "steps": steps,
                  "batch": 8, "lr": args.lr, "lr2": args.lr2, "seeds": args.seeds}, "runs": [],
                  "test": committed.get("test", [])}  # fmt: skip
    before = committed.get("machines") or ([committed["machine"]["cpu"]] if "machine" in committed else [])
    cpu = machine()["cpu"]
    data["machines"] = before + [cpu] * (cpu not in before)  # where runs were made
    data["first_design"] = [{k: RUNS[n].get(k) for k in ROW if k != "teacher_nll"} for n in FIRST_DESIGN if n in RUNS]

    # 1. the teacher: the bundled model fine-tuned on the training solutions
    teacher_dir = lm_run("teacher", [*common, "teacher.path=smollm2-135m", "student.path=smollm2-135m",
                                     "objective.kd_weight=0", "objective.ce_weight=1",
                                     train_cfg.replace("{lr}", "1e-4"), "run.seed=0"]) / "model"  # fmt: skip
    TEACHER[:] = [teacher_dir]
    data["teacher"] = scored("teacher", teacher_dir, splits["test"], {"variant": "teacher", "seed": 0})
    save(data, name, t0)
    # 2. the student: the teacher pruned in width (the same weights for every variant and seed)
    student_dir = pruned(teacher_dir, ROOT / "student-init", train)
    data["student_init"] = scored("student-init", student_dir, splits["test"], {"variant": "pruned", "seed": 0})
    save(data, name, t0)
    # 3. per seed, the SFT student; 4. the variants from it
    student = [*common, f"teacher.path={teacher_dir}", "generation.max_new_tokens=64"]
    for seed in range(args.seeds):
        sft_dir = lm_run(f"sft-s{seed}", [*student, f"student.path={student_dir}", train_cfg.replace("{lr}", f"{args.lr:g}"),
                                          f"run.seed={seed}", *SFT]) / "model"  # fmt: skip
        land(data, name, t0, f"sft-s{seed}", sft_dir, splits["test"], {"variant": "sft", "seed": seed})
        for v, over in VARIANTS.items():
            run_name = f"{v}-s{seed}"
            out = ROOT / "runs" / run_name / "model"
            if LANDED.get(run_name, {}).get("teacher_nll") is None:  # one scored already is read back, not retrained
                out = lm_run(run_name, [*student, f"student.path={sft_dir}", train_cfg.replace("{lr}", f"{args.lr2:g}"),
                                        f"run.seed={seed}", *over]) / "model"  # fmt: skip
            land(data, name, t0, run_name, out, splits["test"], {"variant": v, "seed": seed})


ROW = ("name", "variant", "seed", "accuracy", "teacher_nll", "val_kl", "val_loss")


def land(data: dict, name: str, t0: float, run_name: str, model_dir: Path, test: list, meta: dict) -> None:
    """Score a finished run (or read it back), add its row and the claims, and write the results."""
    r, names = scored(run_name, model_dir, test, meta), [t["name"] for t in data["test"]]
    row = {k: r.get(k) for k in ROW}
    if run_name in names:  # landed in an earlier invocation
        data["test"][names.index(run_name)] = row
    else:
        data["test"].append(row)
    teacher = [{"name": "teacher", "variant": "teacher", "seed": s} for s in {t["seed"] for t in data["test"]}]
    data["premise"] = claims(data["test"] + teacher, RUNS, PREMISE)
    data["claims"] = claims(data["test"], RUNS, CLAIMS)
    sampled = [t for t in data["test"] if t["teacher_nll"] is not None]  # a clean clone has no models of old runs
    data["nll_claims"] = claims(sampled, RUNS, CLAIMS, lambda r: [-x for x in r["teacher_nll_each"]], "nats")
    save(data, name, t0)


def scored(run_name: str, model_dir: Path, test: list, meta: dict) -> dict:
    """The model's test accuracy and its run's held-out KL and loss (stored; a landed one is read back)."""
    done = ROOT / "done" / f"{run_name}.json"
    if not done.is_file() and run_name in LANDED:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(LANDED[run_name]))
    if done.is_file():
        out = json.loads(done.read_text())
        if out.get("teacher_nll") is None and (model_dir / "config.json").is_file():  # landed before the measure
            out.update(on_samples(model_dir, test))
            done.write_text(json.dumps(out))
        RUNS[run_name] = out
        return out
    rows = json.loads((model_dir.parent / "results.json").read_text())["rows"] if run_name != "student-init" else []
    after = next((r for r in rows if r["model"] == "student after"), {})
    out = {"name": run_name, **meta, **accuracy(model_dir, test), **on_samples(model_dir, test),
           "val_kl": after.get("kl_to_teacher"), "val_loss": after.get("val_loss")}  # fmt: skip
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out))
    RUNS[run_name] = out
    return out


def pruned(teacher_dir: Path, out: Path, train_jsonl: Path) -> Path:
    """The fine-tuned teacher pruned in width by activation importance on its training prompts."""
    if (out / "config.json").is_file():
        return out
    from distill.models.llm import LlmSpec, load_causal_lm, save_hf
    from distill.pruning import LlmShape, compute_importance, prune

    teacher, tok = load_causal_lm(LlmSpec(path=str(teacher_dir)))
    texts = [json.loads(line) for line in train_jsonl.read_text().splitlines()[:256]]
    batches = [tok([r["prompt"] + r["completion"] for r in texts[i : i + 8]], return_tensors="pt", padding=True)["input_ids"]
               for i in range(0, len(texts), 8)]  # fmt: skip
    imp = compute_importance(teacher, batches, depth_batches=0)  # width pruning only: no layer ranking
    target = LlmShape.of(teacher.config).with_(hidden=384, ffn=768, heads=6)
    return save_hf(prune(teacher, imp, target), tok, out)


def save(data: dict, name: str, t0: float) -> None:
    data["runs"] = list(RUNS.values())
    finish(name, data, markdown, t0)


def claim_lines(cs: list[dict], unit: str, word: str, nd: int) -> list[str]:
    return [f"- {c['claim']}: {c[f'diff_{unit}']:+.{nd}f} {word}, 95% [{c[f'boot95_{unit}'][0]:+.{nd}f}, "
            f"{c[f'boot95_{unit}'][1]:+.{nd}f}] over {c['seeds']} seed(s): **{c['verdict']}**" for c in cs]  # fmt: skip


def means(rows: list[dict]) -> list[dict]:
    """Each variant's mean accuracy, teacher NLL and validation KL over the seeds it has."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    return [{"variant": v, "seeds": len(rs), **{k: round(sum(r[k] for r in rs) / len(rs), 4)
             for k in ("accuracy", "teacher_nll", "val_kl")}} for v, rs in by.items()]  # fmt: skip


def markdown(d: dict) -> str:
    from distill.report import markdown_table

    m = d.get("machine", {})
    b = d["budget"]
    lines = ["# `distill lm` objectives on generated word problems: GKD against supervised KD, sequence KD, fine-tuning",
             "", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}; fp32. Wall time of the last "
             f"invocation {d.get('wall_s', 0) / 3600:.2f} h. Students: {b['steps']} steps of 8 prompts ({b['epochs']} "
             f"epoch(s)), AdamW lr {b['lr']:g} for the SFT students and {b.get('lr2', b['lr']):g} for the variants from them, linear decay; {b['seeds']} seeds (the batch order, and the student's "
             "own samples). Test: 500 problems holding a pair of operations no training problem holds; greedy decoding, "
             "calculator on.", ""]  # fmt: skip
    if len(d.get("machines", [])) > 1:
        lines += [f"Runs were made on {', '.join(d['machines'])}: a machine without the earlier run directories "
                      "trains the teacher, the pruned student and the SFT students again from the same seeds before "
                      "its variants; rows landed earlier are kept as they were.", ""]  # fmt: skip
    if "teacher" in d:
        lines += [f"Teacher (SmolLM2-135M-Instruct fine-tuned): {d['teacher']['accuracy']:.1%} of the test problems; the "
                  f"pruned student before retraining: {d.get('student_init', {}).get('accuracy', float('nan')):.1%}.", ""]  # fmt: skip
        if d["teacher"].get("teacher_nll") is not None:
            lines += [f"The teacher's NLL of its own greedy completions of the test prompts, for reference: "
                      f"{d['teacher']['teacher_nll']:.4f} nats per token; the pruned student's: "
                      f"{d.get('student_init', {}).get('teacher_nll') or float('nan'):.4f}.", ""]  # fmt: skip
    if d["test"]:
        lines += ["## Per seed", "", markdown_table(d["test"]), ""]
        lines += ["## Mean over seeds", "", markdown_table(means(d["test"])), ""]
    for c in d.get("premise", []):
        lines += [f"Premise: {c['claim']}: {c['diff_pts']:+.2f} points, 95% [{c['boot95_pts'][0]:+.2f}, "
                  f"{c['boot95_pts'][1]:+.2f}] over {c['seeds']} seed(s): **{'holds' if c['verdict'] == 'held' else 'does not hold: the comparison of objectives says little here'}**.", ""]  # fmt: skip
    if d.get("claims"):
        lines += [
            "## The claims",
            "",
            "Paired on the same test problems by seed; 95% bootstrap over seeds, then problems.",
            "",
        ]
        lines += claim_lines(d["claims"], "pts", "points", 2)
    if d.get("nll_claims"):
        lines += ["", "On the student's own samples: the teacher's NLL per token of each student's greedy completions "
                  "(lower is better; the difference is b's NLL minus a's, so positive favours the claim), the same pairing:",
                  ""]  # fmt: skip
        lines += claim_lines(d["nll_claims"], "nats", "nats", 4)
    if d.get("first_design"):
        lines += ["", "## The first design: distilled from the pruned student directly (no SFT first)", "",
                  f"The same budget and lr {b['lr']:g} from the pruned student, against `sft` above at the same seed: "
                  "on-policy samples from a student that solves nothing are what GKD learns from at first, which is "
                  "why the paper, and the design above, start from the fine-tuned student.", "",
                  markdown_table(d["first_design"])]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
