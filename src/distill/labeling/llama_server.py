"""Start and stop a local llama.cpp server (`python -m llama_cpp.server`, from llama-cpp-python[server])
on 127.0.0.1: an OpenAI-compatible teacher for tests, benchmarks and users with a GGUF file."""

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
def llama_cpp_server(gguf: str | Path, alias: str, log: str | Path, n_ctx: int = 2048, threads: int | None = None,
                     timeout_s: float = 120.0, port: int | None = None) -> Iterator[str]:  # fmt: skip
    """Serve `gguf` as model `alias` (on `port`, default a free one); yields the base URL once /v1/models
    answers; stops the server after."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port := port or free_port()), "--n_ctx", str(n_ctx), "--model_alias", alias]  # fmt: skip
    if threads:  # prompt processing too: its own default is every core, which a shared machine cannot spare
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
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
