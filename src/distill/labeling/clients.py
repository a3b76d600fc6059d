"""Text-generating teachers: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI, hosted APIs)
through the official `openai` package, or a local transformers model. Both answer
`generate(requests) -> iterator of (request, Generation)`, yielding each answer as soon as it exists
so the caller can store it at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from distill.config import Section, where_field
from distill.errors import DistillError


@dataclass(frozen=True)
class Request:
    """One sample of one prompt."""

    key: str  # the prompt hash
    sample: int
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    seed: int


@dataclass
class Generation:
    text: str
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: Any = None


class ServerTeacher(Section):
    """An OpenAI-compatible server."""

    kind: Literal["server"] = "server"
    url: str = where_field("http://127.0.0.1:8000", "base URL (the /v1 routes are under it)")
    model: str = Field(..., description="the model name the server knows (see GET /v1/models)")
    api_key: str | None = where_field(None, "bearer token (or set it in the environment, see api_key_env)")
    api_key_env: str = where_field("OPENAI_API_KEY", "environment variable read when api_key is null")
    endpoint: Literal["chat", "completions"] = Field("chat", description="/v1/chat/completions or /v1/completions")
    concurrency: int = where_field(4, "requests in flight at once", gt=0)
    timeout_s: float = where_field(120.0, "per request", gt=0)
    retries: int = where_field(
        3,
        "retries of a failed request (connection errors, timeouts, 408/409/429/5xx), with the "
        "openai client's exponential backoff (0.5 s doubling to 8 s, jittered; Retry-After honoured)",
        ge=0,
    )
    logprobs: int = Field(0, ge=0, le=20, description="top logprobs per token to ask for (0: none)")

    @property
    def name(self) -> str:
        return f"server:{self.model}"


class LocalTeacher(Section):
    """A transformers causal LM on this machine, batched."""

    kind: Literal["local"] = "local"
    path: str = Field("smollm2-135m", description="an HF directory, a .gguf file or a bundled model name")
    batch_size: int = Field(8, gt=0, description="prompts per generate() call")
    dtype: str = Field("float32")

    @property
    def name(self) -> str:
        return f"local:{self.path}"


LlmTeacher = Annotated[ServerTeacher | LocalTeacher, Field(discriminator="kind")]


# --- an OpenAI-compatible server ---------------------------------------------------------------
class ServerClient:
    """The `openai` package's clients pointed at `spec.url`: its timeouts and retries, our concurrency limit."""

    def __init__(self, spec: ServerTeacher) -> None:
        self.spec = spec
        self.base = spec.url.rstrip("/").removesuffix("/v1")
        # the client requires a key; local servers ignore it
        key = spec.api_key or os.environ.get(spec.api_key_env) or "not-needed"
        self.options: dict[str, Any] = dict(base_url=f"{self.base}/v1", api_key=key, timeout=spec.timeout_s)

    def check(self) -> None:
        """One clear line when the server is unreachable or does not serve the model (asked once, no retries)."""
        import openai

        try:
            models = [m.id for m in openai.OpenAI(**self.options, max_retries=0).models.list()]
        except openai.APIConnectionError as e:
            raise DistillError(
                f"teacher server {self.base} is unreachable ({e.__cause__ or e}); start it or fix teacher.url"
            ) from None
        except openai.APIStatusError as e:
            raise DistillError(f"teacher server {self.base} answered {e.status_code} to GET /v1/models") from None
        if self.spec.model not in models:
            raise DistillError(f"teacher server {self.base} has no model {self.spec.model!r}; it serves {models}")

    async def _one(self, client, r: Request) -> Generation:
        """One answer. HTTP and connection errors are retried by the client; a malformed reply (not JSON,
        an HTML page, no choices) and a reply not whole within `timeout_s` (a server that trickles it: the
        client's own timeout restarts with every byte) are retried here the same number of times, with the
        same kind of backoff."""
        for attempt in range(self.spec.retries + 1):
            t0 = time.perf_counter()
            try:
                out = await asyncio.wait_for(self._ask(client, r), self.spec.timeout_s)
                return _generation(out, self.spec.endpoint, t0)
            except asyncio.TimeoutError:
                if attempt == self.spec.retries:
                    raise DistillError(
                        f"teacher server {self.base} timed out {attempt + 1} times (no whole reply within "
                        f"teacher.timeout_s = {self.spec.timeout_s:g} s)"
                    ) from None
            except (_Malformed, json.JSONDecodeError) as e:
                problem = str(e) if isinstance(e, _Malformed) else "not JSON"
                if attempt == self.spec.retries:
                    raise DistillError(
                        f"teacher server {self.base} sent a malformed reply {attempt + 1} times ({problem})"
                    ) from None
            await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
        raise AssertionError("unreachable")

    async def _ask(self, client, r: Request) -> Any:
        import openai

        args = dict(model=self.spec.model, temperature=r.temperature, max_tokens=r.max_tokens, seed=r.seed)
        try:
            if self.spec.endpoint == "chat":
                if self.spec.logprobs:
                    args.update(logprobs=True, top_logprobs=self.spec.logprobs)
                return await client.chat.completions.create(messages=r.messages, **args)
            prompt = "\n\n".join(m["content"] for m in r.messages) + "\n\n"
            return await client.completions.create(prompt=prompt, logprobs=self.spec.logprobs or None, **args)
        except openai.APIStatusError as e:
            detail = e.response.text[:200] if e.response is not None else str(e)
            wait = e.response.headers.get("retry-after") if e.response is not None else None
            asked = f" (it asked to retry after {wait} s; the client waits at most 60 s)" if wait else ""
            raise DistillError(f"teacher server {self.base} answered {e.status_code}: {detail}{asked}") from None
        except openai.APITimeoutError:
            raise DistillError(
                f"teacher server {self.base} timed out {self.spec.retries + 1} times (teacher.timeout_s = "
                f"{self.spec.timeout_s:g} s)"
            ) from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise DistillError(
                f"teacher server {self.base} failed {self.spec.retries + 1} times: {str(cause) or type(cause).__name__}"
            ) from None

    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Generation]]:
        """Up to `concurrency` requests in flight on the async client; answers yielded as they complete.

        The event loop runs only inside this generator, in the caller's thread, so the caller stores
        each answer (e.g. in SQLite, which wants one thread) before the next is awaited.
        """
        import openai

        loop = asyncio.new_event_loop()
        client = openai.AsyncOpenAI(**self.options, max_retries=self.spec.retries)
        todo, running = iter(requests), {}
        try:
            while True:
                for r in todo:
                    running[loop.create_task(self._one(client, r))] = r
                    if len(running) >= self.spec.concurrency:
                        break
                if not running:
                    break
                finished, _ = loop.run_until_complete(asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED))
                for task in finished:
                    yield running.pop(task), task.result()
        finally:
            for task in running:
                task.cancel()
            if running:
                loop.run_until_complete(asyncio.wait(running))
            loop.run_until_complete(client.close())
            loop.close()

    def one(self, r: Request) -> Generation:
        """A single request (retried as configured)."""
        return next(iter(self.generate([r])))[1]


class _Malformed(Exception):
    """A reply that is not a completion."""


def _generation(out: Any, endpoint: str, t0: float) -> Generation:
    """The completion's first choice as a Generation; _Malformed when the reply is not a completion."""
    if isinstance(out, (str, bytes)):  # the client hands back a body it could not read as JSON
        raise _Malformed(f"a {type(out).__name__} body, not a completion: {str(out)[:60]!r}")
    try:
        choice = out.choices[0]
        text = choice.message.content if endpoint == "chat" else choice.text
    except (AttributeError, TypeError, IndexError):
        raise _Malformed("no choices") from None
    logprobs = choice.logprobs.model_dump() if getattr(choice, "logprobs", None) is not None else None
    usage = getattr(out, "usage", None)
    return Generation(
        text or "", time.perf_counter() - t0, usage and usage.prompt_tokens, usage and usage.completion_tokens, logprobs
    )


# --- a local transformers model -------------------------------------------------------------------
class SeededSampler:
    """A logits processor that samples each row at `temperature` from a generator of its own and leaves
    only the drawn token (greedy decoding then takes it)."""

    def __init__(self, seeds: list[int], temperature: float) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        drawn = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, drawn.to(scores.device), 0.0)


class LocalClient:
    def __init__(self, spec: LocalTeacher) -> None:
        from distill.models.llm import LlmSpec, load_causal_lm

        self.spec = spec
        self.model, self.tok = load_causal_lm(LlmSpec(path=spec.path, dtype=spec.dtype))
        self.tok.padding_side = "left"  # generation continues every row from its own last token
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token

    def check(self) -> None:
        pass

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    @torch.no_grad()
    def batch(self, requests: list[Request]) -> list[Generation]:
        """One generate() call; requests in a batch share temperature and max_tokens."""
        first = requests[0]
        enc = self.tok(
            [self._prompt(r.messages) for r in requests], return_tensors="pt", padding=True, add_special_tokens=False
        )
        # greedy decoding over logits that a sampler has already narrowed to the token it drew: each row
        # draws from its own generator, seeded by its (prompt, sample), so an answer does not depend on the
        # batch it was in (plain temperature sampling; no top-k / top-p from the model's defaults)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=first.max_tokens,
            pad_token_id=self.tok.pad_token_id,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
        )
        if first.temperature > 0:
            kwargs["logits_processor"] = [SeededSampler([r.seed for r in requests], first.temperature)]
        t0 = time.perf_counter()
        out = self.model.generate(**enc, **kwargs)
        latency = (time.perf_counter() - t0) / len(requests)
        new = out[:, enc["input_ids"].shape[1] :]
        gens = []
        for row, mask in zip(new, enc["attention_mask"]):
            ids = row[row != self.tok.pad_token_id] if self.tok.pad_token_id is not None else row
            gens.append(Generation(self.tok.decode(ids, skip_special_tokens=True), latency, int(mask.sum()), len(ids)))
        return gens

    def generate(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Generation]]:
        pending: list[Request] = []
        for r in requests:
            if pending and (r.temperature, r.max_tokens) != (pending[0].temperature, pending[0].max_tokens):
                yield from zip(pending, self.batch(pending))
                pending = []
            pending.append(r)
            if len(pending) == self.spec.batch_size:
                yield from zip(pending, self.batch(pending))
                pending = []
        if pending:
            yield from zip(pending, self.batch(pending))


def client(spec: LlmTeacher) -> ServerClient | LocalClient:
    return ServerClient(spec) if isinstance(spec, ServerTeacher) else LocalClient(spec)
