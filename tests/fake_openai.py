"""A small OpenAI-compatible server on 127.0.0.1 for tests: /v1/models and /v1/chat/completions.

It answers by a rule on the last user message (a review containing 'good' is positive), can fail the
first N requests with 500s or another code, with a Retry-After (retries), and the next M with an HTML page
(malformed replies), delay every answer (concurrency) or trickle it a byte at a time (timeouts), and counts
its requests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    def __init__(
        self,
        model: str = "fake-teacher",
        fail_first: int = 0,
        delay_s: float = 0.0,
        garbage_first: int = 0,
        fail_code: int = 500,
        retry_after: int | None = None,
        trickle_s: float = 0.0,
    ) -> None:
        self.model, self.fail_first, self.delay_s, self.garbage_first = model, fail_first, delay_s, garbage_first
        self.fail_code, self.retry_after = fail_code, retry_after  # what the failing requests get
        self.trickle_s = trickle_s  # send every reply a byte at a time, this long apart
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, body: dict) -> str:
        text = body["messages"][-1]["content"].lower()
        label = "positive" if "good" in text else "negative"
        if "ambiguous" in text:
            return "It is both positive and negative."
        seed = body.get("seed", 0)
        if "split" in text and seed % 2:  # samples disagree
            label = "positive" if label == "negative" else "negative"
        return f"The words point one way.\nAnswer: {label}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, obj: dict | bytes) -> None:
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/html" if isinstance(obj, bytes) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == server.fail_code and server.retry_after is not None:
                    self.send_header("Retry-After", str(server.retry_after))
                self.end_headers()
                if not server.trickle_s:
                    self.wfile.write(data)
                    return
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(server.trickle_s)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                    pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    failing = len(server.requests) <= server.fail_first
                    garbage = server.fail_first < len(server.requests) <= server.fail_first + server.garbage_first
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay_s)
                if failing:
                    code, reply = server.fail_code, {"error": "busy"}
                elif garbage:  # a proxy's error page, or a server that is not what it claims
                    code, reply = 200, b"<html><body>502 Bad Gateway</body></html>"
                elif body.get("model") != server.model:
                    code, reply = 404, {"error": f"model {body.get('model')} not found"}
                else:
                    message = {"role": "assistant", "content": server.answer(body)}
                    code, reply = 200, {"choices": [{"index": 0, "message": message}],
                                        "usage": {"prompt_tokens": 50, "completion_tokens": 12}}  # fmt: skip
                with server.lock:  # done before the reply leaves: the client may send its next request at once
                    server.in_flight -= 1
                self._send(code, reply)

        return Handler


def kill_once_stored(cmd: list[str], store, answers: int, env: dict | None = None) -> None:
    """Run `cmd`, SIGKILL it as soon as the label store at `store` holds `answers` answers, and check that it
    was killed (not finished) then."""
    from distill.labeling.store import LabelStore

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and LabelStore(store).count() >= answers:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
