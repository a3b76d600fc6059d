"""Peak memory and time of the logit KL with and without chunking over positions (CPU, fresh process each).

    python benchmarks/chunked_kl.py [--rows 2048] [--vocab 49152] [--chunk 256]

The shape is one SmolLM2-sized batch (8 sequences x 256 positions, 49,152-token vocabulary).
Peak resident memory is read from getrusage in a child process per variant, minus the memory the
inputs take: the figure is what the student's LM head (576 -> vocab) plus the loss add in forward
and backward; the head is the same in both variants, so the difference is the loss's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402

CHILD = r"""
import json, resource, sys, time, torch
from distill.losses import kl_div
rows, vocab, chunk, dtype = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), getattr(torch, sys.argv[4])
torch.manual_seed(0)
# a student LM head (hidden 576, as SmolLM2) so the logits' gradient flows on into a matmul,
# as in training, rather than being stored as a leaf's .grad
hidden = torch.randn(rows, 576, dtype=dtype)
head = (torch.randn(vocab, 576, dtype=dtype) * 0.02).requires_grad_(True)
t = torch.randn(rows, vocab, dtype=dtype)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
loss = kl_div(hidden @ head.T, t, temperature=1.0, chunk_size=chunk or None)
loss.backward()
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"added_peak_mb": (peak - base) / 1024, "seconds": dt, "loss": loss.item()}))
"""


def measure(rows: int, vocab: int, chunk: int, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(rows), str(vocab), str(chunk), dtype],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--chunk", type=int, default=64)
    args = p.parse_args()
    res = {"rows": args.rows, "vocab": args.vocab, "chunk": args.chunk, "machine": machine(), "variants": {}}
    for dtype in ("float32", "bfloat16"):
        full, chunked = measure(args.rows, args.vocab, 0, dtype), measure(args.rows, args.vocab, args.chunk, dtype)
        res["variants"][dtype] = {"unchunked": full, "chunked": chunked}
    logits_mb = args.rows * args.vocab * 4 / 2**20
    lines = [
        "# Chunked logit KL: memory and time",
        "",
        f"{args.rows} positions x {args.vocab} vocabulary (fp32 logits = {logits_mb:.0f} MB), chunk {args.chunk}; "
        f"forward + backward of an LM head (576 -> vocab) and `kl_div`; peak RSS added beyond the inputs, "
        "one fresh process per cell.",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']}.",
        "",
        "| logits dtype | unchunked peak MB | chunked peak MB | saved | unchunked s | chunked s | loss equal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for dtype, v in res["variants"].items():
        u, c = v["unchunked"], v["chunked"]
        same = abs(u["loss"] - c["loss"]) <= 1e-4 * abs(u["loss"])
        lines.append(
            f"| {dtype} | {u['added_peak_mb']:.0f} | {c['added_peak_mb']:.0f} | "
            f"{1 - c['added_peak_mb'] / u['added_peak_mb']:.0%} | {u['seconds']:.2f} | {c['seconds']:.2f} | {same} |"
        )
    md = "\n".join(lines) + "\n"
    write("chunked_kl", res, md)
    print(md)


if __name__ == "__main__":
    main()
