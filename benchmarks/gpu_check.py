"""The GPU paths, checked on a GPU when one is lent (the test suite never needs one): CUDA, bf16 mixed
precision, and FSDP through accelerate's own configuration (configs/accelerate/fsdp.yaml).

    python benchmarks/gpu_check.py --precision no|bf16 --out DIR
    accelerate launch --config_file configs/accelerate/fsdp.yaml benchmarks/gpu_check.py --precision bf16 --out DIR
    python benchmarks/gpu_check.py --merge DIR      # -> benchmarks/results/gpu_check.{json,md}

Each launch, on a tiny Llama teacher (random, 4 layers, built here) and a 2-layer student:
  kd        engine.fit with the chunked forward KL, 24 steps: the loss curve, and the saved product
            reloaded into a fresh model gives the trained model's logits;
  resume    the same stage stopped by an exception after its step-10 checkpoint and fitted again:
            the resumed product equals the uninterrupted one;
  minitron  `distill minitron` (library call) with a teacher cache captured on the GPU, explicit shape.
Every check records pass/fail with its error, so one failure does not hide the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(Path(__file__).parent)]


def tiny(tmp: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.data.text import TextData, token_splits
    from llm_fixtures import char_tokenizer, save_corpus

    tok = char_tokenizer()

    def llama(layers: int, seed: int) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                          tie_word_embeddings=True, eos_token_id=1, pad_token_id=1, bos_token_id=None)  # fmt: skip
        return LlamaForCausalLM(cfg)

    teacher = llama(4, 0)
    teacher.save_pretrained(tmp / "teacher")
    tok.save_pretrained(tmp / "teacher")
    corpus = save_corpus(tmp / "corpus.txt")
    data = TextData(source="files", paths=[str(corpus)], seq_len=64)
    train, val = token_splits(data, tok)
    return teacher, llama, train, val, corpus


def check(name: str, results: dict, fn) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as e:  # recorded, not raised: the other checks still run
        results[name] = {
            "ok": False,
            "error": f"{type(e).__name__}: {e}"[:600],
            "trace": traceback.format_exc()[-2000:],
        }
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--precision", default="no")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--merge")
    args = p.parse_args()
    if args.merge:
        return merge(Path(args.merge))

    import torch
    from safetensors.torch import load_model

    from distill.context import RuntimeConfig, start
    from distill.engine import Callbacks, TrainConfig
    from distill.kd import Distiller, Term

    tmp = Path(tempfile.mkdtemp())
    teacher, llama, train, val, corpus = tiny(tmp)
    kd = Term(name="kd", loss="kl", inputs=["student.logits", "teacher.logits"], args={"chunk_size": 256})
    ctx = start("gpu", RuntimeConfig(), RuntimeConfig(output_dir=str(tmp / "runs"), precision=args.precision))
    acc = ctx.accelerator
    label = f"{'fsdp' if acc.distributed_type.name == 'FSDP' else 'plain'}-{args.precision}"
    results: dict = {"launch": label, "distributed_type": acc.distributed_type.name, "processes": acc.num_processes,
                     "mixed_precision": acc.mixed_precision, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__}  # fmt: skip
    cfg = TrainConfig(max_steps=24, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1, save_every=10, progress=False)

    def fit(stage: str, stop_at: int | None = None):
        ctx.seed_stage("init")
        student = llama(2, 1)
        distiller = Distiller(student, [kd], {"teacher": teacher}).to(acc.device)

        def stop(_, step):
            if step == stop_at:
                raise KeyboardInterrupt("planted stop")

        ctx.fit(distiller, train, cfg, stage=stage, product=student, callbacks=Callbacks(on_step=stop),
                seed_from="kd")  # fmt: skip
        return student, distiller

    def kd_check():
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        student, _ = fit("kd")
        records = [json.loads(x) for x in (ctx.run.path / "metrics.jsonl").read_text().splitlines()]
        losses = [r["kd"] for r in records if r.get("stage") == "kd" and "kd" in r]
        fresh = llama(2, 2)
        load_model(fresh, str(ctx.run.path / "kd" / "model.safetensors"))
        fresh.to(acc.device).eval()
        student.eval()
        ids = val["input_ids"][:4].to(acc.device)
        with torch.no_grad(), acc.autocast():
            a, b = student(input_ids=ids).logits.float(), fresh(input_ids=ids).logits.float()
        return {"first_loss": losses[0], "last_loss": losses[-1], "losses": [round(x, 4) for x in losses],
                "reload_max_abs_diff": float((a - b).abs().max()), "learned": losses[-1] < 0.7 * losses[0],
                "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None}  # fmt: skip

    def resume_check():
        try:
            fit("resumed", stop_at=13)
        except KeyboardInterrupt:
            pass
        assert not (ctx.run.path / "resumed" / "done.json").exists()
        fit("resumed")
        from safetensors.torch import load_file

        a, b = (load_file(str(ctx.run.path / s / "model.safetensors")) for s in ("kd", "resumed"))
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        return {"same_keys": a.keys() == b.keys(), "max_abs_diff_vs_uninterrupted": diff}

    def minitron_check():
        from distill.recipes import minitron

        cfg = minitron.Config.model_validate({
            "run": {"output_dir": str(tmp / "runs"), "precision": args.precision},
            "teacher": {"path": str(tmp / "teacher"), "cache": str(tmp / f"cache-{label}"), "capture": {"k": 16}},
            "data": {"source": "files", "paths": [str(corpus)], "seq_len": 64},
            "calibration": 16, "calibration_batch_size": 4, "depth_batches": 2,
            "target": {"params": None, "layers": 2, "ffn": 128},
            "train": {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "log_every": 5, "progress": False},
            "samples": ["The cat"], "sample_tokens": 4,
        })  # fmt: skip
        result = minitron.run(cfg)
        rows = {r["model"]: r["val_loss"] for r in result.rows}
        exported = (result.run_dir / "model" / "config.json").is_file()
        return {
            "val_loss": rows,
            "exported": exported,
            "distilled_beats_pruned": rows["distilled"] < rows["pruned (before KD)"],
        }

    check("kd", results, kd_check)
    check("resume", results, resume_check)
    check("minitron_cache", results, minitron_check)
    if acc.is_main_process:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"gpu_{label}.json").write_text(json.dumps(results, indent=1))
        print(json.dumps({k: (v if not isinstance(v, dict) else {a: b for a, b in v.items() if a != "trace"})
                          for k, v in results.items()}, indent=1))  # fmt: skip


def merge(folder: Path) -> None:
    from common import write

    runs = {json.loads(p.read_text())["launch"]: json.loads(p.read_text()) for p in sorted(folder.glob("gpu_*.json"))}
    lines = ["# GPU paths (CUDA, bf16, FSDP through accelerate)", ""]
    first = next(iter(runs.values()), {})
    lines += [f"Device: {first.get('device')}, torch {first.get('torch')}; one process per launch (one GPU lent).", "",
              "| launch | distributed | kd: first -> last loss | max loss diff vs plain-no | reload diff | resume diff "
              "| minitron + cache: pruned -> distilled | peak GPU MB |",
              "|---|---|---|---:|---:|---:|---|---:|"]  # fmt: skip
    base = runs.get("plain-no", {}).get("kd", {}).get("losses")
    for name, r in runs.items():
        kd, rs, mt = r.get("kd", {}), r.get("resume", {}), r.get("minitron_cache", {})
        kd_s = f"{kd['first_loss']:.3f} -> {kd['last_loss']:.3f}" if kd.get("ok") else f"FAILED: {kd.get('error')}"
        rs_s = f"{rs['max_abs_diff_vs_uninterrupted']:.2e}" if rs.get("ok") else f"FAILED: {rs.get('error')}"
        if mt.get("ok"):
            v = mt["val_loss"]
            mt_s = f"{v['pruned (before KD)']:.3f} -> {v['distilled']:.3f} (exported: {mt['exported']})"
        else:
            mt_s = f"FAILED: {mt.get('error')}"
        reload = f"{kd['reload_max_abs_diff']:.2e}" if kd.get("ok") else ""
        vs = f"{max(abs(a - b) for a, b in zip(kd['losses'], base)):.1e}" if kd.get("ok") and base else ""
        lines.append(f"| {name} | {r['distributed_type']} | {kd_s} | {vs} | {reload} | {rs_s} | {mt_s} "
                     f"| {kd.get('peak_gpu_mb', '')} |")  # fmt: skip
    lines += ["", "Losses are the per-step KD loss (log_every=1, 24 steps, rounded to 1e-4); reload diff: max |logit| difference between "
              "the trained model and its saved product reloaded; resume diff: max |weight| difference between a "
              "stage stopped after step 13 (checkpoint at 10) and resumed, and the uninterrupted stage. Not checked: "
              "two or more processes (one GPU was lent; NCCL wants a GPU per process). accelerate enables FSDP "
              "only on GPUs, so the CPU test suite cannot run it."]  # fmt: skip
    for r in runs.values():  # tracebacks stay in the launch's own file
        for v in r.values():
            if isinstance(v, dict):
                v.pop("trace", None)
    write("gpu_check", {"runs": runs}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
