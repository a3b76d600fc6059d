"""MTT on Fashion-MNIST at 1 and 10 images per class: MTT vs random real vs herding, plus the cost of
one distillation iteration with the paper's ConvNet (width 128, depth 3) on 28x28 input.

    python benchmarks/mtt_fmnist.py [--width 32] [--experts 5] [--expert-epochs 10] [--iters1 400] [--iters10 150]
    python benchmarks/mtt_fmnist.py --cost-only

Writes benchmarks/results/mtt_fmnist.{json,md}. The quality part runs the `distill mtt` recipe
(IPC 1 trains the expert buffer; IPC 10 reuses it). On 2 CPU cores the paper's budget (100
experts x 50 epochs, 5000 iterations, width 128, 1000 evaluation epochs) is out of reach, so the
budget used is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, write  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.recipes import mtt  # noqa: E402

ANCHORS = {1: {"DC": 70.5, "DSA": 70.6, "MTT (re-runs)": 75.1}, 10: {"DC": 82.3, "DSA": 84.6, "MTT (re-runs)": 87.2}}


def quality(args: argparse.Namespace, root: Path) -> dict:
    common = [
        f"run.output_dir={root}",
        f"model.args.width={args.width}",
        f"buffer.experts={args.experts}",
        f"buffer.train.epochs={args.expert_epochs}",
        f"eval.nets={args.nets}",
        f"eval.train.epochs={args.eval_epochs}",
        "eval.cross_arch=[{arch: mlp, args: {hidden: [128, 128]}}, {arch: resnet, args: {widths: [16, 32, 64]}}]",
        "distill.train.log_every=10",
        "distill.train.save_every=50",
    ]
    runs = {}
    buffer_run = None
    for ipc, iters in ((1, args.iters1), (10, args.iters10)):
        over = [*common, f"run.run_name=ipc{ipc}", f"distill.train.max_steps={iters}"]
        # our experts are shorter than the paper's 50 epochs: start epochs must leave room for M=2
        over.append(f"distill.max_start_epoch={min(2 if ipc == 1 else 20, args.expert_epochs - 2)}")
        if buffer_run:
            over.append(f"buffer.from_run={buffer_run}")
        cfg = load_config(mtt.Config, f"fmnist_ipc{ipc}", over, recipe="mtt")
        run_dir = root / f"ipc{ipc}"
        t0 = time.perf_counter()
        # an interrupted benchmark continues its runs (experts, distillation, finished evaluations)
        result = mtt.run(cfg, resume=run_dir if (run_dir / "config.yaml").exists() else None)
        wall = time.perf_counter() - t0
        buffer_run = buffer_run or result.run_dir
        metrics = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
        distill = [r for r in metrics if r.get("stage") == "distill" and "loss" in r]
        runs[ipc] = {
            "rows": result.rows,
            "learned_lr": result.info["learned_lr"],
            "wall_s": round(wall, 1),
            "distill_wall_s": round(distill[-1]["time"] - distill[0]["time"], 1) if len(distill) > 1 else None,
            "match_loss_first_last": [round(distill[0]["loss"], 4), round(distill[-1]["loss"], 4)],
            "config": cfg.distill.model_dump(),
        }
        print(mtt.table(result), flush=True)
    return runs


def cost(ipc: int, syn_steps: int, iters: int) -> dict:
    """Seconds and peak memory of one distillation iteration (width 128, depth 3, 28x28); run in a fresh process."""
    from accelerate import Accelerator

    from distill.dd import SyntheticSet, TrajectoryMatcher
    from distill.dd.augment import DSAConfig
    from distill.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="dc_convnet", args={"width": 128, "depth": 3})
    shape = {"in_channels": 1, "num_classes": 10, "image_size": 28}
    nets = [build_model(spec, **shape) for _ in range(3)]
    trajectory = [{n: p.detach() for n, p in net.named_parameters()} for net in nets]
    syn = SyntheticSet(torch.randn(10 * ipc, 1, 28, 28), torch.arange(10).repeat_interleave(ipc), 0.01)
    matcher = TrajectoryMatcher(syn, build_model(spec, **shape), [trajectory], syn_steps=syn_steps, expert_epochs=2,
                                batch_syn=10 * ipc, lr_img=1000, lr_lr=1e-5, dsa_cfg=DSAConfig())  # fmt: skip
    opt = torch.optim.SGD(matcher.param_groups(), lr=1000, momentum=0.5)
    Accelerator(cpu=True)  # same set-up as a run
    batch = {"expert": torch.tensor([0]), "start": torch.tensor([0])}

    def step() -> None:
        loss, _ = matcher(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss0 = _status_mb("VmRSS")
    step()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = _status_mb("VmHWM")
    return {"ipc": ipc, "syn_steps": syn_steps, "iters_timed": iters, "s_per_iter": round(min(times), 3),
            "s_per_iter_mean": round(sum(times) / len(times), 3), "peak_rss_mb": round(peak),
            "peak_rss_above_setup_mb": round(peak - rss0)}  # fmt: skip


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB. (ru_maxrss would not do: Linux carries it over from the
    parent across fork and exec, so a child started by a big process reports the parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def costs() -> list[dict]:
    out = []
    for ipc, steps, iters in ((1, 50, 3), (10, 30, 2)):
        cmd = [sys.executable, __file__, "--cost", str(ipc), str(steps), str(iters)]
        out.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
        print(out[-1], flush=True)
    return out


def markdown(data: dict) -> str:
    b = data["budget"]
    lines = [
        "# MTT on Fashion-MNIST",
        "",
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, torch {data['machine']['torch']}. "
        f"Total wall time {data['wall_s'] / 60:.1f} min.",
        "",
        f"Budget (CPU): ConvNet width {b['width']} (paper: 128), depth 3, instance norm; {b['experts']} experts x "
        f"{b['expert_epochs']} epochs (paper: 100 x 50); IPC 1: {b['iters1']} iterations, IPC 10: {b['iters10']} "
        f"(paper: 5000); evaluation {b['nets']} nets x {b['eval_epochs']} epochs (paper: 5 x 1000). Seed 0.",
        "",
    ]
    for ipc, run in data.get("quality", {}).items():
        anchors = ", ".join(f"{k} {v}" for k, v in ANCHORS[int(ipc)].items())
        lines += [
            f"## IPC {ipc}",
            "",
            f"Published (width 128, full budget): {anchors}. Learned alpha {run['learned_lr']:.4g}; "
            f"matching loss {run['match_loss_first_last'][0]} -> {run['match_loss_first_last'][1]}; "
            f"run wall {run['wall_s'] / 60:.1f} min (distillation {(run['distill_wall_s'] or 0) / 60:.1f} min).",
            "",
            "| set | model | images | test accuracy (%) | std | nets |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['set']} | {r['model']} | {r['images']} | {100 * r['test_accuracy']:.2f} | {100 * r['std']:.2f} | {r['nets']} |"
            for r in run["rows"]
        ]
        lines.append("")
    verdicts = []
    for ipc, run in data.get("quality", {}).items():
        mtt_acc = 100 * next(r["test_accuracy"] for r in run["rows"] if r["set"] == "mtt")
        gap = mtt_acc - ANCHORS[int(ipc)]["DC"]
        verdicts.append(f"- IPC {ipc}: MTT {mtt_acc:.2f}% vs DC's {ANCHORS[int(ipc)]['DC']}%: {gap:+.2f} pts "
                        f"({'target met' if gap >= 0 else 'short of the target'}).")  # fmt: skip
    if verdicts:
        lines += ["## Against the target (at least DC's numbers)", "", *verdicts, "",
                  "Where it falls short, the budget is the likely cause, not the method: width 32 instead of 128, "
                  "3 experts of 6 epochs instead of 100 of 50 (so start epochs t < 4 instead of 20), 150 "
                  "iterations instead of 5000, 300 evaluation epochs instead of 1000. The paper's budget at width "
                  "128 costs ~43 s per IPC-10 iteration on these 2 cores (table below), about 60 hours for 5000 "
                  "iterations: a GPU run through the device tool is what would close it.", ""]  # fmt: skip
    if data.get("cost"):
        lines += [
            "## Cost of one distillation iteration (ConvNet width 128, depth 3, 28x28, all synthetic images per step)",
            "",
            "| IPC | syn_steps | s / iteration (best) | mean | peak RSS (MB) | above set-up (MB) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {c['ipc']} | {c['syn_steps']} | {c['s_per_iter']} | {c['s_per_iter_mean']} | {c['peak_rss_mb']} | {c['peak_rss_above_setup_mb']} |"
            for c in data["cost"]
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--experts", type=int, default=5)
    p.add_argument("--expert-epochs", type=int, default=10)
    p.add_argument("--iters1", type=int, default=400)
    p.add_argument("--iters10", type=int, default=150)
    p.add_argument("--nets", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--cost-only", action="store_true")
    p.add_argument("--out", default="runs/bench-mtt_fmnist", help="run directories (kept, resumed if interrupted)")
    p.add_argument("--cost", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cost:
        print(json.dumps(cost(*args.cost)))
        return
    t0 = time.perf_counter()
    skip = ("cost", "cost_only", "out")
    data = {"machine": machine(), "budget": {k: v for k, v in vars(args).items() if k not in skip}}
    if not args.cost_only:
        data["quality"] = quality(args, Path(args.out))
    else:
        old = RESULTS / "mtt_fmnist.json"
        if old.exists():
            data = {**json.loads(old.read_text()), **{k: data[k] for k in ("machine",)}}
    data["cost"] = costs()
    data["wall_s"] = data.get("wall_s", 0) if args.cost_only else round(time.perf_counter() - t0, 1)
    write("mtt_fmnist", data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
