"""Start and stop a local llama.cpp server on 127.0.0.1: an OpenAI-compatible teacher for tests, benchmarks
and users with a GGUF file. Either llama-cpp-python's (`python -m llama_cpp.server`, from
llama-cpp-python[server]), which answers one request at a time, or llama.cpp's own `llama-server` binary
(`make llama-server`), which can decode `parallel` requests in one batch. Slots pay where there is compute to
spare (a GPU, many cores): on 2 CPU cores one slot answered fastest (benchmarks/teacher_servers.md)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distill.errors import DistillError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_cpp_server(
    gguf: str | Path,
    alias: str,
    log: str | Path,
    n_ctx: int = 2048,
    threads: int | None = None,
    timeout_s: float = 120.0,
    port: int | None = None,
    binary: str | Path | None = None,
    parallel: int = 1,
) -> Iterator[str]:
    """Serve `gguf` as model `alias` (on `port`, default a free one); yields the base URL once /v1/models
    answers; stops the server after. `binary`: a llama-server executable to run instead of llama-cpp-python's
    server, with `parallel` slots of `n_ctx` tokens each."""
    port = port or free_port()
    serve = ["--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]  # both servers' own flags
    if binary is None:
        if parallel != 1:
            raise DistillError(
                "llama-cpp-python's server answers one request at a time: parallel slots need "
                "llama.cpp's own llama-server (binary=)"
            )
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            *serve,
            "--n_ctx",
            str(n_ctx),
            "--model_alias",
            alias,
        ]
        thread_flags = ["--n_threads", "--n_threads_batch"]
    else:
        if not Path(binary).is_file():
            raise DistillError(f"no llama-server executable at {binary}")
        # --kv-unified: one KV buffer for every slot (llama.cpp's own default only when it picks the slot count)
        cmd = [
            str(binary),
            *serve,
            "--ctx-size",
            str(n_ctx * parallel),
            "--parallel",
            str(parallel),
            "--kv-unified",
            "--alias",
            alias,
            "--no-webui",
        ]
        thread_flags = ["--threads", "--threads-batch"]
    if threads:  # prompt processing too: its own default is every core, which a shared machine cannot spare
        cmd += [thread_flags[0], str(threads), thread_flags[1], str(threads)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout_s
            while True:
                try:
                    json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=2).read())
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        tail = Path(log).read_text()[-300:].strip().splitlines()[-1:] or ["(no output)"]
                        raise DistillError(f"llama.cpp server did not start: {tail[0]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
