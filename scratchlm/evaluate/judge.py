"""LLM-as-judge scoring (the book's chapter 7.8): a stronger model scores each response from 0 to
100 against the reference answer, reached over a real HTTP API:

- Ollama's ``/api/chat`` (the book's ``query_model``; default ``http://127.0.0.1:11434``, model
  ``llama3``), streamed NDJSON or a single JSON reply;
- any OpenAI-compatible ``/v1/chat/completions`` (OpenAI, vLLM, llama.cpp's server, or
  ``scratchlm serve``), base URL and key from flags or ``OPENAI_BASE_URL``/``OPENAI_API_KEY``.

Requests are retried with exponential backoff on connection errors, timeouts, 429 and 5xx;
``score_responses`` runs a bounded number of them at once. Only the standard library is used.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm.auto import tqdm

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    pass


def _post(url: str, body: dict, headers: dict, timeout: float, retries: int,
          backoff: float) -> tuple[bytes, str]:
    data = json.dumps(body).encode()
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            last = JudgeError(f"{url}: HTTP {e.code} {detail}")
            if e.code not in RETRY_STATUS:
                raise last from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = JudgeError(f"{url}: {getattr(e, 'reason', e)}")
    raise JudgeError(f"{last} (after {retries + 1} attempts)")


def probe(url: str, what: str, timeout: float = 5.0) -> None:
    """Refuse, before any work, a judge that cannot be reached: a refused connection, an
    unknown host or a timeout. Any HTTP answer (even 401 or 404) means a server is there."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as e:
        raise JudgeError(f"cannot reach the judge at {url} ({getattr(e, 'reason', e)}); {what}")


@dataclass
class OllamaClient:
    """Ollama's chat API (the book's ``query_model``)."""

    model: str = "llama3"
    url: str = "http://127.0.0.1:11434"
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 0.5
    options: dict = field(default_factory=lambda: {"seed": 123, "temperature": 0, "num_ctx": 2048})

    def check(self) -> None:
        probe(f"{self.url.rstrip('/')}/api/tags", "start Ollama (`ollama serve`, then `ollama "
              f"pull {self.model}`) or pass --url / --api openai")

    def chat(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "options": self.options}
        raw, _ = _post(f"{self.url.rstrip('/')}/api/chat", body, {}, self.timeout, self.retries,
                       self.backoff)
        parts = []
        for line in raw.decode("utf-8").splitlines():  # streamed: one JSON object per line
            if line.strip():
                msg = json.loads(line)
                if "error" in msg:
                    raise JudgeError(f"{self.url}: {msg['error']}")
                parts.append(msg.get("message", {}).get("content", ""))
        return "".join(parts)


@dataclass
class OpenAIClient:
    """An OpenAI-compatible ``/chat/completions`` endpoint."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None  # default: OPENAI_BASE_URL, else https://api.openai.com/v1
    api_key: str | None = None  # default: OPENAI_API_KEY
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 0.5
    temperature: float = 0.0
    seed: int | None = 123

    def check(self) -> None:
        base = self.base_url or os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
        probe(f"{base.rstrip('/')}/models", "start the server (e.g. `scratchlm serve`) or pass "
              "--url")

    def chat(self, messages: list[dict]) -> str:
        base = self.base_url or os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.seed is not None:
            body["seed"] = self.seed
        raw, _ = _post(f"{base.rstrip('/')}/chat/completions", body, headers, self.timeout,
                       self.retries, self.backoff)
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (KeyError, IndexError, ValueError) as e:
            raise JudgeError(f"{base}: unexpected reply {raw[:200]!r}") from e


def judge_prompt(instruction_text: str, reference: str, response: str) -> str:
    """The book's scoring prompt."""
    return (f"Given the input `{instruction_text}` and correct output `{reference}`, "
            f"score the model response `{response}` on a scale from 0 to 100, where 100 is the "
            f"best score. Respond with the integer number only.")


def parse_score(text: str) -> int | None:
    """The first integer 0-100 in the judge's answer ("85", "Score: 85/100", "**90**"), else None."""
    for match in re.finditer(r"(?<![\d.])(\d{1,3})(?![\d.]\d)", text):
        value = int(match.group(1))
        if 0 <= value <= 100:
            return value
    return None


@dataclass
class JudgeResult:
    scores: list[int | None]  # per item; None: unparsable answer or failed request
    answers: list[str]  # the judge's raw answers (or the error)

    @property
    def valid(self) -> list[int]:
        return [s for s in self.scores if s is not None]

    @property
    def average(self) -> float | None:
        return sum(self.valid) / len(self.valid) if self.valid else None

    @property
    def unparsable(self) -> int:
        return len(self.scores) - len(self.valid)


def score_responses(items: Sequence[dict], chat: Callable[[list[dict]], str],
                    concurrency: int = 4, progress: bool = True) -> JudgeResult:
    """Score items with keys ``prompt`` (the instruction as the model saw it), ``reference``
    and ``response``; ``chat`` is a client's ``chat`` method."""

    def one(item: dict) -> tuple[int | None, str]:
        prompt = judge_prompt(item["prompt"], item["reference"], item["response"])
        try:
            answer = chat([{"role": "user", "content": prompt}])
        except JudgeError as e:
            return None, f"error: {e}"
        return parse_score(answer), answer

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(tqdm(pool.map(one, items), total=len(items), desc="judging",
                            unit="item", disable=not progress))
    return JudgeResult([s for s, _ in results], [a for _, a in results])
