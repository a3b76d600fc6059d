"""How fast a local teacher answers, by server: llama-cpp-python's (one request at a time) against llama.cpp's own
llama-server (make llama-server) with 1, 2, 4 and 8 parallel slots, on the weak-label benchmark's prompts.

    python benchmarks/teacher_servers.py --server-bin PATH [--teacher qwen0.5b] [--texts 8] [--rounds 2]

Each setting labels the same pool texts with K=8 CoT samples at T=0.5 (the weak-label default) into a fresh label
store, so nothing is skipped; the settings run in turn, `--rounds` times, so drift of the machine spreads over all
of them. Writes benchmarks/results/teacher_servers.{json,md}: answers per second (mean and spread over rounds) and
the ratio to llama-cpp-python's server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, mean_std  # noqa: E402
from distill.data.labeled_text import TextItems, load_items  # noqa: E402
from distill.labeling.clients import ServerClient, ServerTeacher  # noqa: E402
from distill.labeling.llama_server import llama_cpp_server  # noqa: E402
from distill.labeling.pipeline import Sampling, label  # noqa: E402
from distill.labeling.store import LabelStore  # noqa: E402
from weaklabel_rt import TASK, TEACHERS  # noqa: E402


def one(gguf: Path, alias: str, items, sc: Sampling, threads: int, binary: str | None, parallel: int) -> dict:
    """Answers per second and completion tokens of one setting, on a fresh store."""
    with tempfile.TemporaryDirectory() as d:
        server = dict(threads=threads, binary=binary, parallel=parallel, n_ctx=1024)
        with llama_cpp_server(gguf, alias, Path(d) / "server.log", **server) as url:
            store = LabelStore(Path(d) / "labels.sqlite")
            client = ServerClient(ServerTeacher(model=alias, url=url, concurrency=parallel))
            t0 = time.perf_counter()
            label(store, client, alias, TASK, items, sc, desc=f"{'llama-server' if binary else 'python'} x{parallel}")
            seconds = time.perf_counter() - t0
            rows = list(store.responses())
    return {"answers": len(rows), "seconds": seconds, "completion_tokens": sum(r["completion_tokens"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--server-bin", required=True, help="a llama-server binary (make llama-server)")
    p.add_argument("--teacher", choices=TEACHERS, default="qwen0.5b")
    p.add_argument("--texts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note")
    args = p.parse_args()
    t_start = time.perf_counter()
    title, gguf, alias, quant = TEACHERS[args.teacher]
    items, _ = load_items(TextItems(train_limit=args.texts, test_limit=1))
    sc = Sampling(mode="cot", samples=8, temperature=0.5, max_tokens=64)
    settings = {"llama-cpp-python server": (None, 1)} | {
        f"llama-server, {n} slot{'s' if n > 1 else ''}": (args.server_bin, n) for n in (1, 2, 4, 8)
    }
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, (binary, parallel) in settings.items():
            runs[name].append(one(gguf(), alias, items, sc, args.threads, binary, parallel))
            print(name, runs[name][-1], flush=True)
    rows = []
    for name, rs in runs.items():
        m, s = mean_std([r["answers"] / r["seconds"] for r in rs])
        tok = mean_std([r["completion_tokens"] / r["seconds"] for r in rs])[0]
        rows.append({"server": name, "answers_per_s": round(m, 3), "spread": round(s, 3),
                     "completion_tokens_per_s": round(tok, 1)})  # fmt: skip
    base = rows[0]["answers_per_s"]  # llama-cpp-python's server, the first setting
    for r in rows:
        r["vs_llama_cpp_python"] = round(r["answers_per_s"] / base, 2)
    budget = {"teacher": title, "quant": quant, "texts": args.texts, "answers_per_setting": args.texts * sc.samples,
              "rounds": args.rounds, "threads": args.threads}  # fmt: skip
    finish("teacher_servers", {"budget": budget, "rows": rows, "runs": runs}, markdown, t_start, args.note)


def markdown(d: dict) -> str:
    b = d["budget"]
    lines = [
        f"# Teacher servers: answers per second, {b['teacher']} ({b['quant']} GGUF)",
        "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, {b['threads']} llama.cpp threads, alone. "
        f"Each setting: {b['texts']} pool texts x K=8 CoT samples at T=0.5 ({b['answers_per_setting']} answers, "
        f"the weak-label benchmark's prompt), fresh label store, {b['rounds']} rounds in turn; mean and spread "
        f"(std over rounds). Both servers are llama.cpp as vendored by llama-cpp-python 0.3.36. Total wall time "
        f"{d['wall_s'] / 60:.1f} min.",
        "",
        "| server | answers/s ± spread | completion tokens/s | vs llama-cpp-python |",
        "|---|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(f"| {r['server']} | {r['answers_per_s']:.2f} ± {r['spread']:.2f} | "
                     f"{r['completion_tokens_per_s']:.1f} | {r['vs_llama_cpp_python']:.2f}x |")  # fmt: skip
    if d.get("note"):
        lines += ["", f"Note: {d['note']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
